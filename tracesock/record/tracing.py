"""``trace()``: record every socket a block of code creates, into one trace file.

With ``capture=`` a CaptureSession (capture/sniffer.py) sniffs the interface for the whole
block. It starts before ``socket.socket`` is patched (scapy's own sockets must not be
traced) and is stopped after the trace is closed, because it keeps only the segments
of the connections that the finished trace names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from ..capture.sniffer import CaptureSession
from ..errors import CaptureError, stderr_warn
from ..patching import entropy_replaced
from .children import Following
from .entropy import EntropyRecorder, header_fields
from .patch import recording
from .recorder import Recorder
from .sockets import TracedSocket


class Tracing:
    """What ``trace()`` yields: the recorder, the output path and the socket class."""

    def __init__(self, path: str, recorder: Recorder, socket_class: type[TracedSocket]):
        self.path = path
        self.recorder = recorder
        self.socket_class = socket_class


@contextmanager
def trace(
    path: str,
    *,
    payload: bool = True,
    max_payload: int | None = None,
    redact: Iterable[str] = (),
    argv: Iterable[str] | None = None,
    capture: str | None = None,
    capture_all: bool = False,
    capture_required: bool = False,
    iface: str | None = None,
    keylog: str | None = None,
    follow_children: bool = False,
    entropy: bool = True,
    wall_clock: bool = False,
    **recorder_options: Any,
) -> Iterator[Tracing]:
    """Trace every socket created inside the block into ``path`` (JSONL, mode 0600).

    ``socket.socket`` is restored and the file finished when the block ends, even
    when it raises. Sockets still open afterwards are no longer recorded.

    ``capture="x.pcapng"`` also captures the traced connections' SYN/FIN/RST segments
    (every segment with ``capture_all``) on ``iface`` (default: loopback), joined with
    their calls. If capture cannot start (no CAP_NET_RAW, no scapy) the trace goes on
    without it after a one-line warning, or ``CaptureError`` is raised when
    ``capture_required``.

    ``keylog="keys.txt"`` appends the TLS secrets of connections made in the block, in
    the NSS key log format, so that a capture of them can be decrypted.

    ``follow_children=True`` traces the Python child processes the block starts (fork,
    ``subprocess``, ``multiprocessing``) too, merged into ``path`` with a ``pid`` on every
    call: at the end of the block what has finished, the rest when the last traced
    process exits (children.py).

    ``entropy=True`` (the default) writes down the program's own nondeterministic inputs
    as it gets them (``os.urandom``, ``os.getrandom``, so ``secrets`` and ``uuid4`` too;
    the process ids; ``random``'s state at the start), for replay to give back
    (entropy.py); ``wall_clock=True`` adds ``time.time``/``time_ns`` (and ``datetime``'s
    ``now``/``today`` through them: patching.py). The trace then holds
    them, so also the tokens and keys the program made from them; with ``follow_children``
    every traced process's, each with its ``pid``.
    """
    warn = recorder_options.get("warn", stderr_warn)
    session: CaptureSession | None = None
    if capture is not None:  # first: starting it takes a while, keep it out of the trace
        session = _start_capture(capture, capture_all=capture_all, iface=iface,
                                 required=capture_required, warn=warn)
    follow: Following | None = None
    try:
        if follow_children:
            follow = Following.create(path, {"payload": payload, "max_payload": max_payload,
                                             "redact": list(redact), "keylog": keylog,
                                             "entropy": entropy, "wall_clock": wall_clock})
            recorder_options["fork_sink"] = follow.fork_sink
            recorder_options["header"] = {**recorder_options.get("header", {}),
                                          **follow.header}
        if entropy:
            recorder_options["header"] = {**recorder_options.get("header", {}),
                                          "entropy": header_fields(wall_clock)}
        recorder = Recorder.open(path, payload=payload, max_payload=max_payload,
                                 redact=redact, argv=argv, **recorder_options)
    except BaseException:
        if follow is not None:
            follow.abandon()
        if session is not None:
            session.abort()
        raise
    body_failed = False
    try:
        own = session.threads if session is not None else ()
        inputs = EntropyRecorder(recorder, clock=wall_clock, follow=follow_children,
                                 own_threads=own).functions if entropy else {}
        with recording(recorder, keylog=keylog) as cls, entropy_replaced(inputs), \
                (follow.environment() if follow is not None else nullcontext()):
            try:
                yield Tracing(path, recorder, cls)
            except BaseException:
                body_failed = True
                raise
    finally:
        recorder.close()
        if follow is not None:
            follow.leave()  # the last traced process to finish merges (children.py)
        if session is not None:
            # A failing stop() must not hide the block's own exception: warn instead.
            _stop_capture(session, path, required=capture_required and not body_failed,
                          warn=warn)


def _start_capture(capture: str, *, capture_all: bool, iface: str | None, required: bool,
                   warn: Any) -> CaptureSession | None:
    session = CaptureSession(capture, capture_all=capture_all, iface=iface, warn=warn)
    try:
        session.start()
    except CaptureError as exc:
        if required:
            raise
        warn(f"{exc}; tracing without capture")
        return None
    return session


def _stop_capture(session: CaptureSession, path: str, *, required: bool, warn: Any) -> None:
    try:
        session.stop(path)
    except CaptureError as exc:
        if required:
            raise
        warn(str(exc))
