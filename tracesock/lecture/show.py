"""Human views of a trace: the call timeline (``show``) and per-connection summary (``stats``).

Pure functions from a loaded Trace, or from a stream of events, to lines of text or plain
dicts; the CLI prints them. ``tracesock show`` streams: its lines come in start-time
order through a bounded reorder window (``REORDER_WINDOW`` events), since the file is in
the order calls returned (seq) and a call that blocked starts before calls that returned
earlier. stats.py is the streaming form of ``stats()``.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..trace.events import CallEvent, call_label, format_addr
from ..trace.reader import Connection, Trace

_PREVIEW = 40
CHUNKS_SHOWN = 20  # recv chunk sizes listed per socket by format_stats


def preview(data: bytes | None, limit: int = _PREVIEW) -> str:
    """A short, one-line view of a payload: UTF-8 text where it is, hex otherwise."""
    if data is None:
        return ""
    head = data[:limit]
    more = "..." if len(data) > limit else ""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the preview's edge is still text.
        if exc.start >= len(head) - 3 and len(data) > limit:
            text = head[: exc.start].decode("utf-8")
        else:
            return head.hex(" ") + more
    return repr(text)[1:-1].replace('"', '\\"').join('""') + more


def format_call(ev: CallEvent) -> str:
    """One line for a call: id, call, outcome, bytes and a payload preview."""
    head = f"sock {ev.sock:<3} {call_label(ev)}"
    if ev.error is not None:
        count = ev.extra.get("count")
        times = f" (x{count} in a row)" if count else ""
        return f"{head} -> {ev.error.type}: {ev.error.message}{times}"
    op = ev.op
    if ev.extra.get("tls"):
        head += " [tls]"
    if ev.is_recv:
        if ev.nbytes == 0:
            return f"{head} = 0 bytes (peer closed: FIN)" if ev.kind != "SOCK_DGRAM" else \
                f"{head} = 0 bytes"
        return f"{head} = {ev.nbytes} bytes {preview(ev.data)}".rstrip()
    if ev.is_send:
        return f"{head} = {ev.nbytes} bytes {preview(ev.data)}".rstrip()
    if op in ("connect", "connect_ex"):
        return f"{head} {format_addr(ev.laddr)} -> {format_addr(ev.raddr)}"
    if op == "accept":
        return f"{head} = sock {ev.extra.get('accepted')} from {format_addr(ev.raddr)}"
    if op == "socket":
        parent = f" accepted by sock {ev.parent}" if ev.parent is not None else ""
        return f"{head} fd={ev.fd}{parent}"
    if op == "bind":
        return f"{head} {format_addr(ev.laddr)}"
    if op == "do_handshake":
        return f"{head} {ev.extra.get('version')} {ev.extra.get('cipher')}"
    if op == "close":
        return head if ev.extra.get("fd_closed", True) else \
            f"{head} (descriptor kept open by makefile objects)"
    if op == "close_fd":
        return f"{head} (descriptor released by the last makefile object)"
    return head


# show's reorder window (in_start_order): at most this many calls wait for one that
# started before them (beyond, start-time order gives way to memory that does not grow),
# and a thread's first call is assumed to have blocked no longer than this.
REORDER_WINDOW = 1 << 12
REORDER_DELAY_S = 1.0


@dataclass(frozen=True)
class EventFilter:
    """Which calls a view keeps (``show``'s --sock, --op, --pid, --since, --until,
    --errors); None keeps everything. Times are milliseconds since the trace began."""

    socks: Collection[int] | None = None
    ops: Collection[str] | None = None
    pids: Collection[int] | None = None
    since_ms: float | None = None
    until_ms: float | None = None
    errors: bool = False

    def __call__(self, ev: CallEvent) -> bool:
        return ((self.socks is None or ev.sock in self.socks)
                and (self.ops is None or ev.op in self.ops)
                and (self.pids is None or ev.pid in self.pids)
                and (self.since_ms is None or ev.t * 1000 >= self.since_ms)
                and (self.until_ms is None or ev.t * 1000 <= self.until_ms)
                and (not self.errors or ev.error is not None))


def in_start_order(evs: Iterable[CallEvent], window: int = REORDER_WINDOW,
                   delay: float = REORDER_DELAY_S) -> Iterator[CallEvent]:
    """Events by (start time, seq) as they stream in (the file has them by seq, the
    order they returned), holding at most ``window`` of them.

    A call goes out once no call still to come can have started before it: a thread's
    next call starts after its last one returned, so nothing to come from the threads
    seen so far starts before the earliest of their last returns; a thread not seen yet
    is given ``delay`` seconds (its first call may have blocked since long before it
    shows up in the file). Past ``window`` waiting calls, the earliest goes out anyway.
    The order is exactly sorted unless a thread's first call blocked more than
    ``delay``, or a call returned more than ``window`` calls after one that started
    after it."""
    heap: list[tuple[float, int, CallEvent]] = []
    returned: dict[tuple[int | None, int | None], float] = {}
    latest = float("-inf")
    push, pop = heapq.heappush, heapq.heappop
    for ev in evs:
        push(heap, (ev.t, ev.seq, ev))
        end = returned[ev.pid, ev.thread] = ev.t + ev.dur
        latest = max(latest, end)
        mark = min(min(returned.values()), latest - delay)
        while heap and (heap[0][0] <= mark or len(heap) > window):
            yield pop(heap)[2]
    while heap:
        yield pop(heap)[2]


def timeline_lines(evs: Iterable[CallEvent], many: bool) -> Iterator[str]:
    """One line per call, stamped in milliseconds since the trace began (and with the
    calling process when ``many``), in the order given."""
    for ev in evs:
        who = f"pid {ev.pid:<7} " if many else ""
        yield f"{ev.t * 1000:10.3f} ms  {who}{format_call(ev)}"


def timeline(trace: Trace) -> Iterator[str]:
    """The calls in start-time order, stamped in milliseconds since the trace began
    (and with the calling process, when the trace followed children)."""
    many = len({ev.pid for ev in trace.events}) > 1
    yield from timeline_lines(sorted(trace.events, key=lambda e: (e.t, e.seq)), many)


def connection_summary(conn: Connection) -> dict[str, Any]:
    chunks = conn.recv_chunks
    return {
        "sock": conn.sock,
        "role": conn.role,
        "family": conn.family,
        "kind": conn.kind,
        "laddr": format_addr(conn.laddr),
        "raddr": format_addr(conn.raddr),
        "parent": conn.parent,
        "calls": len(conn.events),
        "bytes_sent": conn.bytes_sent,
        "bytes_received": conn.bytes_received,
        "sends": len(conn.send_sizes),
        "recvs": len(chunks),
        "recv_chunks": chunks,
        "errors": [f"{e.op}: {e.error.type}" for e in conn.events if e.error is not None],
        "pids": sorted({e.pid for e in conn.events if e.pid is not None}),
    }


def stats(trace: Trace) -> dict[str, Any]:
    conns = [connection_summary(c) for c in trace.connections.values()]
    return {
        "trace": trace.path,
        "complete": trace.complete,
        "events": len(trace.events),
        "sockets": len(conns),
        "pids": sorted({e.pid for e in trace.events if e.pid is not None}),
        "connections": conns,
    }


def format_stats(summary: dict[str, Any]) -> Iterator[str]:
    yield (f"{summary['trace']}: {summary['events']} calls on {summary['sockets']} sockets"
           + (f" in {len(summary['pids'])} processes" if len(summary.get("pids", ())) > 1
              else "")
           + ("" if summary["complete"] else " (trace incomplete)"))
    for c in summary["connections"]:
        kind = socket_type(c["family"], c["kind"])
        yield (f"  sock {c['sock']:<3} {c['role']:<8} {kind:<4} "
               f"{c['laddr']} -> {c['raddr']}  sent {c['bytes_sent']} B in {c['sends']}, "
               f"received {c['bytes_received']} B in {c['recvs']}")
        if c["recv_chunks"]:
            chunks = c["recv_chunks"]
            shown = ", ".join(map(str, chunks[:CHUNKS_SHOWN])) + \
                (", ..." if len(chunks) > CHUNKS_SHOWN else "")
            yield f"           recv chunks: [{shown}]"
        for err in c["errors"]:
            yield f"           error: {err}"
        if len(summary.get("pids", ())) > 1:
            yield f"           pids: {', '.join(map(str, c['pids']))}"


_FAMILIES = {"AF_INET": "", "AF_INET6": "6", "AF_UNIX": None}
_KINDS = {"SOCK_STREAM": "tcp", "SOCK_DGRAM": "udp"}


def socket_type(family: Any, kind: Any) -> str:
    """``tcp``, ``udp6``, ``unix stream``, ``unix dgram``...: a socket as people name it
    (the raw names where there is no usual one, ``?`` where the trace does not say)."""
    short = (kind or "").removeprefix("SOCK_").lower() if isinstance(kind, str) else ""
    if family == "AF_UNIX":
        return f"unix {short}".rstrip()
    proto = _KINDS.get(kind) if isinstance(kind, str) else None
    if proto is not None and (family is None or family in _FAMILIES):
        return proto + (_FAMILIES.get(family) or "")
    parts = [str(p).removeprefix("AF_").lower() for p in (family,) if p is not None]
    return " ".join([*parts, short] if short else parts) or (str(kind) if kind else "?")
