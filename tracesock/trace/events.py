"""What happened, as plain data: the trace format's records, version and field names.

A trace file is JSONL: a ``trace`` header line, one ``call`` line per socket call, and,
when the traced process ended cleanly, an ``end`` line. The writer side (record/recorder.py)
builds these records as dicts on the hot path; the reader side (reader.py) turns
them into the frozen dataclasses below. docs/trace-format.md is the public contract and
schema.json (beside this file) its machine-readable form.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "tracesock"
VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

# Ops that move payload bytes, by direction.
# read/write: TLS plaintext (SSLSocket and SSLObject methods, marked "tls": true).
SEND_OPS = frozenset({"send", "sendall", "sendto", "sendmsg", "sendfile", "write"})
RECV_OPS = frozenset({"recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "read"})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The exception a call raised (it was re-raised unchanged to the program)."""

    type: str
    errno: int | None
    message: str


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """Line 1 of a trace."""

    version: int
    started: str
    pid: int | None
    argv: tuple[str, ...]
    python: str
    payload: bool
    max_payload: int | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One socket call. ``data`` is what was actually transferred (None if not recorded)."""

    seq: int
    t: float
    dur: float
    sock: int
    op: str
    nbytes: int | None = None
    data_b64: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    fd: int | None = None
    family: str | None = None
    kind: str | None = None
    laddr: Any = None
    raddr: Any = None
    parent: int | None = None
    thread: int | None = None
    pid: int | None = None
    truncated: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> bytes | None:
        if self.data_b64 is None:
            return None
        return base64.b64decode(self.data_b64)

    @property
    def is_send(self) -> bool:
        return self.op in SEND_OPS

    @property
    def is_recv(self) -> bool:
        return self.op in RECV_OPS


def encode_data(data: bytes) -> str:
    """base64 text of a payload, as stored in the ``data`` field."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def encode_addr(addr: Any) -> Any:
    """A socket address as JSON: tuples become lists, bytes (abstract AF_UNIX) hex."""
    if isinstance(addr, tuple):
        return [encode_addr(a) for a in addr]
    if isinstance(addr, (bytes, bytearray)):
        return {"hex": bytes(addr).hex()}
    return addr


def decode_addr(value: Any) -> Any:
    """Inverse of encode_addr: lists become tuples again."""
    if isinstance(value, list):
        return tuple(decode_addr(v) for v in value)
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def format_addr(addr: Any) -> str:
    """Human form: 127.0.0.1:7, [::1]:7, a Unix path, or '-'."""
    if addr is None:
        return "-"
    if isinstance(addr, (tuple, list)) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(addr, (bytes, bytearray)):
        return "@" + bytes(addr).lstrip(b"\0").decode("utf-8", "replace")
    if addr == "":
        return "(unnamed)"
    return str(addr)


# -- the call as the program wrote it (labels in views and in pcapng comments) ----------


def _call_args(ev: CallEvent) -> str:
    a = ev.args
    op = ev.op
    if op in ("connect", "connect_ex", "bind"):
        return repr(_tuple(a.get("address")))
    if op in ("recv", "recvfrom", "recvmsg", "recv_into", "recvfrom_into"):
        return str(a.get("bufsize", ""))
    if op == "shutdown":
        return str(a.get("how", ""))
    if op == "listen":
        return str(a.get("backlog", ""))
    if op == "sendto":
        return "data, " + repr(_tuple(a.get("address")))
    if op in ("send", "sendall", "sendmsg"):
        return "data"
    if op == "settimeout":
        return repr(a.get("timeout"))
    if op == "setblocking":
        return repr(a.get("blocking"))
    if op == "setsockopt":
        return f"{a.get('level')}, {a.get('option')}, {a.get('value')!r}"
    if op == "makefile":
        return repr(a.get("mode", "r"))
    if op == "socket":
        return f"{ev.family}, {ev.kind}"
    return ""


def _tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


def call_label(ev: CallEvent) -> str:
    """``connect(('127.0.0.1', 7))``: the call as the program wrote it."""
    return f"{ev.op}({_call_args(ev)})"
