"""The compiled journal's Python side (the C code is ``_journal.c``).

With the journal built, TracedSocket's four hottest methods are C methods that do what
the Python ones do (read the clock, make the real call, number, format and copy the
record into the trace's shared mapping), with no Python frame, for sockets whose
recorder has a journal; for any other they call the Python method. ``Journal`` is the
recorder's writer (recorder.py). Without a C compiler the package installs and records
through the Python path, only slower.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .calls import buffer_len

try:
    from ._journal import Journal as Journal
    from ._journal import socket_methods
except ImportError:  # pragma: no cover - a build without a C compiler
    Journal = None  # type: ignore[assignment,misc]
    socket_methods = None  # type: ignore[assignment]


def compiled_available() -> bool:
    """Whether the compiled journal was built (``pip install`` compiles it when a C
    compiler and Python's headers are there)."""
    return Journal is not None


def _failed(self: Any, sock: int, op: str, start: float, exc: BaseException,
            args: tuple[Any, ...]) -> None:
    """Record a compiled method's call that raised, with the fields the Python one gives."""
    if op in ("send", "sendall"):
        fields: dict[str, Any] = {"size": buffer_len(args[0])}
    elif op == "recv":
        fields = {"bufsize": args[0]}
    else:
        fields = {"bufsize": (args[1] if len(args) > 1 else 0) or buffer_len(args[0])}
        if len(args) > 2 and args[2]:
            fields["flags"] = args[2]
    self._ts_rec.failure(sock, op, start, exc, {"args": fields})


def install(cls: type[Any], python_methods: Any) -> None:
    """Make ``cls``'s send, sendall, recv and recv_into the journal's C methods (unless
    TRACESOCK_PURE_PYTHON is set, or the journal was not built)."""
    if socket_methods is None:  # pragma: no cover - a build without a C compiler
        return
    if os.environ.get("TRACESOCK_PURE_PYTHON"):
        return
    names = ("send", "sendall", "recv", "recv_into")
    compiled = socket_methods(cls, {n: getattr(socket.socket, n) for n in names},
                              python_methods, _failed)
    for name, method in compiled.items():
        setattr(cls, name, method)
