"""Joins captured TCP segments with the socket calls behind them.

Theory of operation. A trace says which sockets the program had and, for each, its
local and remote address (``laddr``/``raddr``); a capture says which segments crossed
the interface, stamped in wall-clock time. The trace header's ``epoch`` is the wall
time of the trace's t=0, so a call started at ``epoch + t``.

Matching is by 4-tuple first, timing second:

1. Segments are grouped by 4-tuple, and each group is cut into *incarnations* at each
   new SYN (Linux reuses a TIME_WAIT 4-tuple on loopback).
2. Each traced TCP socket picks the incarnation of its 4-tuple that started last
   before its own set-up ended (connect returned, accept returned). A socket whose
   local address is not known (Linux releases the ephemeral port of a refused
   connect, and getsockname then reports ``0.0.0.0``) matches on what is known,
   and only segments inside its connect call's own time window.
3. Within an incarnation, each segment is attributed by what it is:

   * SYN, SYN/ACK and the ACK completing the handshake: the ``connect`` that sent the
     SYN, and the listener's ``accept`` that returned the accepted socket;
   * FIN: the sender's ``shutdown(SHUT_WR|SHUT_RDWR)`` or ``close`` (the first of
     them; ``close_fd`` when makefile objects kept the descriptor), and the
     receiver's ``recv`` that returned 0 bytes; the ACK of a FIN goes with its FIN;
   * RST: the sender's ``close`` (closing with unread data resets) and the
     receiver's call that failed because of it (a refused ``connect``, a ``recv``
     raising ECONNRESET);
   * data (``capture_all`` only): the send whose bytes it carries and the recv that
     returned them, found by relative sequence number;
   * other pure ACKs: no call.

Everything here is I/O-free except ``load_segments``, which reads the capture file.
The timeline that shows the result is lecture/timeline.py.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CaptureError
from ..trace.events import CallEvent, call_label
from ..trace.reader import Connection, Trace
from . import pcapng
from .segments import Endpoint, Segment, flow_key, normalize_host, parse_frame, relativize

# Packet and call timestamps come from the same wall clock; this absorbs the sampling
# gap between the trace's epoch and its monotonic zero.
SLACK = 0.002

Pattern = tuple[str | None, int | None]  # None: not known, matches anything

_CONNECT_OPS = ("connect", "connect_ex")


@dataclass(frozen=True, slots=True)
class CallRef:
    """A call a segment belongs to: socket id, the event's ``seq``, and a label."""

    sock: int
    seq: int
    label: str


@dataclass(frozen=True, slots=True)
class JoinedSegment:
    """A segment of a traced connection and the calls behind it."""

    segment: Segment
    calls: tuple[CallRef, ...]
    role: str  # handshake, fin, fin-ack, rst, data, ack
    outbound: bool  # sent from the connecting side (or the traced side)

    @property
    def comment(self) -> str:
        """``sock 1 connect(('127.0.0.1', 7))``: the pcapng packet comment."""
        return "; ".join(c.label for c in self.calls)


def ref_label(ev: CallEvent) -> str:
    """The call as a short label: ``sock 1 connect(('127.0.0.1', 7))``."""
    label = f"sock {ev.sock} {call_label(ev)}"
    if ev.error is not None:
        return f"{label} -> {ev.error.type}"
    if ev.is_recv and ev.nbytes == 0:
        return f"{label} = 0"
    if ev.op == "accept" and "accepted" in ev.extra:
        return f"{label} = sock {ev.extra['accepted']}"
    return label


def _ref(ev: CallEvent) -> CallRef:
    return CallRef(ev.sock, ev.seq, ref_label(ev))


