"""The ladder (sequence) diagram of a trace, with its capture, as plain data.

Theory of operation. ``build_ladder`` turns a trace (and, when there is one, the
capture's segments joined with their calls by ``timeline.join``) into a
:class:`Ladder`: plain data, one column per endpoint keyed by ``address:port``, and
rows in time order. The renderers (diagram.py) only lay that data out.

* One column per endpoint, not per host: a loopback connection has two columns
  (127.0.0.1:43044 and 127.0.0.1:7), where Wireshark's flow graph, keyed by address,
  draws one. A listening socket and the sockets it accepted share their column.
* With a capture each segment is an arrow carrying its flags, relative seq/ack and
  length; the calls behind it are written beside it, on the side of the socket that
  made them: ``connect()`` at the SYN (and where it returns, at the SYN/ACK),
  ``accept()`` returning at the final ACK of the handshake, ``shutdown``/``close`` at
  their FIN, the ``recv`` that returned 0 at the peer's FIN, sends and recvs at the
  data segments they carried. Calls with no segment of their own (the second of four
  recvs that emptied one segment) are notes on their column at their own time.
* Without a capture the calls alone are drawn: connect and sends as arrows towards the
  peer with their byte counts, recvs as arrows only when the peer is not traced
  (otherwise the peer's send already drew that arrow), everything else as notes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..capture.join import JoinedSegment, join, load_segments
from ..capture.segments import Endpoint
from ..trace.events import CallEvent, call_label, format_addr
from ..trace.reader import Connection, Trace
from .ladder_states import StateMap, call_states, segment_states

_QUIET_OPS = frozenset({"socket", "settimeout", "setblocking", "setsockopt", "getsockopt",
                        "getsockname", "getpeername", "fileno", "detach", "dup"})


@dataclass(frozen=True, slots=True)
class Column:
    """An endpoint: ``127.0.0.1:7``, and which traced sockets live there."""

    key: str
    subtitle: str


@dataclass(frozen=True, slots=True)
class Arrow:
    """A segment (or, without capture, a call) from one column to another."""

    t: float  # seconds since the trace began
    src: int
    dst: int
    label: str
    role: str  # handshake, data, ack, fin, fin-ack, rst, call
    src_notes: tuple[str, ...] = ()
    dst_notes: tuple[str, ...] = ()
    states: tuple[tuple[int, str], ...] = ()  # (column, TCP state after this row)


@dataclass(frozen=True, slots=True)
class Note:
    """A call with no arrow of its own, on its column."""

    t: float
    col: int
    text: str
    states: tuple[tuple[int, str], ...] = ()


Row = Arrow | Note


@dataclass(frozen=True, slots=True)
class Ladder:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    captured: bool = False
    initial_states: tuple[str, ...] = ()  # per column, "" where not known
    states_inferred: bool = False  # states guessed from calls (no capture)


# -- building -----------------------------------------------------------------------------


def _specific(addr: Any) -> str | None:
    """``host:port`` of an address with a real host and port, else None."""
    if not isinstance(addr, tuple) or len(addr) < 2 or not addr[1]:
        return None
    try:
        if ipaddress.ip_address(str(addr[0]).split("%", 1)[0]).is_unspecified:
            return None
    except ValueError:
        pass
    return format_addr(addr)


def _ep_key(ep: Endpoint) -> str:
    return format_addr(ep)


def _stream_conns(trace: Trace) -> list[Connection]:
    return [c for c in trace.connections.values()
            if c.kind in (None, "SOCK_STREAM") and c.family in ("AF_INET", "AF_INET6")
            and any(e.op != "socket" for e in c.events)]


def _sock_keys(conns: Sequence[Connection], joined: Sequence[JoinedSegment]) -> dict[int, str]:
    keys: dict[int, str] = {}
    for c in conns:
        k = _specific(c.laddr)
        if k is not None:
            keys[c.sock] = k
    for c in conns:  # a listener on 0.0.0.0 lives where its accepted sockets do
        if c.parent is not None and c.parent not in keys and c.sock in keys:
            keys[c.parent] = keys[c.sock]
    for js in joined:  # a refused connect's port is only known from its SYN
        if js.segment.is_syn:
            for ref in js.calls:
                keys.setdefault(ref.sock, _ep_key(js.segment.src))
    for c in conns:
        keys.setdefault(c.sock, f"sock {c.sock}")
    return keys


def _columns(conns: Sequence[Connection], keys: dict[int, str],
             joined: Sequence[JoinedSegment]) -> list[str]:
    order: list[str] = []

    def add(k: str | None) -> None:
        if k is not None and k not in order:
            order.append(k)

    for c in conns:
        if c.role == "client":
            add(keys[c.sock])
            add(_specific(c.raddr))
    for c in conns:
        add(keys[c.sock])
        add(_specific(c.raddr))
    for js in joined:
        add(_ep_key(js.segment.src))
        add(_ep_key(js.segment.dst))
    return order


def _subtitles(conns: Sequence[Connection], keys: dict[int, str]) -> dict[str, str]:
    roles = {"client": "client", "server": "accepted", "listener": "listening"}
    at: dict[str, list[str]] = {}
    for c in conns:
        at.setdefault(keys[c.sock], []).append(f"sock {c.sock} {roles.get(c.role, c.role)}")
    return {k: ", ".join(v) for k, v in at.items()}


def call_text(ev: CallEvent, *, pid: bool = False) -> str:
    """A call as a diagram note: ``sock 2 recv(1024) = 20`` (``pid 7 sock 2 ...``)."""
    op = ev.op
    head = (f"pid {ev.pid} " if pid and ev.pid is not None else "") + f"sock {ev.sock} "
    if ev.error is not None:
        return f"{head}{op}() -> {ev.error.type}"
    if op in ("connect", "connect_ex"):
        return f"{head}{op}()"
    if op == "accept":
        return f"{head}accept() = sock {ev.extra.get('accepted', '?')}"
    if ev.is_recv:
        size = ev.args.get("bufsize") or ev.args.get("nbytes") or ""
        tail = " (EOF)" if ev.nbytes == 0 else ""
        return f"{head}{op}({size}) = {ev.nbytes}{tail}"
    if ev.is_send:
        return f"{head}{op}() = {ev.nbytes}"
    return head + call_label(ev)


def _segment_label(js: JoinedSegment) -> str:
    s = js.segment
    return f"{s.flag_names} seq={s.rel_seq} ack={s.rel_ack} len={s.length}"


def _segment_rows(trace: Trace, joined: Sequence[JoinedSegment], keys: dict[int, str],
                  col: dict[str, int]) -> tuple[list[Row], set[int]]:
    epoch = float(trace.header.extra.get("epoch", 0.0))
    by_seq = {ev.seq: ev for ev in trace.events}
    where: dict[int, list[int]] = {}  # call seq -> indices of its segments
    for i, js in enumerate(joined):
        for ref in js.calls:
            where.setdefault(ref.seq, []).append(i)
    notes: dict[int, list[tuple[int, str]]] = {}  # segment index -> (sock, text)
    shown: set[int] = set()
    pids = len({ev.pid for ev in trace.events}) > 1
    # A descriptor shared by processes (fork) or dup() is closed several times; only the
    # last close() sends the FIN, whichever of them the join credited with it.
    closes: dict[int, list[CallEvent]] = {}
    for call in trace.events:
        if call.op == "close":
            closes.setdefault(call.sock, []).append(call)
    for evs in closes.values():
        last = max(evs, key=lambda e: e.t)
        for call in evs:
            if call is not last and call.seq in where:
                where.setdefault(last.seq, []).extend(where.pop(call.seq))
    for seq, idx in where.items():
        ev = by_seq.get(seq)
        if ev is None or ev.sock not in keys:
            continue
        home = keys[ev.sock]
        text = call_text(ev, pid=pids)
        if ev.is_recv:
            # Drawn at the segment only if it was waiting for it; a recv called later
            # (the data had long arrived) is a note at its own time.
            seg = joined[idx[0]].segment
            if _ep_key(seg.dst) != home or epoch + ev.t > seg.time:
                continue
        shown.add(seq)
        if ev.op == "accept":
            done = [i for i in idx if joined[i].role == "handshake"] or idx
            new = ev.extra.get("accepted", "?")
            notes.setdefault(done[-1], []).append(
                (ev.sock, f"{text.split('sock ', 1)[0]}sock {ev.sock} accept() returns sock {new}"))
            continue
        spans = ev.op.startswith("connect") and len(idx) > 1
        first = f"sock {ev.sock} {ev.op}() ..." if spans else text
        notes.setdefault(idx[0], []).append((ev.sock, first))
        if spans:
            back = next((i for i in idx[1:] if _ep_key(joined[i].segment.dst) == home), None)
            if back is not None:
                ending = "returns" if ev.error is None else f"raises {ev.error.type}"
                notes.setdefault(back, []).append((ev.sock, f"sock {ev.sock} {ev.op}() "
                                                   f"{ending}"))
    rows: list[Row] = []
    states, _ = segment_states(joined)
    for i, js in enumerate(joined):
        s = js.segment
        src, dst = _ep_key(s.src), _ep_key(s.dst)
        here = notes.get(i, [])
        rows.append(Arrow(
            states=_at(states.get(i), col),
            t=s.time - epoch, src=col[src], dst=col[dst], label=_segment_label(js),
            role=js.role,
            src_notes=tuple(t for sock, t in here if keys.get(sock) == src),
            dst_notes=tuple(t for sock, t in here if keys.get(sock) != src),
        ))
    return rows, shown


def _at(states: StateMap | None, col: dict[str, int]) -> tuple[tuple[int, str], ...]:
    """``{key: State}`` as sorted ``(column, name)`` pairs."""
    if not states:
        return ()
    return tuple(sorted((col[k], st.name) for k, st in states.items() if k in col))


def _call_rows(conns: Sequence[Connection], keys: dict[int, str], col: dict[str, int],
               shown: set[int], captured: bool) -> list[Row]:
    traced_keys = set(keys.values())
    pids = len({ev.pid for c in conns for ev in c.events}) > 1
    inferred: dict[int, StateMap] = {}
    if not captured:
        inferred, _ = call_states(conns, keys, {c.sock: _specific(c.raddr) for c in conns})
    rows: list[Row] = []
    for c in conns:
        here = col[keys[c.sock]]
        peer_key = _specific(c.raddr)
        peer = col.get(peer_key) if peer_key is not None else None
        for ev in c.events:
            if ev.seq in shown or ev.op in _QUIET_OPS:
                continue
            text = call_text(ev, pid=pids)
            ended = ev.t + ev.dur
            st = _at(inferred.get(ev.seq), col)
            if not captured and peer is not None and peer != here:
                if ev.op in ("connect", "connect_ex"):
                    rows.append(Arrow(ev.t, here, peer, "connect", "call", src_notes=(text,),
                                      states=st))
                    continue
                if ev.is_send and ev.error is None:
                    rows.append(Arrow(ev.t, here, peer, f"{ev.nbytes} bytes", "call",
                                      src_notes=(text,), states=st))
                    continue
                if ev.is_recv and ev.error is None and peer_key not in traced_keys:
                    label = "EOF" if ev.nbytes == 0 else f"{ev.nbytes} bytes"
                    rows.append(Arrow(ended, peer, here, label, "call", dst_notes=(text,),
                                      states=st))
                    continue
            at = ended if ev.is_recv or ev.op == "accept" else ev.t
            rows.append(Note(at, here, text, states=st))
    return rows


def build_ladder(trace: Trace, joined: Sequence[JoinedSegment] | None = None, *,
                 title: str | None = None) -> Ladder:
    """The ladder of a trace's TCP connections; ``joined`` from ``timeline.join``."""
    segs = list(joined or ())
    conns = _stream_conns(trace)
    keys = _sock_keys(conns, segs)
    order = _columns(conns, keys, segs)
    col = {k: i for i, k in enumerate(order)}
    subs = _subtitles(conns, keys)
    rows, shown = _segment_rows(trace, segs, keys, col)
    rows += _call_rows(conns, keys, col, shown, joined is not None)
    rows.sort(key=lambda r: r.t)
    columns = tuple(Column(k, subs.get(k, "not traced")) for k in order)
    if joined is not None:
        _, initial = segment_states(segs)
    else:
        _, initial = call_states(conns, keys, {c.sock: _specific(c.raddr) for c in conns})
    return Ladder(title or trace.path, columns, tuple(rows), joined is not None,
                  tuple(initial[k].name if k in initial else "" for k in order),
                  joined is None)


def ladder_for(trace: Trace, capture_path: str | None = None) -> Ladder:
    """``build_ladder`` with the segments of ``capture_path`` (read from the file)."""
    if capture_path is None:
        return build_ladder(trace)
    joined = join(trace, load_segments(capture_path), keep_all=True)
    return build_ladder(trace, joined, title=f"{trace.path} + {capture_path}")


__all__ = ["Arrow", "Column", "Ladder", "Note", "Row", "build_ladder", "call_text", "ladder_for"]
