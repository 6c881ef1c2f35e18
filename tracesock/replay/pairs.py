"""Pairs: connections whose two ends both belong to the replayed process.

Theory of operation. A program may connect to its own listener: paho-mqtt wakes its
loop through a loopback pair it makes itself, a test runs client and server in one
process. The trace then holds both ends of one connection: the connect of one socket
and the accept of the other, the local address of each the remote of the other.
Replayed like any connection, the reading end would have all its recorded chunks due
at once (it never sends, so nothing gates them), and would look readable at the end of
its recording, as a connection whose peer is elsewhere does, where the real one blocks.

Why not hand the two ends a real socketpair: a real pair merges two sends into one
recv or splits one, as the scheduler has it, so the chunks the code reads would depend
on timing, and what it sends on either end would go unchecked. So such a pair is
*gated*: each recorded recv of one end is due only once the code has
sent, on the other end, every byte the recording had received up to the end of that
chunk; a recorded FIN (or reset) only once the other end is shut down or closed. (Bytes
a forked child sent on its copy of the other end are not waited for: in a trace that
followed children, their records carry another pid.) The
chunks stay the recorded ones, so what the code reads does not depend on timing, only
on what its own other end has done. Past its recording a gated end is not readable
while its peer is open (the kernel would block, and the recorded program never read
there); a blocking recv there raises ReplayError at once, and one that waits for
bytes the peer never sends raises it after PEER_WAIT seconds plus twice the recorded
pause (from the recv's recorded start to the peer's next recorded send: a peer that
worked that long when recorded may again), counted afresh whenever the peer sends.

Pairs are found when the accept() is replayed (the accepted socket's recorded
addresses are those of a connecting socket, reversed), and a connect to the address of
one of the code's own listeners is gated from the start: nothing is due before its
accept. No I/O here: the streams' readiness callbacks carry the changes to select().
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..errors import ReplayError
from .ends import seconds_from_env

if TYPE_CHECKING:
    from .cassette import Cassette
    from .records import Record
    from .streams import Stream

# seconds of grace a blocking recv waits, past the recorded pause, for bytes its
# in-process peer must send (and again after each send of the peer)
PEER_WAIT = seconds_from_env("TRACESOCK_PEER_WAIT", 5.0)


def past_end(st: Stream) -> bool:
    """The recording has nothing more for ``st`` to receive."""
    return st.chunk is None and not st.recvq and not st._more(st.recvq)


def due(st: Stream) -> bool:
    """The next recorded recv of gated ``st`` has been made possible by its peer."""
    if st.chunk is not None:
        return True
    q = st.recvq
    if not q and not st._more(q):
        return False
    peer = st.peer
    if peer is None:
        return False  # connected to one of our listeners, not accepted yet
    sent_before, chunk, rec = q[0]
    if chunk is None:
        size = int(rec.get("nbytes") or 0)
        fin = "error" in rec or not size
    else:
        size = len(chunk)
        fin = not size
    if peer.shut if fin else st.rcvd + size <= peer.sent:
        return True
    # A forked child answered on its copy of the peer: this process never sees those
    # sends, so the recv is due as any other (the code has sent what preceded it).
    return _sent_elsewhere(peer, rec) and sent_before <= st.sent


def _sent_elsewhere(peer: Stream, rec: Record) -> bool:
    """The peer's next recorded send was made by another process than ``rec``'s."""
    pid = rec.get("pid")
    q = peer.sendq
    if pid is None or (not q and not peer._more(q)):
        return False
    return bool(q[0].get("pid", pid) != pid)


def gated_readable(st: Stream) -> bool:
    if due(st):
        return True
    # Past the recording with the peer gone, recv says so; with the peer open it blocks.
    return past_end(st) and st.peer is not None and st.peer.shut


def wait_for_peer(st: Stream, nonblocking: bool) -> None:
    """Block (the cassette lock held) until ``st``'s next recv is due or past the end."""
    cas = st.cassette
    sent = -1
    deadline = grace = 0.0
    while not due(st) and not past_end(st) and not st.done:
        if nonblocking:
            raise BlockingIOError(11, os.strerror(11))
        peer_sent = st.peer.sent if st.peer is not None else 0
        if peer_sent != sent:  # the peer made progress: its next send gets a fresh wait
            sent = peer_sent
            grace = PEER_WAIT + 2 * _recorded_pause(st)
            deadline = time.monotonic() + grace
        left = deadline - time.monotonic()
        if left <= 0:
            peer = st.peer.describe() if st.peer is not None else "its accept()"
            raise ReplayError(
                f"{cas.path}: {st.describe()}: recv waited {grace:g} s for bytes from "
                f"{peer}, in this process, that the code has not sent (received "
                f"{st.rcvd} so far); the code diverged from the recording")
        cas.turn.wait(left)


def _recorded_pause(st: Stream) -> float:
    """How long the recording's peer took, from the start of ``st``'s next recorded recv,
    to make its next send (0 if either is not known)."""
    peer = st.peer
    q = st.recvq
    if peer is None or (not q and not st._more(q)):
        return 0.0
    head = peer._head_send()
    if head is None:
        return 0.0
    try:
        pause = float(head.get("t") or 0.0) - float(q[0][2].get("t") or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, pause)


def peer_changed(st: Stream) -> None:
    """``st`` sent, shut down or closed: its peer's next recv may be due now."""
    peer = st.peer
    if peer is not None:
        peer._update()
    st.cassette.turn.notify_all()


def _pair(a: Stream, b: Stream) -> None:
    a.peer, b.peer = b, a
    a.gated = b.gated = True
    a._update()
    b._update()
    a.cassette.turn.notify_all()


def _connected_to(st: Stream) -> object:
    # A non-blocking connect is recorded with its EINPROGRESS and no raddr: the address
    # it was given (its match key) is where it went.
    return st.raddr if st.raddr is not None else st.key_address


def _ends_meet(connecting: Stream, accepted: Stream) -> bool:
    return (connecting is not accepted and connecting.peer is None
            and accepted.peer is None and connecting.parent is None
            and accepted.raddr is not None and connecting.laddr == accepted.raddr
            and _connected_to(connecting) == accepted.laddr and connecting.recvs == 0)


def pair_if_loopback(cas: Cassette, accepted: Stream) -> None:
    """``accepted`` was just handed out by accept(): pair it with its connecting end."""
    for st in cas.streams.values():
        if st.claimed and _ends_meet(st, accepted):
            _pair(st, accepted)
            return


def gate_if_own_listener(cas: Cassette, connecting: Stream) -> None:
    """``connecting`` was just claimed by a connect(): to one of our listeners, it is
    gated until its accept (already replayed, in a threaded program, pairs it now)."""
    address = _connected_to(connecting)
    if address is None or address not in cas.listeners:
        return
    connecting.gated = True
    for st in cas.streams.values():
        if st.claimed and st.parent is not None and _ends_meet(connecting, st):
            _pair(connecting, st)
            return
    connecting._update()


__all__ = ["PEER_WAIT", "due", "gate_if_own_listener", "gated_readable", "pair_if_loopback",
           "past_end", "peer_changed", "wait_for_peer"]
