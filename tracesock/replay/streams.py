"""A Stream: one recorded socket as the replay hands it out.

Theory of operation. From the moment the cassette (cassette.py) hands a stream to one
of the code's sockets, the stream answers that socket's calls:

* each recv gives exactly what the recorded recv returned (a smaller bufsize gets the
  head of the chunk, the rest comes next, as a kernel would do); a recorded ``b''``,
  reset or timeout comes back at the same point;
* each send is checked against the bytes the recording sent: by default the
  concatenation (send boundaries may differ), ``strict`` call by call, ``off`` not at
  all. A recorded ``send`` that the kernel cut short returns the same count again;
* a stream is *readable* when its next recv is due: the code has sent at least what
  the recording had sent before it. The socket layer (sockets.py) is told of
  readiness changes by callback and mirrors them on a real file descriptor, so
  select() and selectors work. Past its last recorded recv it is readable once the
  code has sent all the recording sent, and recv raises (ends.py);
* a stream whose peer is another socket of the code (pairs.py) is *gated* instead: a
  recv is due when that peer has sent its bytes, and a blocking one waits for them.

No I/O here: the cassette's clock and sleep pace recvs when replaying in real time.
"""

from __future__ import annotations

import binascii
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ReplayError
from ..trace.events import decode_addr, format_addr
from .ends import arm_stall, owed
from .pairs import due, gated_readable, pair_if_loopback, peer_changed, wait_for_peer
from .records import (
    EndsOnly,
    Record,
    RecvEntry,
    a2b,
    recorded_error,
)
from .sends import SendChecks

if TYPE_CHECKING:
    from .cassette import Cassette


