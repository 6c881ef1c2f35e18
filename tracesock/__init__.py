"""tracesock: see and replay what a socket program does.

The public API is listed in ``__all__``; everything else is internal. Importing
tracesock never imports scapy or pyshark (capture and analysis load them on use).

PYTEST_DONT_REWRITE: ``tracesock run -m pytest`` has imported this package before
pytest starts, and pytest marks the packages of its plugins (ours: ``tracesock.plugin``)
for assertion rewriting; an installed (not editable) tracesock would otherwise get a
PytestAssertRewriteWarning, an error in suites with ``filterwarnings = error``.

The package is laid out by stage, dependencies pointing one way (tests/test_layout.py
checks it): ``trace/`` (the format) <- ``capture/`` <- ``record/``; ``trace/`` <-
``replay/``; all of them <- ``lecture/`` (the views) <- ``cli.py`` and the pytest
plugin. ``errors.py`` and ``patching.py`` sit under everything.
"""

from typing import Any

from .errors import (
    CaptureError,
    ReplayError,
    ReplayMismatch,
    TraceFormatError,
    TracesockError,
    TraceVersionError,
    UsageError,
)
from .record.recorder import Recorder
from .record.sockets import TracedSocket

# Bound last: ``trace`` and ``replay`` name both a subpackage and the public function.
# Importing a subpackage sets the package attribute of that name; these come after every
# subpackage is imported, so the functions win.
from .record.tracing import Tracing, trace
from .replay.session import Replay, replay
from .replay.sockets import ReplaySocket
from .trace.events import CallEvent, ErrorInfo, TraceHeader
from .trace.reader import Connection, Trace, TraceReader, iter_events, load

__version__ = "0.1.0"


def _trace_html(t: Trace) -> str:
    from .lecture.notebook import trace_html  # the views load only when a notebook asks

    return trace_html(t)


Trace.html_view = _trace_html


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tracesock``: registers the ``%%tracesock`` cell magic (lecture/notebook.py)."""
    from .lecture.notebook import load_ipython_extension as load

    load(ipython)


__all__ = [
    "CallEvent",
    "CaptureError",
    "Connection",
    "ErrorInfo",
    "Recorder",
    "Replay",
    "ReplayError",
    "ReplayMismatch",
    "ReplaySocket",
    "Trace",
    "TraceFormatError",
    "TraceHeader",
    "TraceReader",
    "TraceVersionError",
    "TracedSocket",
    "TracesockError",
    "Tracing",
    "UsageError",
    "__version__",
    "iter_events",
    "load",
    "load_ipython_extension",
    "replay",
    "trace",
]
