"""The replay's records: recorded calls as the dicts orjson made, and what they say.

Records stay dicts: a CallEvent per record would cost more than the whole replay of a
recv (the target is a million events a second). Here: the names and sets the matching
(cassette.py) and the streams (streams.py) share, the exception a recorded error
describes, the key connects and binds are matched on, and a short diff for mismatches.
"""

from __future__ import annotations

import binascii
import builtins
import os
import socket
import ssl
from collections import deque
from typing import Any, Literal

from ..trace.events import CallEvent, decode_addr, encode_addr

Record = dict[str, Any]
# A queued recv: (bytes the recording had sent before it, its decoded chunk when it is
# plain (None: an error, a FIN without data, a truncated payload...), the record).
RecvEntry = tuple[int, bytes | None, Record]
Check = Literal["concat", "strict", "off"]
CHECKS: tuple[str, ...] = ("concat", "strict", "off")

a2b = binascii.a2b_base64
# Recorded results that say "not now" rather than what the peer did: replay makes its
# own (a non-blocking recv that is not due raises BlockingIOError).
TRANSIENT = frozenset({"BlockingIOError", "InterruptedError"})
SETUP_OPS = frozenset({"connect", "connect_ex", "bind", "listen"})
# Ops whose return value is the kernel's choice: a short count is reproduced.
COUNTED = frozenset({"send", "sendto", "sendmsg"})
KEY_OF = {"connect": "connect", "connect_ex": "connect", "bind": "bind", "sendto": "sendto"}
LOOPBACK = ("127.", "::1", "localhost", "::ffff:127.")
NO_SID = object()  # no socket id equals it


def recorded_error(err: Any) -> OSError:
    """The exception a recorded ``error`` object describes, ready to raise again."""
    name = str(err.get("type", "")) if isinstance(err, dict) else ""
    code = err.get("errno") if isinstance(err, dict) else None
    message = str(err.get("message", "")) if isinstance(err, dict) else ""
    cls: Any = {"timeout": TimeoutError, "gaierror": socket.gaierror}.get(name)
    if cls is None and name.startswith("SSL"):  # TLS over memory BIOs: SSLWantReadError...
        cls = getattr(ssl, name, None)
        if isinstance(cls, type) and issubclass(cls, OSError) and isinstance(code, int):
            return cls(code, message)
    if cls is None:
        cls = getattr(builtins, name, OSError)
        if not (isinstance(cls, type) and issubclass(cls, OSError)):
            cls = OSError
    if isinstance(code, int):
        exc: OSError = cls(code, os.strerror(code))
        return exc
    return cls(message or name)  # type: ignore[no-any-return]


def address_key(family: Any, address: Any) -> Any:
    """What connects and binds are matched on. Loopback ports are not compared: a
    test server bound to port 0 gets a new port every run."""
    addr = decode_addr(address)
    if family in ("AF_INET", "AF_INET6") and isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0]).lower()
        if host.startswith(LOOPBACK):
            return ("<loopback>", None)
        return (host, addr[1])
    return addr


def diff(expected: bytes, e_at: int, actual: bytes, a_at: int) -> str:
    """A short diff: the bytes around the first difference, a caret under it. What
    came before it is the same on both sides (it matched), so it is shown once."""
    head = repr(expected[max(0, e_at - 24):e_at])[:-1]
    exp = head + repr(expected[e_at:e_at + 24])[2:]
    act = head + repr(actual[a_at:a_at + 24])[2:]
    return f"\n  expected: {exp}\n  actual:   {act}\n            {' ' * len(head)}^"



class EndsOnly(deque[RecvEntry]):
    """The recv queue of a socket that carries TLS records for a memory BIO: ciphertext
    is dropped as it is filed, what ends the stream (a FIN, an error) is kept."""

    def append(self, entry: RecvEntry) -> None:
        if not entry[1]:
            super().append(entry)


def hot_keys(batch: list[Any]) -> tuple[str, str, str, str, str]:
    """The key names the filing loop looks up, as the very str objects the records use.

    orjson hands out one str object per key name (its key cache) rather than our
    literals; a dict lookup with the identical object skips a string compare: ~5 ns a
    lookup, 30 ns an event. Only speed depends on it: an equal str finds the same entry.
    """
    same: dict[str, str] = {}
    for rec in batch[:1] + batch[-1:]:
        if isinstance(rec, dict):
            same.update((k, k) for k in rec if type(k) is str)
    return (same.get("type", "type"), same.get("seq", "seq"), same.get("sock", "sock"),
            same.get("op", "op"), same.get("data", "data"))


def record_of(ev: CallEvent) -> Record:
    """A CallEvent back in the record form the replay works on."""
    rec: Record = {"type": "call", "seq": ev.seq, "t": ev.t, "dur": ev.dur, "sock": ev.sock,
                   "op": ev.op, "args": dict(ev.args)}
    for name in ("nbytes", "family", "kind", "parent", "fd"):
        value = getattr(ev, name)
        if value is not None:
            rec[name] = value
    if ev.data_b64 is not None:
        rec["data"] = ev.data_b64
    if ev.laddr is not None:
        rec["laddr"] = encode_addr(ev.laddr)
    if ev.raddr is not None:
        rec["raddr"] = encode_addr(ev.raddr)
    if ev.truncated:
        rec["truncated"] = True
    if ev.error is not None:
        rec["error"] = {"type": ev.error.type, "errno": ev.error.errno,
                        "message": ev.error.message}
    rec.update(ev.extra)
    return rec