class Stream(SendChecks):
    """One recorded socket as the replay hands it out: what it receives, what it must send."""

    # Slots: recv and the filing loop read these on every event. A plain instance of 30+
    # attributes gets an unshared dict (CPython shares keys up to 29), and each attribute
    # access costs ~2 ns more: ~3% of the replay of a recv. A new attribute goes here too.
    __slots__ = ("acceptq", "anchor", "cassette", "chunk", "claimed", "done", "eof", "family",
                 "gated", "key", "key_address", "kind", "laddr", "last", "listening", "notify",
                 "off", "paced", "parent", "peer", "raddr", "rcvd", "ready", "rec_sent", "recvq",
                 "recvs", "setup", "shut", "sid", "stall", "stalled")

    def __init__(self, cassette: Cassette, sid: int) -> None:
        self.cassette = cassette
        self.sid = sid
        self.family: str | None = None
        self.kind: str | None = None
        self.laddr: Any = None
        self.raddr: Any = None
        self.parent: int | None = None
        self.key: Any = None
        self.key_address: Any = None
        self.claimed = False
        self.done = False  # the code closed it: later records are dropped (sends kept)
        self.recvq: deque[RecvEntry] = deque()
        self.sendq: deque[Record] = deque()
        self.setup: deque[Record] = deque()
        self.acceptq: deque[Record] = deque()
        self.rec_sent = 0  # bytes the recording had sent, so far in the file
        self.sent = 0  # bytes the code has sent
        self.sends = 0  # send calls the code made
        self.recvs = 0  # records delivered
        self.chunk: bytes | None = None  # the head recv's data while partly delivered
        self.off = 0
        self.out: bytes | None = None  # the head send's recorded data while partly matched
        self.out_off = 0
        self.ig_sent = self.ig_rec = b""  # with ignore patterns (sends.py)
        self.ig_recs: list[Record] = []
        self.ig_done = 0
        self.eof = False
        self.last: Record | None = None  # the record the last recv came from
        self.listening = False
        self.ready = False
        self.notify: Callable[[bool], None] | None = None
        self.anchor: tuple[float, float] | None = None
        self.paced: Record | None = None
        # Both ends in the process (pairs.py): recvs wait for the bytes the peer has sent.
        self.gated = False
        self.peer: Stream | None = None
        self.rcvd = 0  # bytes delivered by the slow path (all of a gated stream's)
        self.shut = False  # the code shut down our sending side (or closed us)
        self.stall: threading.Timer | None = None  # past the recording, bytes owed (ends.py)
        self.stalled = False

    def describe(self) -> str:
        if self.listening:
            return f"listener #{self.sid} ({format_addr(self.laddr)})"
        ends = f"{format_addr(self.laddr)} -> {format_addr(self.raddr)}"
        return f"connection #{self.sid} ({self.kind or 'socket'} {ends})"

    # -- set-up -------------------------------------------------------------------------

    def attach(self, notify: Callable[[bool], None]) -> None:
        """Tell ``notify(readable)`` whenever readability changes (now, if readable)."""
        with self.cassette.lock:
            self.notify = notify
            self._update()

    def take_setup(self, ops: Iterable[str]) -> Record | None:
        """The next recorded connect/bind/listen of one of ``ops`` (others skipped)."""
        wanted = frozenset(ops)
        with self.cassette.lock:
            while True:
                while self.setup:
                    rec = self.setup.popleft()
                    if rec["op"] in wanted:
                        return rec
                if self.recvq or self.sendq or self.acceptq or not self.cassette.pull():
                    return None

    def listen(self) -> Record | None:
        """The recorded listen(); from now on readability means an accept is waiting."""
        rec = self.take_setup(("listen",))
        with self.cassette.lock:
            self.listening = True
            if self.laddr is not None:
                self.cassette.listeners.add(self.laddr)
            self._update()
        return rec

    # -- receiving ----------------------------------------------------------------------

    def recv(self, bufsize: int, peek: bool = False, nonblocking: bool = False,
             dgram: bool = False) -> bytes:
        """What the next recv returns: the recorded chunk, or its head if bufsize is smaller."""
        # The hot path (a million calls a second): a whole recorded chunk to a caller whose
        # bufsize takes it. Queue entries are (bytes sent before, the decoded chunk or None
        # when the record needs a closer look, record): see Cassette._file_batch.
        cas = self.cassette
        if cas.speed:
            self._pace_recv()
        lock = cas.lock  # acquire/release: half the cost of a with statement
        lock.acquire()
        try:
            q = self.recvq
            if q and self.chunk is None and not (peek or dgram or self.done or self.gated):
                # The common case first: a whole decoded chunk that bufsize takes.
                sent_before, chunk, rec = q[0]
                if chunk and len(chunk) <= bufsize and not (nonblocking and
                                                            sent_before > self.sent):
                    q.popleft()
                    self.last = rec
                    self.recvs += 1
                    if q:
                        if (q[0][0] <= self.sent) is not self.ready:
                            self._update()
                    else:
                        self._update()
                    return chunk
            if self.done:
                raise OSError(9, os.strerror(9))
            if self.gated and not due(self):
                wait_for_peer(self, nonblocking)
            chunk = self.chunk
            if chunk is None:
                q = self.recvq
                if not q and not self._more(q):
                    return self._exhausted()
                sent_before, chunk, rec = q[0]
                if nonblocking and sent_before > self.sent:
                    raise BlockingIOError(11, os.strerror(11))
                if chunk is None or bufsize <= 0:
                    if bufsize <= 0:
                        return b""
                    chunk = self._special(rec, q)
                self.last = rec
                if (dgram or len(chunk) <= bufsize) and not peek:
                    q.popleft()
                    self.recvs += 1
                    if not chunk:
                        self.eof = True
                    self.rcvd += len(chunk)
                    if q and not self.gated:
                        if (q[0][0] <= self.sent) is not self.ready:
                            self._update()
                    else:
                        self._update()
                    return chunk[:bufsize] if dgram else chunk
                self.chunk = chunk
                self.off = 0
            off = self.off
            out = chunk[off:off + bufsize]
            if peek:
                return out
            off += len(out)
            self.rcvd += len(out)
            if off >= len(chunk):
                self.chunk = None
                self.recvq.popleft()
                self.recvs += 1
                self._update()
            else:
                self.off = off
            return out
        finally:
            lock.release()

    def _more(self, q: deque[Any]) -> bool:
        pull = self.cassette.pull
        while not q:
            if not pull():
                return False
        return True

    def _special(self, rec: Record, q: deque[RecvEntry]) -> bytes:
        """The chunk of a record _file_batch did not decode: it may be an error to raise
        again, a FIN recorded without data, or data that is not base64."""
        if rec.get("data") is not None and "error" not in rec and "truncated" not in rec:
            return self._decode(rec)
        err = rec.get("error")
        if err is not None:
            q.popleft()
            self.recvs += 1
            self._update()
            raise recorded_error(err)
        if rec.get("truncated"):
            raise ReplayError(f"{self.cassette.path}: {self.describe()}: recv seq {rec['seq']} "
                              "was cut short by max_payload when recorded; record again "
                              "without max_payload to replay it")
        if rec.get("nbytes"):
            raise ReplayError(f"{self.cassette.path}: {self.describe()}: recv seq {rec['seq']} "
                              "has no recorded payload, so it cannot be replayed")
        rec["data"] = ""  # a recv of 0 bytes without data: the peer's FIN
        return self._decode(rec)

    def _decode(self, rec: Record) -> bytes:
        try:
            return a2b(rec["data"])
        except (binascii.Error, TypeError):
            raise self.cassette.bad_record(rec, "'data' is not base64 text") from None

    def _exhausted(self) -> bytes:
        if self.eof:
            return b""  # after the peer's FIN, recv keeps returning b''
        cas = self.cassette
        raise ReplayError(f"{cas.path}: {self.describe()}: the code called recv after the "
                          f"{self.recvs} recvs the recording has for it{cas.incomplete()}"
                          f"{owed(self)}; the code reads further than the recorded program did")

    def readable(self) -> bool:
        with self.cassette.lock:
            return self._readable()

    def _readable(self) -> bool:
        if self.done:
            return False
        if self.gated:
            return gated_readable(self)
        if self.listening:
            return bool(self.acceptq) or self._more(self.acceptq)
        if self.chunk is not None:
            return True
        q = self.recvq
        if not q and not self._more(q):
            # The end of the recording: once the code has sent all the recording sent, a
            # recv is past it, and recv says so rather than leave select() hanging; until
            # then the recorded program was still sending (ends.py: the stall timer).
            if self.eof or self.sent >= self.rec_sent or self.stalled:
                return True
            if self.stall is None and self.recvs and self.notify is not None \
                    and not self.cassette.speed:
                arm_stall(self)
            return False
        return bool(q[0][0] <= self.sent)

    def _update(self) -> None:
        notify = self.notify
        if notify is None:
            return
        ready = self._readable()
        if ready is not self.ready:
            self.ready = ready
            notify(ready)

    # -- sending ------------------------------------------------------------------------

    def send(self, data: Any, op: str) -> int:
        """Check what the code sends against the recording; returns the count accepted."""
        if not isinstance(data, bytes):
            data = memoryview(data).cast("B").tobytes()
        with self.cassette.lock:
            if self.done:
                raise OSError(9, os.strerror(9))
            self.sends += 1
            cas = self.cassette
            if cas.check == "strict" or self.kind == "SOCK_DGRAM":
                n = self._send_call(data, op)
            elif cas.ignore is not None and cas.check == "concat":
                n = self._send_ignoring(data)
            else:
                n = self._send_concat(data, op)
            if n and not self.ready:
                self._update()
            if self.peer is not None:
                peer_changed(self)
            return n

    def shutdown(self, how: int) -> None:
        """The code shut down a side: SHUT_WR (1) or SHUT_RDWR (2) is a FIN to a peer."""
        if how in (1, 2):
            with self.cassette.lock:
                self.shut = True
                if self.peer is not None:
                    peer_changed(self)

    # -- listening ----------------------------------------------------------------------

    def accept(self) -> tuple[Stream, Any] | None:
        """The recorded connection the next accept() returns, or None when none is left."""
        cas = self.cassette
        with cas.lock:
            q = self.acceptq
            if not q and not self._more(q):
                return None
            rec = q[0]
        if cas.speed:
            cas.pace(self, rec)
        with cas.lock:
            q.popleft()
            self._update()
            if "error" in rec:
                raise recorded_error(rec["error"])
            child = cas.streams.get(rec.get("accepted", -1))
            if child is None or child.claimed:
                raise cas.bad_record(rec, "accept record names no recorded socket")
            child.claimed = True
            pair_if_loopback(cas, child)
            child.anchor = (cas.clock(), float(rec["t"]) + float(rec.get("dur") or 0.0))
            return child, decode_addr(rec.get("raddr"))

    # -- pacing and teardown ------------------------------------------------------------

    def _pace_recv(self) -> None:
        with self.cassette.lock:
            if self.chunk is not None or (not self.recvq and not self._more(self.recvq)):
                return
            rec = self.recvq[0][2]
            if rec is self.paced:
                return
            self.paced = rec
        self.cassette.pace(self, rec)

    def close(self) -> None:
        with self.cassette.lock:
            self.done = True
            self.shut = True
            self.recvq.clear()
            self.acceptq.clear()
            self.chunk = None
            self.notify = None
            if self.stall is not None:
                self.stall.cancel()
            if self.peer is not None:
                peer_changed(self)

    # -- TLS over memory BIOs (asyncio ssl=; tls.py) --------------------------------------

    def exhausted(self) -> bool:
        """Nothing more to receive: the recording has no further recv for this socket."""
        with self.cassette.lock:
            return self.chunk is None and not self.recvq and not self._more(self.recvq)

    def all_sent(self) -> bool:
        """The code has sent all the bytes the recording sent on this socket."""
        with self.cassette.lock:
            return self._head_send() is None or self.unsent() is None

    def carry_ciphertext(self) -> None:
        """TLS over memory BIOs took this socket over: what it recorded from now on is
        ciphertext, neither replayed nor checked (the BIO object's stream has the
        plaintext); a FIN or an error still ends it. Its readiness is no longer told."""
        with self.cassette.lock:
            if self.ready and self.notify is not None:
                self.notify(False)
            self.ready = False
            self.notify = None
            self.chunk = None
            self.recvq = EndsOnly(e for e in self.recvq if not e[1])
            self.sendq = deque(maxlen=0)
            self.out = None
            self.out_off = 0
