"""The end of a recorded connection: when a socket is readable past it.

Theory of operation. Once the code has taken every recv the recording has for a socket,
what select() should say depends on what the code still owes. If it has sent all the
recording sent, it is past the recorded program's last step: the socket is readable
and recv raises ReplayError naming it, rather than leave a select loop (or asyncio)
waiting forever. If it still has recorded bytes to send, the recorded program was still
sending there and nothing was readable: paho-mqtt's loop selects on its socket while
its DISCONNECT is queued. Readable then would be wrong; never readable would hang a
program that, diverging, waits for an answer before it sends. So a *stall timer* runs:
when the code has still not sent those bytes END_WAIT seconds (plus twice the recorded
pause before the recording's last send) after its last recv, the socket turns readable,
and recv raises. Only a diverging program ever sees it fire. It is armed only for a
socket the code has read from (not one thread per send-only socket), and not when
replaying in real time (recorded pauses are slept, and may be long).

On a slow machine the grace can be raised without touching the code: the environment
variables ``TRACESOCK_END_WAIT`` (this one) and ``TRACESOCK_PEER_WAIT`` (pairs.py) give
it in seconds, read when tracesock is imported.
"""

from __future__ import annotations

import os
from threading import Timer  # a name of ours: a test fires the timer by hand
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .streams import Stream


def seconds_from_env(name: str, default: float) -> float:
    """A grace period in seconds: the environment variable ``name`` if set, else default."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise UsageError(f"{name}={value!r}: expected a number of seconds, 0 or more")
    return seconds


# seconds of grace, past the recorded pause, before the socket stalls
END_WAIT = seconds_from_env("TRACESOCK_END_WAIT", 5.0)


def arm_stall(st: Stream) -> None:
    """Start ``st``'s stall timer (the cassette lock held; once per stream, and not
    after the replay block: Cassette.close stops them all)."""
    if st.cassette.ended:
        return
    gap = 0.0
    last = st.last
    if last is not None and st.sendq:
        end = float(last.get("t") or 0.0) + float(last.get("dur") or 0.0)
        gap = max(0.0, float(st.sendq[-1].get("t") or 0.0) - end)
    timer = Timer(END_WAIT + 2 * gap, _stalled, (st,))
    timer.daemon = True
    timer.name = f"tracesock-stall-{st.sid}"
    st.stall = timer
    timer.start()


def _stalled(st: Stream) -> None:
    with st.cassette.lock:
        if st.done:
            return
        st.stalled = True
        st._update()


def owed(st: Stream) -> str:
    """What the code still owes the recording, for the past-the-end error."""
    missing = st.rec_sent - st.sent
    if missing <= 0:
        return ""
    return f" (and has yet to send {missing} bytes the recording sent)"


__all__ = ["END_WAIT", "arm_stall", "owed", "seconds_from_env"]
