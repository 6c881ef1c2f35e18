"""What the join needs of each socket, collected in one streaming pass over a trace.

Theory of operation. The join (join.py) places a connection's segments by its
addresses and the time its set-up ended, and names the calls behind each segment: the
``connect``, the listener's ``accept`` that returned the socket, the first
``shutdown``/``close``, the ``recv`` that returned 0, the calls that failed, and, for
data segments, the sends and recvs by their byte offsets. A :class:`SocketSetup` holds
just that for one socket: a handful of calls (with their labels), its failures, and
(only when the capture has data segments) two arrays of call numbers and byte offsets,
never the events. So ``scan()`` holds memory proportional to the connections (and to
the capture, for data), not to the calls; lecture/timeline.py then streams the calls a
second time for output.

A listener's handshake is joined through other sockets' calls (the accept that returned
the accepted socket, the peer's connect), so a view of some sockets (``show --capture
--sock N``) cannot keep only theirs: it first scans ``light`` (where every socket is, no
labels), finds the connections that share a 4-tuple incarnation with the sockets shown
or were accepted by them (join.drawn_sockets), and then keeps ``only`` those.

``Setups.add`` takes a CallEvent (the in-memory join feeds a loaded Trace's events);
``scan`` reads a file with BatchReader and builds a CallEvent only for the calls that
are not plain successful sends and recvs, whose few fields are read from the record.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..trace import events
from ..trace.batches import BatchReader
from ..trace.events import RECV_OPS, SEND_OPS, CallEvent, TraceHeader, call_label
from ..trace.reader import Sharing, event_from_record

_CONNECT_OPS = ("connect", "connect_ex")
_IDENTITY = ("family", "kind", "laddr", "raddr", "parent", "error")
# Successful sends and recvs that only move bytes (sendto names its peer: slow path).
_MOVES = (SEND_OPS - {"sendto"}) | RECV_OPS


@dataclass(frozen=True, slots=True)
class SetupCall:
    """One call the join may name: its socket, ``seq``, label, start and duration."""

    sock: int
    seq: int
    label: str
    t: float
    dur: float
    laddr: Any = None
    failed: bool = False


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


def setup_call(ev: CallEvent) -> SetupCall:
    """What the join keeps of a call (its local address: only a connect's is read)."""
    return SetupCall(ev.sock, ev.seq, ref_label(ev), ev.t, ev.dur,
                     ev.laddr if ev.op in _CONNECT_OPS else None, ev.error is not None)


@dataclass(slots=True)
class SocketSetup:
    """One socket as the join sees it (the fields Trace.connections gives, and calls)."""

    sock: int
    first_t: float
    first_dur: float
    last_end: float = 0.0
    family: Any = None
    kind: Any = None
    laddr: Any = None
    raddr: Any = None
    parent: int | None = None
    listens: bool = False
    connects: bool = False
    connect: SetupCall | None = None
    closer: SetupCall | None = None
    eof: SetupCall | None = None
    failures: list[SetupCall] = field(default_factory=list)
    # seqs of the sends and recvs that moved bytes, and the running byte count after each
    # (made on the first one: most sockets of a SYN/FIN/RST capture never need them)
    sends: array[int] | None = None
    send_ends: array[int] | None = None
    recvs: array[int] | None = None
    recv_ends: array[int] | None = None

    @property
    def role(self) -> str:
        """As ``Connection.role``: server, listener, client or socket."""
        if self.parent is not None:
            return "server"
        if self.listens:
            return "listener"
        return "client" if self.connects else "socket"


class Setups:
    """The sockets of a trace, fed one call at a time (in file order)."""

    def __init__(self, moves: bool = True, only: Collection[int] | None = None,
                 light: bool = False) -> None:
        self.moves = moves and not light  # keep the sends and recvs (data segments)
        self.only = only  # keep these sockets only (and the accepts that returned them)
        self.light = light  # where the sockets are, not what they did: no labels
        self.sockets: dict[int, SocketSetup] = {}
        self.accepts: dict[int, SetupCall] = {}  # accepted socket -> the accept

    def _call(self, ev: CallEvent) -> SetupCall:
        if not self.light:
            return setup_call(ev)
        return SetupCall(ev.sock, ev.seq, "", ev.t, ev.dur,
                         ev.laddr if ev.op in _CONNECT_OPS else None, ev.error is not None)

    def add(self, ev: CallEvent) -> None:
        only = self.only
        if only is not None and ev.sock not in only:
            new = ev.extra.get("accepted") if ev.op == "accept" else None
            if isinstance(new, int) and new in only:  # the accept names a kept socket
                self.accepts[new] = self._call(ev)
            return
        s = self.sockets.get(ev.sock)
        if s is None:
            s = self.sockets[ev.sock] = SocketSetup(ev.sock, ev.t, ev.dur)
        s.last_end = ev.t + ev.dur
        op = ev.op
        if ev.family is not None:
            s.family = ev.family
        if ev.kind is not None:
            s.kind = ev.kind
        if ev.laddr is not None and op != "accept":
            s.laddr = ev.laddr
        if ev.raddr is not None and op != "accept":
            s.raddr = ev.raddr
        if ev.parent is not None:
            s.parent = ev.parent
        if s.raddr is None and op in ("connect", "connect_ex", "sendto"):
            s.raddr = events.decode_addr(ev.args.get("address"))
        if op in ("listen", "accept"):
            s.listens = True
        elif op in _CONNECT_OPS:
            s.connects = True
            if s.connect is None:
                s.connect = self._call(ev)
        if op == "accept":
            new = ev.extra.get("accepted")
            if isinstance(new, int):
                self.accepts[new] = self._call(ev)
        if self.light:
            return
        if ev.error is not None:
            s.failures.append(setup_call(ev))
            return
        if s.closer is None and (
                (op == "shutdown" and ev.args.get("how") in ("SHUT_WR", "SHUT_RDWR"))
                or (op == "close" and ev.extra.get("fd_closed", True))
                or op == "close_fd"):
            s.closer = setup_call(ev)
        elif ev.is_send and ev.nbytes:
            self.move(s, ev.seq, True, ev.nbytes)
        elif ev.is_recv:
            if ev.nbytes == 0 and s.eof is None:
                s.eof = setup_call(ev)
            elif ev.nbytes:
                self.move(s, ev.seq, False, ev.nbytes)

    def move(self, s: SocketSetup, seq: int, sent: bool, nbytes: int) -> None:
        if not self.moves:
            return
        if sent:
            if s.sends is None or s.send_ends is None:
                s.sends, s.send_ends = array("q"), array("q")
            seqs, ends = s.sends, s.send_ends
        else:
            if s.recvs is None or s.recv_ends is None:
                s.recvs, s.recv_ends = array("q"), array("q")
            seqs, ends = s.recvs, s.recv_ends
        seqs.append(seq)
        ends.append((ends[-1] if ends else 0) + nbytes)

    def extend(self, evs: Iterable[CallEvent]) -> Setups:
        for ev in evs:
            self.add(ev)
        return self


def scan(path: str, moves: bool, only: Collection[int] | None = None,
         light: bool = False) -> tuple[TraceHeader, Setups, list[str]]:
    """One streaming pass over the trace at ``path``: its header, its sockets' set-ups
    and the reader's warnings (those load() gives). ``moves``: keep sends and recvs;
    ``only`` and ``light``: as Setups has them."""
    setups = Setups(moves, only, light)
    sockets = setups.sockets
    reader = BatchReader(path)
    share = Sharing()  # one "AF_INET", one "SOCK_STREAM"... for all the sockets
    last_seq = -1
    try:
        for lineno, recs in reader.batches():
            for i, rec in enumerate(recs):
                # The bulk: a send or recv that moved bytes and says nothing else the
                # join reads. Its fields are checked here; anything else goes the slow way.
                op = rec.get("op") if type(rec) is dict else None
                if type(op) is str and op in _MOVES and rec.get("type") == "call":
                    seq, sock, n = rec.get("seq"), rec.get("sock"), rec.get("nbytes")
                    t: Any = rec.get("t")
                    dur: Any = rec.get("dur") or 0.0
                    s = sockets.get(sock) if type(sock) is int else None
                    if s is None and only is not None and type(sock) is int \
                            and sock not in only:
                        continue  # not kept (the last pass checks the record)
                    if s is not None and type(seq) is int and seq > last_seq \
                            and type(n) is int and n > 0 and type(t) in (int, float) \
                            and type(dur) in (int, float) \
                            and not any(k in rec for k in _IDENTITY):
                        last_seq = seq
                        s.last_end = float(t) + float(dur)
                        setups.move(s, seq, op in SEND_OPS, n)
                        continue
                ev = reader.checked(lineno + i, rec, last_seq, share)
                if ev is None:
                    continue
                last_seq = ev.seq
                setups.add(ev)
    finally:
        reader.close()
    reader.finished()
    return reader.header, setups, reader.warnings


def named_calls(path: str, wanted: Collection[int],
                keep: Callable[[CallEvent], bool] | None = None,
                ) -> tuple[dict[int, str], set[int]]:
    """A streaming pass for the calls ``wanted`` (by seq): their labels (seq -> label),
    and those of them ``keep`` keeps. No CallEvent is built for the others."""
    labels: dict[int, str] = {}
    kept: set[int] = set()
    reader = BatchReader(path)
    try:
        for lineno, recs in reader.batches():
            for i, rec in enumerate(recs):
                seq = rec.get("seq") if type(rec) is dict else None
                if type(seq) is int and seq in wanted and rec.get("type") == "call":
                    ev = event_from_record(path, lineno + i, rec)
                    labels[ev.seq] = ref_label(ev)
                    if keep is not None and keep(ev):
                        kept.add(ev.seq)
    finally:
        reader.close()
    return labels, kept


__all__ = ["SetupCall", "Setups", "SocketSetup", "named_calls", "ref_label", "scan",
           "setup_call"]
