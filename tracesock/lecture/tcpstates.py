"""The TCP state machine (RFC 9293, as Linux runs it) for ladder diagrams, without I/O.

Theory of operation. ``track`` replays the segments of ONE connection, in capture order,
against two endpoints: A (index 0) and B (index 1). On loopback a segment is sent and
received at the same instant, so each segment is applied in two steps, the sender's
transition (sending SYN -> SYN_SENT, SYN+ACK -> SYN_RCVD, FIN -> FIN_WAIT_1 or LAST_ACK,
RST -> CLOSED), then the receiver's (RST, then SYN, then the ACK field, then FIN, as
RFC 9293 section 3.10.7 orders them), and the pair of states after both is reported.

* Sequence numbers decide the ACK transitions: the SYN of ISN x is acknowledged by
  ``ack >= x + 1``; a FIN sent at ``seq`` after ``length`` payload bytes sits at
  ``seq + length`` and is acknowledged by ``ack >= seq + length + 1``; comparisons are
  modulo 2**32. So data ACKs, duplicates and retransmissions change nothing.
* Linux answers a SYN at once from a listener (a request socket in SYN_RECV) unless the
  SYN is dropped (accept queue full, SYN flood). The wire cannot tell which until the
  SYN+ACK comes, so ``track`` looks ahead: a SYN that no later SYN+ACK acknowledges,
  before the next SYN, leaves the listener in LISTEN.
* RST closes both ends (Linux's default ``tcp_rfc1337=0`` also lets it end TIME_WAIT),
  except that a listener stays LISTEN, a passively opened SYN_RCVD returns to LISTEN,
  and SYN_SENT only honours a RST carrying an ACK (the answer of "connection refused").
  Windows are not modelled: every RST is taken as in-window.
* Segments that crossed in flight are recognised by what they acknowledge: a FIN whose
  ACK does not cover the peer's FIN was sent before that FIN arrived (simultaneous
  close: CLOSING on both ends), and a bare SYN sent by a CLOSED end that has received a
  SYN answers it (simultaneous open: SYN_RCVD on both ends, then ESTABLISHED).
* Timers are not modelled either: TIME_WAIT stays TIME_WAIT (2*MSL, 60 s on Linux) and
  FIN_WAIT_2 of a closed socket stays FIN_WAIT_2 (``tcp_fin_timeout``).

``infer_from_calls`` guesses the same pairs from socket calls alone, with no capture,
and marks every result as inferred; its docstring lists what it cannot see.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


class State(enum.Enum):
    """TCP states; the value is Linux's number, the ``st`` column of /proc/net/tcp in hex."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RCVD = 3
    FIN_WAIT_1 = 4
    FIN_WAIT_2 = 5
    TIME_WAIT = 6
    CLOSED = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11

    @classmethod
    def from_proc(cls, code: str) -> State:
        """The state of a /proc/net/tcp ``st`` field such as ``"0A"`` (0C is a SYN_RCVD too)."""
        number = int(code, 16)
        return cls.SYN_RCVD if number == 12 else cls(number)

    @property
    def ss(self) -> str:
        """The spelling of ``ss``: ``ESTAB``, ``SYN-RECV``, ``FIN-WAIT-1``, ``UNCONN``..."""
        return _SS.get(self, self.name.replace("_", "-"))

    @property
    def rfc(self) -> str:
        """The spelling of RFC 9293: ``SYN-RECEIVED``, ``FIN-WAIT-1``, ``TIME-WAIT``..."""
        return "SYN-RECEIVED" if self is State.SYN_RCVD else self.name.replace("_", "-")


_SS = {State.ESTABLISHED: "ESTAB", State.SYN_RCVD: "SYN-RECV", State.CLOSED: "UNCONN"}
PROC_STATES: dict[str, State] = {f"{s.value:02X}": s for s in State} | {"0C": State.SYN_RCVD}
"""/proc/net/tcp ``st`` codes (upper-case hex, as the kernel prints them) to states."""

_FLAG_LETTERS = "FSRPAUEC"  # scapy's letters, in the order of the header bits
_MOD = 1 << 32


@dataclass(frozen=True)
class Seg:
    """One segment: ``sender`` 0 (A) or 1 (B), scapy-style ``flags`` ("SA", "FPA", "R")."""

    sender: int
    flags: str
    seq: int = 0
    ack: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        if self.sender not in (0, 1):
            raise ValueError(f"sender must be 0 or 1, not {self.sender!r}")
        if bad := set(self.flags) - set(_FLAG_LETTERS):
            raise ValueError(f"unknown TCP flag letter(s) {''.join(sorted(bad))!r} in "
                             f"{self.flags!r} (known: {_FLAG_LETTERS})")

    def has(self, letter: str) -> bool:
        return letter in self.flags

    @property
    def fin_seq(self) -> int:
        """The sequence number a FIN in this segment occupies (SYN, then data, then FIN)."""
        return (self.seq + self.has("S") + self.length) % _MOD


