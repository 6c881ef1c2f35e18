"""The lecture's views: what a trace and its capture show a person.

Theory of operation. Everything here reads traces and captures through the stages
below it and turns them into text, diagrams and pages; it never changes them. The demo
runs the lecture's programs on loopback, traced and captured, to make the golden files
in captures/.

- ``show.py``: the call timeline (``tracesock show``, streamed, with its filters) and
  per-connection stats of a loaded Trace.
- ``stats.py``: ``tracesock stats`` in one streaming pass over the file, whatever its size.
- ``timeline.py``: calls and captured segments in one time order (``show --capture``).
- ``ladder.py``: the ladder diagram as plain data, from calls and joined segments.
- ``diagram.py``: the ladder drawn as text, Mermaid and SVG (``tracesock diagram``).
- ``tcpstates.py``: the TCP state of each end after each segment (I/O-free).
- ``ladder_states.py``: those states for each ladder column, from the capture or
  inferred from the calls.
- ``report.py``: ``tracesock report``: one self-contained HTML page (timeline with
  filters, ladder with states, stats, charts); also the notebook's view.
- ``notebook.py``: the ``%%tracesock`` cell magic and a Trace's HTML view.
- ``programs.py``: the lecture's clients as the notes write them, and their servers.
- ``demo.py``: ``tracesock demo``: each scenario run, traced and captured.
- ``demo_states.py``: the scenarios about states and queues: backlog, shared-close,
  time-wait.
"""
