"""What a socket call's arguments say, for its record: buffer sizes and bytes, option
and constant names, and ``record_call``, which times, runs and records one call.

Shared by the plain (sockets.py) and the TLS (tls.py) traced classes; I/O-free.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recorder import Recorder


def buffer_len(data: Any) -> int:
    """Bytes in a buffer the program passed (bytes, bytearray, memoryview, array...)."""
    try:
        return len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    except TypeError:
        return 0


def buffer_bytes(data: Any) -> Any:
    """The buffer as bytes or a byte-wise memoryview, for the payload (None if it is not
    a buffer: the call then fails on its own and no payload is recorded)."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B")
    except TypeError:
        return None


def sendto_args(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) == 2:
        return {"address": args[1], "flags": args[0]} if args[0] else {"address": args[1]}
    return {"address": args[0]} if len(args) == 1 else {}

SHUT_NAMES = {socket.SHUT_RD: "SHUT_RD", socket.SHUT_WR: "SHUT_WR", socket.SHUT_RDWR: "SHUT_RDWR"}


def _option_names() -> dict[int, dict[int, str]]:
    levels = {
        socket.SOL_SOCKET: "SO_",
        socket.IPPROTO_TCP: "TCP_",
        socket.IPPROTO_IP: "IP_",
        socket.IPPROTO_IPV6: "IPV6_",
    }
    table: dict[int, dict[int, str]] = {level: {} for level in levels}
    # Names of other protocol families share numbers with these (SO_J1939_PROMISC is
    # SO_REUSEADDR's 2): the plain names win, the rest only fill the gaps.
    names = sorted(dir(socket), key=lambda n: ("J1939" in n or "VM_" in n, len(n), n))
    for name in names:
        for level, prefix in levels.items():
            value = getattr(socket, name)
            if name.startswith(prefix) and isinstance(value, int):
                table[level].setdefault(value, name)
    return table


OPT_NAMES = _option_names()
LEVEL_NAMES = {socket.SOL_SOCKET: "SOL_SOCKET", socket.IPPROTO_TCP: "IPPROTO_TCP",
                socket.IPPROTO_IP: "IPPROTO_IP", socket.IPPROTO_IPV6: "IPPROTO_IPV6"}


def enum_name(value: Any) -> Any:
    name = getattr(value, "name", None)
    return name if name is not None else value


Fields = Callable[[Any], dict[str, Any]]


def record_call(rec: Recorder, sock: int, op: str, fields: dict[str, Any] | Fields,
                call: Callable[..., Any], *call_args: Any,
                on_error: dict[str, Any] | None = None) -> Any:
    """Run ``call(*call_args)`` as the call ``op`` of socket ``sock``, timed and recorded.

    ``fields`` are the record's op-specific keys, or a function of the result giving
    them; a raised exception is recorded (with ``on_error``, or ``fields`` when it is a
    dict) and re-raised unchanged. The calls that are not sends or receives go through
    here (those are the hot path and stay written out).
    """
    start = rec.now()
    try:
        result = call(*call_args)
    except BaseException as exc:
        if on_error is None:
            on_error = fields if isinstance(fields, dict) else {}
        rec.failure(sock, op, start, exc, on_error)
        raise
    rec.event(sock, op, start, fields(result) if callable(fields) else fields)
    return result