def flag_letters(bits: int) -> str:
    """TCP header flag bits (FIN=0x01 ... CWR=0x80) to scapy's letters: 0x12 -> "SA"."""
    return "".join(c for i, c in enumerate(_FLAG_LETTERS) if bits >> i & 1)


def _acks(ack: int, seq: int) -> bool:
    """True if ``ack`` covers sequence number ``seq`` (ack >= seq + 1, modulo 2**32)."""
    return (ack - seq - 1) % _MOD < _MOD // 2


class _End:
    """One endpoint: its state, whether it opened passively, its ISN and FIN, the peer's FIN."""

    def __init__(self, state: State) -> None:
        self.state, self.passive = state, state is State.LISTEN
        self.iss: int | None = None
        self.fin: int | None = None
        self.peer_fin: int | None = None
        self.peer_syn = False  # a bare SYN reached this end while CLOSED

    def _rst(self) -> None:
        passive_open = self.passive and self.state is State.SYN_RCVD
        if self.state is not State.LISTEN:
            self.state = State.LISTEN if passive_open else State.CLOSED

    def send(self, seg: Seg) -> None:
        s = self.state
        if seg.has("R"):
            self._rst()
            return
        if seg.has("S"):
            self.iss = seg.seq
            if s is State.CLOSED and not seg.has("A"):  # crossed SYNs: simultaneous open
                self.state = State.SYN_RCVD if self.peer_syn else State.SYN_SENT
            elif s in (State.LISTEN, State.SYN_SENT) and seg.has("A"):
                self.state = State.SYN_RCVD
        if seg.has("F") and s not in (State.CLOSED, State.LISTEN, State.SYN_SENT):
            self.fin = seg.fin_seq
            if s in (State.ESTABLISHED, State.SYN_RCVD):
                self.state = State.FIN_WAIT_1
            elif s is State.CLOSE_WAIT:  # sent before the peer's FIN came? FINs crossed
                crossed = self.peer_fin is not None and not (
                    seg.has("A") and _acks(seg.ack, self.peer_fin))
                self.state = State.CLOSING if crossed else State.LAST_ACK

    def receive(self, seg: Seg, answered: bool) -> None:
        s = self.state
        if seg.has("R"):
            if s is not State.SYN_SENT or seg.has("A"):
                self._rst()
            return
        acked_syn = seg.has("A") and self.iss is not None and _acks(seg.ack, self.iss)
        if seg.has("S"):
            if s is State.LISTEN and not seg.has("A") and answered:
                self.state = State.SYN_RCVD
            elif s is State.CLOSED and not seg.has("A"):
                self.peer_syn = True
            elif s is State.SYN_SENT:  # SYN+ACK: the handshake; a bare SYN: simultaneous open
                self.state = State.ESTABLISHED if acked_syn else State.SYN_RCVD
            elif s is State.SYN_RCVD and acked_syn and not self.passive:
                self.state = State.ESTABLISHED
            return  # a SYN segment carries no FIN worth acting on
        if s is State.SYN_RCVD and acked_syn:
            self.state = s = State.ESTABLISHED
        if seg.has("A") and self.fin is not None and _acks(seg.ack, self.fin):
            after = {State.FIN_WAIT_1: State.FIN_WAIT_2, State.CLOSING: State.TIME_WAIT,
                     State.LAST_ACK: State.CLOSED}
            self.state = s = after.get(s, s)
        if seg.has("F"):
            self.peer_fin = seg.fin_seq
            after = {State.ESTABLISHED: State.CLOSE_WAIT, State.FIN_WAIT_1: State.CLOSING,
                     State.FIN_WAIT_2: State.TIME_WAIT}
            self.state = after.get(s, s)


def _answered_syns(segs: list[Seg]) -> set[int]:
    """Indices of bare SYNs that a later SYN+ACK acknowledges (the last such SYN before it)."""
    answered: set[int] = set()
    last_syn: dict[int, int] = {}  # sender -> index of its latest bare SYN
    for i, seg in enumerate(segs):
        if seg.has("S") and not seg.has("A"):
            last_syn[seg.sender] = i
        elif seg.has("S") and (j := last_syn.get(1 - seg.sender)) is not None \
                and _acks(seg.ack, segs[j].seq):
            answered.add(j)
    return answered


