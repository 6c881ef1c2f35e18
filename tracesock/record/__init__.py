"""Recording: every socket call a program makes, written to a trace as it happens.

Theory of operation. ``trace()`` (``tracing.py``) opens a Recorder on the trace file and,
for the block, has patching.py make ``socket.socket`` a TracedSocket class bound to it
(``patch.py``). A TracedSocket is a thin adapter: each method reads the clock, makes the
real call and tells the recorder what came back, or what was raised (then re-raised
unchanged). The recorder numbers and encodes the call and hands the line to the sink.

- ``sockets.py``: TracedSocket, every wrapped method listed.
- ``messages.py``: TracedSocket's message, file and datagram-into-buffer calls (a mixin).
- ``borrowing.py``: traced methods copied onto other classes act as the originals there.
- ``calls.py``: what a call's arguments say for its record; ``record_call``.
- ``encoding.py``: the header record, payloads (capped, redacted), unencodable records.
- ``recorder.py``: the I/O-free core: call facts in, numbered JSON lines out.
- ``sink.py``: where lines go: a shared file mapping that survives SIGKILL.
- ``compiled.py``: the compiled journal (``_journal.c``): the hot path in C.
- ``tls.py``: the plaintext of ``ssl`` sockets and objects, on the socket's own id.
- ``entropy.py``: the program's own nondeterministic inputs (``os.urandom``...),
  written down as it gets them, for replay to give back.
- ``patch.py``: the classes installed for a block, bound to one recorder.
- ``children.py``: following forked and exec'd children, each into its own file.
- ``tracing.py``: ``trace()``, with an optional capture alongside (capture/).
- ``runner.py``: ``tracesock run``: a script or module, unchanged, traced.

Recording may start a capture (``trace(capture=...)``), so it sits above capture/.
"""
