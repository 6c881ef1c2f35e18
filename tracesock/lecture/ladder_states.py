"""The TCP state of each ladder column after each segment (or call), for ladder.py.

Theory of operation. With a capture, the joined segments are grouped by connection (the
pair of endpoints) and each group that holds a SYN is replayed through
``tcpstates.track``: the states are seen. Without a capture, the calls of each traced
connection (and of its traced peer, merged in time order) go through
``tcpstates.infer_from_calls``: the states are guessed, and the renderers mark them so.
A peer that is not traced is given the calls its traced end implies: a connect() before
an accept(), a close() before a recv() that returned 0.

Both return, per row source (segment index or call seq), ``{column key: State}`` for the
two endpoints involved, and the starting state of each column.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

from ..capture.join import JoinedSegment
from ..trace.events import CallEvent, format_addr
from ..trace.reader import Connection
from .tcpstates import Call, Seg, State, flag_letters, infer_from_calls, track

StateMap = dict[str, State]


def segment_states(joined: Sequence[JoinedSegment]) -> tuple[dict[int, StateMap], StateMap]:
    """Per segment index, the states of its two endpoints after it; and initial states."""
    groups: dict[frozenset[str], list[int]] = {}
    for i, js in enumerate(joined):
        s = js.segment
        groups.setdefault(frozenset((format_addr(s.src), format_addr(s.dst))), []).append(i)
    out: dict[int, StateMap] = {}
    initial: StateMap = {}
    for idx in groups.values():
        segs = [joined[i].segment for i in idx]
        if not any(s.is_syn for s in segs):
            continue  # the capture began mid-connection: the states are not known
        syn = next(s for s in segs if s.is_syn)
        a, b = format_addr(syn.src), format_addr(syn.dst)
        # a listener answers a SYN, or (accept queue full) ignores it; no listener: RST
        listening = any(s.is_synack for s in segs) or not any(
            s.is_rst and format_addr(s.src) == b for s in segs)
        steps = track((Seg(0 if format_addr(s.src) == a else 1, flag_letters(s.flags), s.seq, s.ack,
                           s.length) for s in segs), initiator=0, listening=listening)
        initial.setdefault(a, State.CLOSED)
        initial.setdefault(b, State.LISTEN if listening else State.CLOSED)
        for i, (sa, sb) in zip(idx, steps, strict=True):
            out[i] = {a: sa, b: sb}
    return out, initial


_OPS = {"connect": "connect", "connect_ex": "connect", "accept": "accept", "listen": "listen",
        "shutdown": "shutdown", "close": "close"}


def _call(ev: CallEvent, side: int) -> Call | None:
    if ev.error is not None and ev.op not in ("connect", "connect_ex"):
        return None
    if ev.is_recv:
        return Call(side, "eof" if ev.nbytes == 0 else "recv")
    if ev.is_send:
        return Call(side, "send")
    op = _OPS.get(ev.op)
    if op is None:
        return None
    if op == "shutdown":
        how = ev.args.get("how", "SHUT_RDWR")
        if isinstance(how, str):
            how = getattr(socket, how, socket.SHUT_RDWR)
        return Call(side, op, how=int(how))
    return Call(side, op)


def _shared_closes(evs: list[tuple[float, int, CallEvent | None, Call]]
                   ) -> list[tuple[float, int, CallEvent | None, Call]]:
    """Mark every close() of a socket but its last (by time) as shared: a descriptor
    closed several times was held by several processes (fork) or dup()s; only the last
    close() sends the FIN."""
    last: dict[int, float] = {}
    for t, _, ev, call in evs:
        if ev is not None and call.op == "close":
            last[ev.sock] = max(t, last.get(ev.sock, t))
    return [(t, seq, ev, Call(call.side, call.op, call.how, shared=True))
            if ev is not None and call.op == "close" and t < last[ev.sock] else
            (t, seq, ev, call) for t, seq, ev, call in evs]


def call_states(conns: Iterable[Connection], keys: dict[int, str],
                peer_key: dict[int, str | None]) -> tuple[dict[int, StateMap], StateMap]:
    """Per call seq, the inferred states of its two endpoints after it; and initial states."""
    conns = list(conns)
    by_sock = {c.sock: c for c in conns}
    out: dict[int, StateMap] = {}
    initial: StateMap = {}
    done: set[int] = set()
    for c in conns:
        if c.role not in ("client", "server") or c.sock in done:
            continue
        here, there = keys[c.sock], peer_key.get(c.sock)
        if there is None:
            continue
        peer = next((p for p in conns if p.sock != c.sock and p.role in ("client", "server")
                     and keys[p.sock] == there and peer_key.get(p.sock) == here), None)
        done.add(c.sock)
        client_first = c.role == "client" or (peer is not None and peer.role == "client")
        sides = (here, there) if client_first else (there, here)
        evs: list[tuple[float, int, CallEvent | None, Call]] = []
        for conn in (c, peer):
            if conn is None:
                continue
            done.add(conn.sock)
            side = sides.index(keys[conn.sock])
            for ev in conn.events:
                call = _call(ev, side)
                if call is not None:  # at the time the ladder draws it
                    evs.append((ev.t + ev.dur if ev.is_recv else ev.t, ev.seq, ev, call))
            parent = by_sock.get(conn.parent) if conn.parent is not None else None
            if parent is not None:  # the listener's accept() that returned it
                for ev in parent.events:
                    if ev.op == "accept" and ev.extra.get("accepted") == conn.sock:
                        evs.append((ev.t + ev.dur, ev.seq, ev, Call(side, "accept")))
        if peer is None:  # what the untraced end must have done
            for t, _, _ev, call in list(evs):
                if call.op == "accept":
                    evs.append((t - 1e-9, -1, None, Call(1 - call.side, "connect")))
                elif call.op == "eof":
                    evs.append((t - 1e-9, -1, None, Call(1 - call.side, "close")))
        evs.sort(key=lambda e: (e[0], e[1]))
        failed = {ev.error.type for _, _, ev, _ in evs if ev is not None
                  and ev.op.startswith("connect") and ev.error is not None}
        if failed - {"ConnectionRefusedError"}:
            continue  # timed out, unreachable...: the calls cannot tell what the peer did
        refused = bool(failed)
        evs = _shared_closes(evs)
        steps = infer_from_calls((e[3] for e in evs), initiator=0, listening=not refused)
        initial.setdefault(sides[0], State.CLOSED)
        initial.setdefault(sides[1], State.CLOSED if refused else State.LISTEN)
        for (_, _, made, _), st in zip(evs, steps, strict=True):
            if made is not None:
                out[made.seq] = {sides[0]: st.a, sides[1]: st.b}
    return out, initial


__all__ = ["StateMap", "call_states", "segment_states"]
