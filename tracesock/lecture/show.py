"""Human views of a trace: the call timeline (``show``) and per-connection summary (``stats``).

Pure functions from a loaded Trace to lines of text or plain dicts; the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..trace.events import CallEvent, call_label, format_addr
from ..trace.reader import Connection, Trace

_PREVIEW = 40


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


def timeline(trace: Trace) -> Iterator[str]:
    """The calls in start-time order, stamped in milliseconds since the trace began
    (and with the calling process, when the trace followed children)."""
    many = len({ev.pid for ev in trace.events}) > 1
    for ev in sorted(trace.events, key=lambda e: (e.t, e.seq)):
        who = f"pid {ev.pid:<7} " if many else ""
        yield f"{ev.t * 1000:10.3f} ms  {who}{format_call(ev)}"


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
        kind = {"SOCK_STREAM": "tcp", "SOCK_DGRAM": "udp"}.get(c["kind"] or "", c["kind"])
        yield (f"  sock {c['sock']:<3} {c['role']:<8} {kind or '?':<4} "
               f"{c['laddr']} -> {c['raddr']}  sent {c['bytes_sent']} B in {c['sends']}, "
               f"received {c['bytes_received']} B in {c['recvs']}")
        if c["recv_chunks"]:
            chunks = c["recv_chunks"]
            shown = ", ".join(map(str, chunks[:20])) + (", ..." if len(chunks) > 20 else "")
            yield f"           recv chunks: [{shown}]"
        for err in c["errors"]:
            yield f"           error: {err}"
        if len(summary.get("pids", ())) > 1:
            yield f"           pids: {', '.join(map(str, c['pids']))}"
