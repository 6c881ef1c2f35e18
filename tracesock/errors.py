"""The one exception hierarchy of tracesock.

Every error tracesock raises on purpose is a ``TracesockError``: the CLI prints its
message on one line and exits non-zero, library users can catch the base class.
Warnings (``stderr_warn``) are one line on stderr and never an exception.
Errors raised by the traced program's own sockets are never wrapped: tracing
re-raises them unchanged.
"""

from __future__ import annotations

import sys


class TracesockError(Exception):
    """Base class: a clear, one-line message saying what was wrong and where."""


class TraceFormatError(TracesockError):
    """A trace file is malformed (the message names file and line)."""


class TraceVersionError(TraceFormatError):
    """A trace file has a format version this tracesock does not read."""


class UsageError(TracesockError):
    """The command line or an API call asked for something impossible."""


class CaptureError(TracesockError):
    """Packet capture could not be started or written."""


class ReplayError(TracesockError):
    """Replay could not go on: no recorded connection matches, the recording lacks data..."""


class ReplayMismatch(ReplayError):
    """What the code under test sent differs from what was recorded."""


def stderr_warn(message: str) -> None:
    """The default warning: one line on stderr, never an exception."""
    try:
        sys.stderr.write(f"tracesock: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass
