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

Everything here is I/O-free except ``load_segments``, which reads the capture file, and
``join_file``, which streams the trace (setups.py: each socket's set-up, never the
calls) for readers of traces of any size.
The timeline that shows the result is lecture/timeline.py.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CaptureError
from ..trace.events import TraceHeader
from ..trace.reader import Trace
from . import pcapng
from .segments import Endpoint, Segment, flow_key, normalize_host, parse_frame, relativize
from .setups import SetupCall, Setups, SocketSetup, named_calls, ref_label, scan

# Packet and call timestamps come from the same wall clock; this absorbs the sampling
# gap between the trace's epoch and its monotonic zero.
SLACK = 0.002

Pattern = tuple[str | None, int | None]  # None: not known, matches anything


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


def _ref(call: SetupCall) -> CallRef:
    return CallRef(call.sock, call.seq, call.label)


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

    setup: SocketSetup
    epoch: float
    local: Pattern
    remote: Pattern
    anchor: float  # wall time by which its handshake had started
    window: tuple[float, float]  # for inexact matches
    opener: list[CallRef] = field(default_factory=list)
    endpoint: Endpoint | None = None  # filled in once matched

    @property
    def exact(self) -> bool:
        return None not in self.local and None not in self.remote

    @property
    def closer(self) -> SetupCall | None:
        return self.setup.closer

    @property
    def eof(self) -> SetupCall | None:
        return self.setup.eof


def epoch_of(trace: Trace) -> float:
    return header_epoch(trace.path, trace.header)


def header_epoch(path: str, header: TraceHeader) -> float:
    """The wall time of the trace's t=0 (its header's ``epoch``)."""
    epoch = header.extra.get("epoch")
    if not isinstance(epoch, (int, float)):
        raise CaptureError(f"{path}: the trace header has no 'epoch' (wall time of "
                           "t=0), so its calls cannot be lined up with captured packets")
    return float(epoch)


def _sides(setups: Setups, epoch: float) -> list[_Side]:
    sides: list[_Side] = []
    for su in setups.sockets.values():
        if su.kind not in (None, "SOCK_STREAM") or su.family not in (
                None, "AF_INET", "AF_INET6"):
            continue
        connect = su.connect
        local = _pattern(connect.laddr if connect is not None and connect.failed
                         else su.laddr)
        remote = _pattern(su.raddr)
        if local is None or remote is None or remote[1] is None:
            continue
        setup_t, setup_dur = (connect.t, connect.dur) if connect is not None else \
            (su.first_t, su.first_dur)
        side = _Side(su, epoch, local, remote, anchor=epoch + setup_t + setup_dur,
                     window=(epoch + setup_t - SLACK, epoch + setup_t + setup_dur + SLACK))
        if None not in local:
            side.window = (epoch + su.first_t - SLACK, epoch + su.last_end + SLACK)
        if connect is not None:
            side.opener.append(_ref(connect))
        accept = setups.accepts.get(su.sock)
        if accept is not None:
            side.opener.append(_ref(accept))
            side.anchor = epoch + accept.t + accept.dur
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


def _covering(sock: int, ends: Sequence[int], seqs: Sequence[int],
              offset: int) -> list[CallRef]:
    # The label is filled in later (resolve()): only the seqs of sends and recvs are held.
    i = bisect.bisect_right(ends, offset)
    return [CallRef(sock, seqs[i], "")] if i < len(seqs) else []