def track(segs: Iterable[Seg], *, initiator: int | None = None,
          listening: bool = True) -> list[tuple[State, State]]:
    """The (A, B) states after each segment of one connection, in order.

    The initiator starts CLOSED, the other endpoint LISTEN (or CLOSED if not
    ``listening``: no listener, or a simultaneous open). ``initiator`` defaults to the
    sender of the first bare SYN, else A.
    """
    segs = list(segs)
    if initiator is None:
        initiator = next((s.sender for s in segs if s.has("S") and not s.has("A")), 0)
    if initiator not in (0, 1):
        raise ValueError(f"initiator must be 0 or 1, not {initiator!r}")
    ends = [_End(State.CLOSED), _End(State.CLOSED)]
    if listening:
        ends[1 - initiator] = _End(State.LISTEN)
    answered = _answered_syns(segs)
    out: list[tuple[State, State]] = []
    for i, seg in enumerate(segs):
        ends[seg.sender].send(seg)
        ends[1 - seg.sender].receive(seg, i in answered)
        out.append((ends[0].state, ends[1].state))
    return out


@dataclass(frozen=True)
class Call:
    """A socket call by endpoint ``side``; ``op`` is one of :data:`CALL_OPS`, where ``eof``
    is a recv() that returned b'' and ``abort`` a close() that sends RST (SO_LINGER 0, or
    unread data). ``how`` is shutdown()'s argument; ``shared`` marks a close() of a
    descriptor still open elsewhere (dup, fork): the kernel then sends nothing.
    """

    side: int
    op: str
    how: int = socket.SHUT_RDWR
    shared: bool = False


CALL_OPS = frozenset({"connect", "accept", "listen", "send", "recv", "eof", "shutdown",
                      "close", "abort"})


class Inferred(NamedTuple):
    """(A, B) states guessed from calls, not seen on the wire; equal to the plain tuple."""

    a: State
    b: State

    @property
    def inferred(self) -> bool:
        return True


def infer_from_calls(calls: Iterable[Call | tuple[int, str] | tuple[int, str, int]], *,
                     initiator: int = 0, listening: bool = True) -> list[Inferred]:
    """Guess the (A, B) states after each call, assuming loopback and well-behaved peers.

    Each call is a :class:`Call` or a ``(side, op[, how])`` tuple; the i-th result
    follows the i-th call. The peer's kernel is taken to answer at once, as on loopback,
    so transient states never show: connect() gives ESTABLISHED on both ends (CLOSED,
    refused, if the peer is not in LISTEN); the first FIN (shutdown() with SHUT_WR or
    SHUT_RDWR, or close()) gives FIN_WAIT_2 to its sender and CLOSE_WAIT to the peer, the
    answering FIN CLOSED to its sender and TIME_WAIT to the peer; ``abort``, and send()
    to a peer that has closed (not just shut down), reset both ends to CLOSED. listen()
    and close() of the side still in LISTEN open and close the listener; accept, send,
    recv and eof change nothing.

    Limits: SYN_SENT, SYN_RCVD, FIN_WAIT_1, LAST_ACK and CLOSING are never inferred
    (they last a round trip); a close() while the descriptor is shared (``shared=True``,
    after dup() or fork()) sends no FIN, and the calls alone cannot tell that it is
    shared; a close() with unread data sends RST, not FIN (say ``abort``); timers (the
    TIME_WAIT and FIN_WAIT_2 timeouts, keepalive), lost peers, full backlogs and
    non-blocking connects in progress are invisible. Use :func:`track` on a capture.
    """
    st = [State.CLOSED, State.CLOSED]
    if listening:
        st[1 - initiator] = State.LISTEN
    closed = [False, False]  # the descriptor is gone: data arriving then draws a RST
    out: list[Inferred] = []
    for raw in calls:
        call = raw if isinstance(raw, Call) else Call(*raw)
        me, peer = call.side, 1 - call.side
        if call.op not in CALL_OPS or me not in (0, 1):
            raise ValueError(f"unknown call {call!r} (ops: {', '.join(sorted(CALL_OPS))})")
        sends_fin = (call.op == "shutdown" and call.how != socket.SHUT_RD) or (
            call.op == "close" and not call.shared)
        if st[me] in (State.CLOSED, State.LISTEN) and call.op in ("listen", "close", "abort"):
            st[me] = State.LISTEN if call.op == "listen" else State.CLOSED
        elif call.op == "connect":
            ok = st[peer] is State.LISTEN
            st[me] = st[peer] = State.ESTABLISHED if ok else State.CLOSED
        elif call.op == "abort" or (call.op == "send" and closed[peer]
                                    and st[peer] in (State.FIN_WAIT_1, State.FIN_WAIT_2)):
            st = [State.CLOSED, State.CLOSED]
        elif sends_fin and st[me] is State.ESTABLISHED:
            st[me], st[peer] = State.FIN_WAIT_2, State.CLOSE_WAIT
        elif sends_fin and st[me] is State.CLOSE_WAIT:
            st[me], st[peer] = State.CLOSED, State.TIME_WAIT
        if call.op in ("close", "abort") and not call.shared:
            closed[me] = True
        out.append(Inferred(st[0], st[1]))
    return out
