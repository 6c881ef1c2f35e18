"""Replay: socket code run unchanged against a recording, with no network.

Theory of operation. ``replay(path)`` (``session.py``) opens the trace as a Cassette and,
for the block, has patching.py make ``socket.socket`` a ReplaySocket class bound to it.
Each socket the code creates is matched to a recorded one (``cassette.py``); from then on
a Stream (``streams.py``) answers it: recv returns exactly the recorded chunks, sends are
checked against the recorded bytes, and readiness is mirrored on a real descriptor so
select() and asyncio work. A connection with both ends in the process (a connect to its
own listener) is not replayed as two independent recordings: each end's recvs are
gated on the bytes the code has sent on the other (``pairs.py``), so what it reads
never depends on timing, and an end past its recording stays quiet as a real one
would. Reading past a connection's recording raises ReplayError, also under select()
and asyncio, within a bounded time (``ends.py``).

- ``session.py``: ``replay()`` and ``Replay``: what is swapped for the block, and the
  checks at its end; ``getaddrinfo`` through the recording.
- ``cassette.py``: the matching of the code's sockets to recorded connections, fed by
  the trace read in batches.
- ``streams.py``: one recorded connection as the code sees it; ``sends.py``, its send
  side: what the code sends checked against the recording.
- ``ends.py``: the end of a recorded connection: readable past it once the code has
  sent all it owes (or, diverging, after a stall timer), and recv raises.
- ``pairs.py``: connections with both ends in the process (a connect to its own
  listener): each end's recvs gated on what the code sent on the other.
- ``ignoring.py``: ``ignore`` patterns: sent bytes compared with their matches blanked.
- ``entropy.py``: the program's own nondeterministic inputs (``os.urandom``, pids,
  ``random``'s state, the clock if recorded) given back per thread, in order.
- ``records.py``: records as dicts, recorded errors, match keys, diffs.
- ``sockets.py``: ReplaySocket, a real ``socket.socket`` that answers from a Stream.
- ``tls.py``: TLS replayed at the plaintext level (``wrap_socket``, ``wrap_bio``).
- ``children.py``: the replaying program's side of replaying exec'd children.
- ``child.py``: an exec'd child's side: claim a recorded process and replay it.
- ``program.py``: ``tracesock replay``: a script or module run under ``replay()``.
- ``rechunk.py``: the same bytes cut into other recv chunkings, for tests.
"""

from .session import Replay, replay
from .sockets import ReplaySocket

__all__ = ["Replay", "ReplaySocket", "replay"]