def _annotate(inc: _Incarnation, keep_all: bool) -> Iterator[JoinedSegment]:
    at: dict[Endpoint, list[_Side]] = {}
    for side in inc.sides:
        assert side.endpoint is not None
        at.setdefault(side.endpoint, []).append(side)
    if inc.syn is not None:
        view = inc.syn.src if inc.syn.src in at else inc.syn.dst
    else:
        clients = [s for s in inc.sides if s.setup.role == "client"]
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
                failed = next((e for e in r.setup.failures
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
                su = s.setup
                refs += _covering(su.sock, su.send_ends or (), su.sends or (), offset)
            for r in receivers:
                su = r.setup
                refs += _covering(su.sock, su.recv_ends or (), su.recvs or (), offset)
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
    joined = join_setups(Setups().extend(trace.events), epoch, segments, keep_all=keep_all)
    if any(not ref.label for js in joined for ref in js.calls):
        by_seq = {ev.seq: ev for ev in trace.events}
        joined = resolve(joined, {seq: ref_label(by_seq[seq]) for seq in unlabelled(joined)})
    return joined


def join_file(trace_path: str, segments: Sequence[Segment], *,
              keep_all: bool = False) -> list[JoinedSegment]:
    """``join`` of the trace at ``trace_path``, streamed (setups.py): memory for its
    sockets' set-ups and the segments, not for its calls."""
    moves = keep_all and any(s.length > 0 and not (s.flags & 0x02 or s.is_rst or s.is_fin)
                             for s in segments)
    header, setups, _ = scan(trace_path, moves)
    joined = join_setups(setups, header_epoch(trace_path, header), segments,
                         keep_all=keep_all)
    del setups
    wanted = unlabelled(joined)
    return resolve(joined, named_calls(trace_path, wanted)[0]) if wanted else joined


def drawn_sockets(setups: Setups, epoch: float, segments: Iterable[Segment],
                  socks: Collection[int]) -> tuple[set[int], bool]:
    """The sockets whose set-ups the join needs to place the segments of ``socks``: those,
    and every socket of a 4-tuple incarnation where one of them (or a socket one of them
    accepted) is; and whether the join of all of them has any segment. ``setups`` may
    be light (setups.py)."""
    by_key = _incarnations(segments)
    for side in sorted(_sides(setups, epoch), key=lambda s: not s.exact):
        _pick(side, by_key)
    drawn = set(socks)
    joined = False
    for incs in by_key.values():
        for inc in incs:
            joined = joined or bool(inc.sides)
            here = {side.setup.sock for side in inc.sides}
            accepted_by = {a.sock for sock in here if (a := setups.accepts.get(sock))}
            if not here.isdisjoint(socks) or not accepted_by.isdisjoint(socks):
                drawn |= here
    return drawn, joined


def join_setups(setups: Setups, epoch: float, segments: Iterable[Segment], *,
                keep_all: bool = False) -> list[JoinedSegment]:
    """``join`` from the sockets' set-ups (setups.py) and the trace's ``epoch``. The
    sends and recvs behind data segments are named by seq only, with an empty label:
    ``resolve`` fills them in from ``unlabelled``'s calls."""
    by_key = _incarnations(segments)
    sides = _sides(setups, epoch)
    for side in sorted(sides, key=lambda s: not s.exact):
        _pick(side, by_key)
    joined = [js for incs in by_key.values() for inc in incs if inc.sides
              for js in _annotate(inc, keep_all)]
    joined.sort(key=lambda js: js.segment.time)
    return joined


def unlabelled(joined: Iterable[JoinedSegment]) -> set[int]:
    """The seqs of the calls ``join_setups`` left without a label."""
    return {ref.seq for js in joined for ref in js.calls if not ref.label}


def resolve(joined: Iterable[JoinedSegment], labels: dict[int, str]) -> list[JoinedSegment]:
    """``joined`` with the empty labels filled in from ``labels`` (seq -> label)."""
    out = []
    for js in joined:
        if any(not ref.label for ref in js.calls):
            calls = tuple(ref if ref.label else CallRef(ref.sock, ref.seq, labels[ref.seq])
                          for ref in js.calls)
            js = JoinedSegment(js.segment, calls, js.role, js.outbound)
        out.append(js)
    return out


def load_segments(capture_path: str, *, lean: bool = False) -> list[Segment]:
    """The TCP segments of a pcapng/pcap file, with relative sequence numbers. ``lean``:
    without their TCP options, and one address tuple per endpoint, not one per segment
    (what the join and the timeline need, in a third of the memory)."""
    segs = (parse_frame(f.data, f.linktype, f.time) for f in pcapng.read(capture_path))
    if not lean:
        return relativize(s for s in segs if s is not None)
    ends: dict[Endpoint, Endpoint] = {}
    return relativize(dataclasses.replace(s, src=ends.setdefault(s.src, s.src),
                                          dst=ends.setdefault(s.dst, s.dst), options=())
                      for s in segs if s is not None)


__all__ = ["CallRef", "JoinedSegment", "drawn_sockets", "epoch_of", "header_epoch", "join",
           "join_file",
           "join_setups", "load_segments", "ref_label", "resolve", "unlabelled"]
