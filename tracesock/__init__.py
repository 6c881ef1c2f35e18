"""tracesock: see and replay what a socket program does.

The public API is listed in ``__all__``; everything else is internal. Importing
tracesock never imports scapy or pyshark (capture and analysis load them on use).
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
from .events import CallEvent, ErrorInfo, TraceHeader
from .recorder import Recorder
from .replay import Replay, ReplaySocket, replay
from .sockets import TracedSocket
from .tracefile import Connection, Trace, TraceReader, load
from .tracing import Tracing, trace

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tracesock``: registers the ``%%tracesock`` cell magic (notebook.py)."""
    from .notebook import load_ipython_extension as load

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
    "load",
    "load_ipython_extension",
    "replay",
    "trace",
]