def _pattern(addr: Any) -> Pattern | None:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    host, port = addr[0], addr[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    h: str | None = normalize_host(host)
    try:
        if ipaddress.ip_address(h or "").is_unspecified:
            h = None
    except ValueError:
        h = None  # a host name: the packets only know addresses
    return h, (port or None)


def _matches(pattern: Pattern, ep: Endpoint) -> bool:
    return (pattern[0] is None or pattern[0] == ep[0]) and \
        (pattern[1] is None or pattern[1] == ep[1])


@dataclass
class _Side:
    """One traced TCP socket, as the join needs it."""

    conn: Connection
    epoch: float
    local: Pattern
    remote: Pattern
    anchor: float  # wall time by which its handshake had started
    window: tuple[float, float]  # for inexact matches
    opener: list[CallRef] = field(default_factory=list)
    closer: CallEvent | None = None
    eof: CallEvent | None = None
    failures: list[CallEvent] = field(default_factory=list)
    sends: list[CallEvent] = field(default_factory=list)
    send_ends: list[int] = field(default_factory=list)
    recvs: list[CallEvent] = field(default_factory=list)
    recv_ends: list[int] = field(default_factory=list)
    endpoint: Endpoint | None = None  # filled in once matched

    @property
    def exact(self) -> bool:
        return None not in self.local and None not in self.remote


def epoch_of(trace: Trace) -> float:
    epoch = trace.header.extra.get("epoch")
    if not isinstance(epoch, (int, float)):
        raise CaptureError(f"{trace.path}: the trace header has no 'epoch' (wall time of "
                           "t=0), so its calls cannot be lined up with captured packets")
    return float(epoch)


def _sides(trace: Trace, epoch: float) -> list[_Side]:
    conns = trace.connections
    accepts: dict[int, CallEvent] = {}
    for ev in trace.events:
        new = ev.extra.get("accepted") if ev.op == "accept" else None
        if isinstance(new, int):
            accepts[new] = ev
    sides: list[_Side] = []
    for conn in conns.values():
        if conn.kind not in (None, "SOCK_STREAM") or conn.family not in (
                None, "AF_INET", "AF_INET6") or not conn.events:
            continue
        connect = next((e for e in conn.events if e.op in _CONNECT_OPS), None)
        local = _pattern(connect.laddr if connect is not None and connect.error is not None
                         else conn.laddr)
        remote = _pattern(conn.raddr)
        if local is None or remote is None or remote[1] is None:
            continue
        first, last = conn.events[0], conn.events[-1]
        setup = connect or first
        side = _Side(conn, epoch, local, remote, anchor=epoch + setup.t + setup.dur,
                     window=(epoch + setup.t - SLACK, epoch + setup.t + setup.dur + SLACK))
        if None not in local:
            side.window = (epoch + first.t - SLACK, epoch + last.t + last.dur + SLACK)
        if connect is not None:
            side.opener.append(_ref(connect))
        accept = accepts.get(conn.sock)
        if accept is not None:
            side.opener.append(_ref(accept))
            side.anchor = epoch + accept.t + accept.dur
        sent = received = 0
        for ev in conn.events:
            if ev.error is not None:
                side.failures.append(ev)
                continue
            if side.closer is None and (
                    (ev.op == "shutdown" and ev.args.get("how") in ("SHUT_WR", "SHUT_RDWR"))
                    or (ev.op == "close" and ev.extra.get("fd_closed", True))
                    or ev.op == "close_fd"):
                side.closer = ev
            elif ev.is_send and ev.nbytes:
                sent += ev.nbytes
                side.sends.append(ev)
                side.send_ends.append(sent)
            elif ev.is_recv:
                if ev.nbytes == 0 and side.eof is None:
                    side.eof = ev
                elif ev.nbytes:
                    received += ev.nbytes
                    side.recvs.append(ev)
                    side.recv_ends.append(received)
        sides.append(side)
    return sides


@dataclass
class _Incarnation:
    key: tuple[Endpoint, Endpoint]
    segments: list[Segment] = field(default_factory=list)
    syn: Segment | None = None
    sides: list[_Side] = field(default_factory=list)

    @property
    def start(self) -> float:
        return (self.syn or self.segments[0]).time


def _incarnations(segments: Iterable[Segment]) -> dict[tuple[Endpoint, Endpoint],
                                                      list[_Incarnation]]:
    by_key: dict[tuple[Endpoint, Endpoint], list[_Incarnation]] = {}
    for seg in sorted(segments, key=lambda s: s.time):
        key = flow_key(seg)
        incs = by_key.setdefault(key, [])
        cur = incs[-1] if incs else None
        if cur is None or (seg.is_syn and cur.syn is not None and
                           (cur.syn.src, cur.syn.seq) != (seg.src, seg.seq)):
            cur = _Incarnation(key)
            incs.append(cur)
        if seg.is_syn and cur.syn is None:
            cur.syn = seg
        cur.segments.append(seg)
    return by_key


def _pick(side: _Side, by_key: dict[tuple[Endpoint, Endpoint], list[_Incarnation]]) -> None:
    if side.exact:
        local: Endpoint = (side.local[0] or "", side.local[1] or 0)
        remote: Endpoint = (side.remote[0] or "", side.remote[1] or 0)
        incs = by_key.get((local, remote) if local <= remote else (remote, local), [])
        before = [i for i in incs if i.start <= side.anchor + SLACK]
        if before:
            before[-1].sides.append(side)
            side.endpoint = local
        return
    lo, hi = side.window
    for incs in by_key.values():
        for inc in incs:
            if not lo <= inc.start <= hi:
                continue
            first = inc.syn or inc.segments[0]
            for here, there in ((first.src, first.dst), (first.dst, first.src)):
                if _matches(side.local, here) and _matches(side.remote, there):
                    inc.sides.append(side)
                    side.endpoint = here
                    return


def _covering(ends: Sequence[int], evs: Sequence[CallEvent], offset: int) -> list[CallRef]:
    i = bisect.bisect_right(ends, offset)
    return [_ref(evs[i])] if i < len(evs) else []


def _annotate(inc: _Incarnation, keep_all: bool) -> Iterator[JoinedSegment]:
    at: dict[Endpoint, list[_Side]] = {}
    for side in inc.sides:
        assert side.endpoint is not None
        at.setdefault(side.endpoint, []).append(side)
    if inc.syn is not None:
        view = inc.syn.src if inc.syn.src in at else inc.syn.dst
    else:
        clients = [s for s in inc.sides if s.conn.role == "client"]
        view = (clients or inc.sides)[0].endpoint or inc.key[0]
    openers = [r for s in inc.sides for r in s.opener]
    synack: Segment | None = None
    handshake_acked = False
    fins: dict[Endpoint, tuple[int, tuple[CallRef, ...]]] = {}  # sender -> (ack due, refs)
    for seg in inc.segments:
        senders, receivers = at.get(seg.src, []), at.get(seg.dst, [])
        refs: list[CallRef] = []
        if seg.flags & 0x02:  # SYN
            role, refs = "handshake", list(openers)
            if seg.is_synack:
                synack = seg
        elif seg.is_rst:
            role = "rst"
            refs = [_ref(s.closer) for s in senders if s.closer is not None]
            for r in receivers:
                failed = next((e for e in r.failures
                               if r.epoch + e.t + e.dur >= seg.time - SLACK), None)
                if failed is not None:
                    refs.append(_ref(failed))
        elif seg.is_fin:
            role = "fin"
            refs = [_ref(s.closer) for s in senders if s.closer is not None]
            refs += [_ref(r.eof) for r in receivers if r.eof is not None]
            fins.setdefault(seg.src, ((seg.seq + seg.length + 1) & 0xFFFFFFFF, tuple(refs)))
        elif seg.length == 0:
            role = "ack"
            due = fins.get(seg.dst)
            if (not handshake_acked and synack is not None and seg.dst == synack.src
                    and seg.ack == (synack.seq + 1) & 0xFFFFFFFF):
                role, refs, handshake_acked = "handshake", list(openers), True
            elif due is not None and due[0] == seg.ack:
                role, refs = "fin-ack", list(due[1])
                fins[seg.dst] = (-1, due[1])
        else:
            role = "data"
            offset = seg.rel_seq - 1
            for s in senders:
                refs += _covering(s.send_ends, s.sends, offset)
            for r in receivers:
                refs += _covering(r.recv_ends, r.recvs, offset)
        if keep_all or role not in ("ack", "data"):
            yield JoinedSegment(seg, tuple(dict.fromkeys(refs)), role, seg.src == view)


def join(trace: Trace, segments: Iterable[Segment], *,
         keep_all: bool = False) -> list[JoinedSegment]:
    """The segments of the trace's TCP connections, each with the calls behind it.

    Segments of connections the trace does not know are left out. Without
    ``keep_all`` only SYN, FIN and RST segments and the ACKs completing a handshake or
    acknowledging a FIN are kept; with it, data segments and all pure ACKs too.
    ``segments`` should carry relative sequence numbers (``segments.relativize``).
    """
    epoch = epoch_of(trace)
    by_key = _incarnations(segments)
    sides = _sides(trace, epoch)
    for side in sorted(sides, key=lambda s: not s.exact):
        _pick(side, by_key)
    joined = [js for incs in by_key.values() for inc in incs if inc.sides
              for js in _annotate(inc, keep_all)]
    joined.sort(key=lambda js: js.segment.time)
    return joined


def load_segments(capture_path: str) -> list[Segment]:
    """The TCP segments of a pcapng/pcap file, with relative sequence numbers."""
    segs = (parse_frame(f.data, f.linktype, f.time) for f in pcapng.read(capture_path))
    return relativize(s for s in segs if s is not None)


__all__ = ["CallRef", "JoinedSegment", "epoch_of", "join", "load_segments", "ref_label"]
