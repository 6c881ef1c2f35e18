"""The cassette: a recorded trace as something code can be replayed against.

Theory of operation. A trace is a stream of call records from many sockets,
interleaved. Replay hands each socket the code under test creates one *recorded*
socket (a ``Stream``): the first one, in recorded order, not yet handed out, that
matches how the code set it up (``connect``, ``bind`` or ``sendto``; family, type and
address). Sockets an accept() returned are handed out by their listener's accept
records. From then on the stream answers the code's calls:

* each recv gives exactly what the recorded recv returned (a smaller bufsize gets the
  head of the chunk, the rest comes next, as a kernel would do); a recorded ``b''``,
  reset or timeout comes back at the same point;
* each send is checked against the bytes the recording sent: by default the
  concatenation (send boundaries may differ), ``strict`` call by call, ``off`` not at
  all. A recorded ``send`` that the kernel cut short returns the same count again;
* a stream is *readable* when its next recv is due: the code has sent at least what
  the recording had sent before it. The socket layer mirrors this on a real file
  descriptor so select() and selectors work.

Streaming. The trace is read in batches of lines as the code needs events, and each
record goes into the queue of its stream; memory holds what was read ahead, not the
trace. Records stay the dicts orjson made: a CallEvent per record would cost more
than the whole replay of a recv (the target is a million events a second).

This module does no I/O of its own beyond reading the trace: the clock and sleep are
injected, and the socket layer (replay.py) is told of readiness changes by callback.
"""

from __future__ import annotations

import binascii
import builtins
import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import orjson

from .errors import ReplayError, ReplayMismatch, TraceFormatError, UsageError
from .events import RECV_OPS, SEND_OPS, CallEvent, decode_addr, encode_addr, format_addr
from .tracefile import TraceReader, event_from_record

Record = dict[str, Any]
# A queued recv: (bytes the recording had sent before it, its decoded chunk when it is
# plain (None: an error, a FIN without data, a truncated payload...), the record).
RecvEntry = tuple[int, bytes | None, Record]
Check = Literal["concat", "strict", "off"]
CHECKS: tuple[str, ...] = ("concat", "strict", "off")

_a2b = binascii.a2b_base64
# Recorded results that say "not now" rather than what the peer did: replay makes its
# own (a non-blocking recv that is not due raises BlockingIOError).
_TRANSIENT = frozenset({"BlockingIOError", "InterruptedError"})
_SETUP = frozenset({"connect", "connect_ex", "bind", "listen"})
# Ops whose return value is the kernel's choice: a short count is reproduced.
_COUNTED = frozenset({"send", "sendto", "sendmsg"})
_KEY_OF = {"connect": "connect", "connect_ex": "connect", "bind": "bind", "sendto": "sendto"}
_LOOPBACK = ("127.", "::1", "localhost", "::ffff:127.")
_NO_SID = object()  # no socket id equals it


def recorded_error(err: Any) -> OSError:
    """The exception a recorded ``error`` object describes, ready to raise again."""
    name = str(err.get("type", "")) if isinstance(err, dict) else ""
    code = err.get("errno") if isinstance(err, dict) else None
    message = str(err.get("message", "")) if isinstance(err, dict) else ""
    cls: Any = {"timeout": TimeoutError, "gaierror": socket.gaierror}.get(name)
    if cls is None and name.startswith("SSL"):  # TLS over memory BIOs: SSLWantReadError...
        cls = getattr(ssl, name, None)
        if isinstance(cls, type) and issubclass(cls, OSError) and isinstance(code, int):
            return cls(code, message)
    if cls is None:
        cls = getattr(builtins, name, OSError)
        if not (isinstance(cls, type) and issubclass(cls, OSError)):
            cls = OSError
    if isinstance(code, int):
        exc: OSError = cls(code, os.strerror(code))
        return exc
    return cls(message or name)  # type: ignore[no-any-return]


def address_key(family: Any, address: Any) -> Any:
    """What connects and binds are matched on. Loopback ports are not compared: a
    test server bound to port 0 gets a new port every run."""
    addr = decode_addr(address)
    if family in ("AF_INET", "AF_INET6") and isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0]).lower()
        if host.startswith(_LOOPBACK):
            return ("<loopback>", None)
        return (host, addr[1])
    return addr


def _diff(expected: bytes, e_at: int, actual: bytes, a_at: int) -> str:
    """A short diff: the bytes around the first difference, a caret under it. What
    came before it is the same on both sides (it matched), so it is shown once."""
    head = repr(expected[max(0, e_at - 24):e_at])[:-1]
    exp = head + repr(expected[e_at:e_at + 24])[2:]
    act = head + repr(actual[a_at:a_at + 24])[2:]
    return f"\n  expected: {exp}\n  actual:   {act}\n            {' ' * len(head)}^"


class Stream:
    """One recorded socket as the replay hands it out: what it receives, what it must send."""

    # Slots: recv and the filing loop read these on every event. A plain instance of 30+
    # attributes gets an unshared dict (CPython shares keys up to 29), and each attribute
    # access costs ~2 ns more: ~3% of the replay of a recv. A new attribute goes here too.
    __slots__ = ("acceptq", "anchor", "cassette", "chunk", "claimed", "done", "eof", "family",
                 "key", "key_address", "kind", "laddr", "last", "listening", "notify", "off",
                 "out", "out_off", "paced", "parent", "raddr", "ready", "rec_sent", "recvq",
                 "recvs", "sendq", "sends", "sent", "setup", "sid")

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
        self.eof = False
        self.last: Record | None = None  # the record the last recv came from
        self.listening = False
        self.ready = False
        self.notify: Callable[[bool], None] | None = None
        self.anchor: tuple[float, float] | None = None
        self.paced: Record | None = None

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
            if q and self.chunk is None and not (peek or dgram or self.done):
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
                    if q:
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
            return _a2b(rec["data"])
        except (binascii.Error, TypeError):
            raise self.cassette.bad_record(rec, "'data' is not base64 text") from None

    def _exhausted(self) -> bytes:
        if self.eof:
            return b""  # after the peer's FIN, recv keeps returning b''
        cas = self.cassette
        raise ReplayError(f"{cas.path}: {self.describe()}: the code called recv after the "
                          f"{self.recvs} recvs the recording has for it{cas.incomplete()}; "
                          "the code reads further than the recorded program did")

    def readable(self) -> bool:
        with self.cassette.lock:
            return self._readable()

    def _readable(self) -> bool:
        if self.done:
            return False
        if self.listening:
            return bool(self.acceptq) or self._more(self.acceptq)
        if self.chunk is not None:
            return True
        q = self.recvq
        if not q and not self._more(q):
            return True  # end of recording: let recv say so rather than hang in select
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
            if self.cassette.check == "strict" or self.kind == "SOCK_DGRAM":
                n = self._send_call(data, op)
            else:
                n = self._send_concat(data, op)
            if n and not self.ready:
                self._update()
            return n

    def _head_send(self) -> Record | None:
        q = self.sendq
        if not q and not self._more(q):
            return None
        return q[0]

    def _expected(self, rec: Record) -> bytes:
        out = self.out
        if out is None:
            try:
                out = self.out = _a2b(rec.get("data") or "")
            except (binascii.Error, TypeError):
                raise self.cassette.bad_record(rec, "'data' is not base64 text") from None
        return out

    def _send_concat(self, data: bytes, op: str) -> int:
        check = self.cassette.check != "off"
        total = len(data)
        pos = 0
        while pos < total:
            rec = self._head_send()
            if rec is None:
                if check:
                    raise ReplayMismatch(
                        f"{self.cassette.path}: {self.describe()}: the code sent "
                        f"{total - pos} bytes more than the recording (which sent "
                        f"{self.sent} bytes in all){self.cassette.incomplete()}; first extra "
                        f"bytes: {data[pos:pos + 40]!r}")
                self.sent += total - pos
                return total
            if "error" in rec:
                if pos:
                    return pos
                self.sendq.popleft()
                raise recorded_error(rec["error"])
            expected = self._expected(rec)
            length = rec.get("nbytes") or 0
            k = min(total - pos, length - self.out_off)
            if check:
                known = expected[self.out_off:self.out_off + k]
                if data[pos:pos + len(known)] != known:
                    self._mismatch(rec, expected, data, pos)
            pos += k
            self.out_off += k
            self.sent += k
            if self.out_off >= length:
                self.sendq.popleft()
                self.out = None
                self.out_off = 0
                if op in _COUNTED and rec["op"] in _COUNTED and pos < total:
                    return pos  # the recorded kernel took this much here: a short send
        return total

    def _mismatch(self, rec: Record, expected: bytes, data: bytes, pos: int) -> None:
        i = 0
        known = expected[self.out_off:]
        while i < len(known) and pos + i < len(data) and known[i] == data[pos + i]:
            i += 1
        raise ReplayMismatch(
            f"{self.cassette.path}: {self.describe()}: sent bytes differ from the recording "
            f"at byte {self.sent + i} of the outgoing stream (recorded {rec['op']} seq "
            f"{rec['seq']}, byte {self.out_off + i} of it)"
            + _diff(expected, self.out_off + i, data, pos + i))

    def _send_call(self, data: bytes, op: str) -> int:
        check = self.cassette.check != "off"
        rec = self._head_send()
        where = f"{self.cassette.path}: {self.describe()}: send call #{self.sends}"
        if rec is None:
            if check:
                raise ReplayMismatch(f"{where} ({op} of {len(data)} bytes) has no recorded "
                                     f"counterpart{self.cassette.incomplete()}; first "
                                     f"bytes: {data[:40]!r}")
            self.sent += len(data)
            return len(data)
        if "error" in rec:
            self.sendq.popleft()
            raise recorded_error(rec["error"])
        expected = self._expected(rec)
        length = rec.get("nbytes") or 0
        self.sendq.popleft()
        self.out = None
        n = min(length, len(data)) if op in _COUNTED else len(data)
        if check:
            if op != rec["op"] or (op in _COUNTED and len(data) < length) or \
                    (op not in _COUNTED and len(data) != length):
                raise ReplayMismatch(
                    f"{where} was {op} of {len(data)} bytes; the recording has {rec['op']} "
                    f"of {length} bytes there (seq {rec['seq']})")
            known = expected[:n]
            if data[:len(known)] != known:
                self.out_off = 0
                self._mismatch(rec, expected, data, 0)
        self.sent += n
        return n

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
            self.recvq.clear()
            self.acceptq.clear()
            self.chunk = None
            self.notify = None

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
            self.recvq = _EndsOnly(e for e in self.recvq if not e[1])
            self.sendq = deque(maxlen=0)
            self.out = None
            self.out_off = 0

    def unsent(self) -> ReplayMismatch | None:
        """The recorded bytes the code never sent, as the error to report (or None)."""
        # Sends of other processes (traces that followed children, "pid" on each call)
        # happen in those processes during replay (a forked child has its own copy of
        # the cassette): this process cannot see them, so it does not check them.
        top = self.cassette.pid
        left = [r for r in self.sendq if "error" not in r and r.get("nbytes")
                and r.get("pid", top) == top]
        if not left:
            return None
        off = self.out_off if left[0] is self.sendq[0] else 0
        missing = sum(r.get("nbytes") or 0 for r in left) - off
        rec = left[0]
        head = self._expected(rec)[off:off + 40]
        return ReplayMismatch(
            f"{self.cassette.path}: {self.describe()}: the code sent {self.sent} bytes but "
            f"the recording sent {self.sent + missing}; not sent, from byte {self.sent} "
            f"(recorded {rec['op']} seq {rec['seq']}): {head!r}")


class _EndsOnly(deque[RecvEntry]):
    """The recv queue of a socket that carries TLS records for a memory BIO: ciphertext
    is dropped as it is filed, what ends the stream (a FIN, an error) is kept."""

    def append(self, entry: RecvEntry) -> None:
        if not entry[1]:
            super().append(entry)


class _BatchReader(TraceReader):
    """TraceReader's header checks and end-of-file rules, read a batch of lines at a time.

    One orjson call per batch parses the lines as a JSON array; per-line parsing is the
    fallback that finds the line to blame when the batch does not parse.
    """

    def batches(self, size: int = 1 << 16) -> Iterator[tuple[int, list[Any]]]:
        """(line number of the first record, parsed records) for each batch of lines.
        Records are checked where they are used (Cassette.pull), in the same loop."""
        f = self._file
        lineno = 2
        with f:
            while True:
                lines = f.readlines(size)
                if not lines:
                    break
                cut = lines.pop() if not lines[-1].endswith(b"\n") else None
                try:
                    recs = orjson.loads(b"[" + b",".join(lines) + b"]") if lines else []
                except orjson.JSONDecodeError:
                    recs = self._one_by_one(lines, lineno)
                yield lineno, recs
                lineno += len(lines)
                if cut is not None:
                    stripped = cut.rstrip(b"\0")
                    if stripped.endswith(b"\n"):  # a whole line followed by padding
                        yield lineno, self._one_by_one([stripped], lineno)
                        lineno += 1
                        stripped = b""
                    self._tail(f, lineno, stripped)
                    return

    def _one_by_one(self, lines: list[bytes], lineno: int) -> list[Any]:
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise TraceFormatError(f"{self.path}:{lineno + i}: not valid JSON "
                                       f"({exc})") from None
        return out


def _hot_keys(batch: list[Any]) -> tuple[str, str, str, str, str]:
    """The key names the filing loop looks up, as the very str objects the records use.

    orjson hands out one str object per key name (its key cache) rather than our
    literals; a dict lookup with the identical object skips a string compare: ~5 ns a
    lookup, 30 ns an event. Only speed depends on it: an equal str finds the same entry.
    """
    same: dict[str, str] = {}
    for rec in batch[:1] + batch[-1:]:
        if isinstance(rec, dict):
            same.update((k, k) for k in rec if type(k) is str)
    return (same.get("type", "type"), same.get("seq", "seq"), same.get("sock", "sock"),
            same.get("op", "op"), same.get("data", "data"))


def record_of(ev: CallEvent) -> Record:
    """A CallEvent back in the record form the replay works on."""
    rec: Record = {"type": "call", "seq": ev.seq, "t": ev.t, "dur": ev.dur, "sock": ev.sock,
                   "op": ev.op, "args": dict(ev.args)}
    for name in ("nbytes", "family", "kind", "parent", "fd"):
        value = getattr(ev, name)
        if value is not None:
            rec[name] = value
    if ev.data_b64 is not None:
        rec["data"] = ev.data_b64
    if ev.laddr is not None:
        rec["laddr"] = encode_addr(ev.laddr)
    if ev.raddr is not None:
        rec["raddr"] = encode_addr(ev.raddr)
    if ev.truncated:
        rec["truncated"] = True
    if ev.error is not None:
        rec["error"] = {"type": ev.error.type, "errno": ev.error.errno,
                        "message": ev.error.message}
    rec.update(ev.extra)
    return rec


class Cassette:
    """A trace opened for replay: hands recorded sockets to the code's sockets.

    Build it with :meth:`open` (streams a trace file) or :meth:`from_events`.
    ``speed`` 0 replays instantly; otherwise recorded gaps are slept, divided by
    ``speed``, on the injected ``clock`` and ``sleep``.
    """

    def __init__(self, batches: Iterator[tuple[int, list[Any]]], *, path: str,
                 check: str = "concat",
                 speed: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 reader: TraceReader | None = None) -> None:
        if check not in CHECKS:
            raise UsageError(f"check must be one of {', '.join(CHECKS)}, not {check!r}")
        if speed < 0:
            raise UsageError("the replay speed must be positive")
        self.path = path
        self.check = check
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self.lock = threading.RLock()
        self.streams: dict[int, Stream] = {}
        self.unclaimed: list[Stream] = []
        self.errors: list[BaseException] = []
        self._batches = batches
        self._reader = reader
        self._eof = False
        self._finishing = False
        self._last_seq = -1
        self.final_checks = True
        self.pid = reader.header.pid if reader is not None else None  # the top process
        self._bios: dict[int, deque[Stream]] = {}  # wrap_bio streams by transport socket id

    @classmethod
    def open(cls, path: str, *, process: int | None = None, **options: Any) -> Cassette:
        """Open a trace file for replay (TraceFormatError/ReplayError on bad input).

        In a trace that followed child processes, only the records of ``process``
        (default: the top one) and of its forked children are replayed (children.py)."""
        from .children import only_process

        reader = _BatchReader(path)
        if not reader.header.payload:
            reader.close()
            raise ReplayError(f"{path}: recorded with payload=False: the trace holds sizes "
                              "but not bytes, so it cannot be replayed; record it again "
                              "with payloads (the default)")
        try:
            batches, pid = only_process(path, reader.header, reader.batches(), process)
        except BaseException:
            reader.close()
            raise
        cas = cls(batches, path=path, reader=reader, **options)
        cas.pid = pid
        return cas

    @classmethod
    def from_events(cls, evs: Iterable[CallEvent], *, path: str = "<events>",
                    **options: Any) -> Cassette:
        """A cassette over events already loaded (``Trace.events``, a Connection's)."""
        recs = [record_of(ev) for ev in sorted(evs, key=lambda e: e.seq)]
        return cls(iter([(1, recs)]), path=path, **options)

    @property
    def warnings(self) -> list[str]:
        return self._reader.warnings if self._reader is not None else []

    def incomplete(self) -> str:
        if self._eof and self._reader is not None and self._reader.end is None:
            return " (the trace is incomplete: " + "; ".join(self._reader.warnings) + ")"
        return ""

    def bad_record(self, rec: Record, what: str) -> TraceFormatError:
        return TraceFormatError(f"{self.path}: seq {rec.get('seq')}: {what}")

    # -- reading ahead ------------------------------------------------------------------

    def pull(self) -> bool:
        """Read, check and file one more batch of records; False at the end of the trace."""
        if self._eof:
            return False
        item = next(self._batches, None)
        if item is None:
            self._eof = True
            if self._reader is not None and self._reader.end is None:
                self._reader.warnings.append(f"{self.path}: no end record: the traced "
                                             "process did not finish the trace (killed?)")
            return False
        lineno, batch = item
        try:
            self._file_batch(batch)
        except (KeyError, TypeError, AttributeError, TraceFormatError):
            raise self._blame(lineno, batch) from None
        return True

    def _file_batch(self, batch: list[Any]) -> None:
        # The hot loop: one pass checks each record just enough (a malformed one raises
        # here and _blame() names its line) and puts it in its stream's queue.
        streams = self.streams
        last = self._last_seq
        finishing = self._finishing
        k_type, k_seq, k_sock, k_op, k_data = _hot_keys(batch)
        # Records come in runs on one socket: its Stream is looked up once per run.
        sid_now: Any = _NO_SID
        st = None
        for rec in batch:
            if rec[k_type] != "call":
                if rec[k_type] == "end" and self._reader is not None:
                    self._reader.end = rec
                continue
            seq = rec[k_seq]
            if seq <= last:
                raise TypeError("seq")
            last = seq
            sid = rec[k_sock]
            if st is None or sid != sid_now:
                st = streams.get(sid)
                if st is None:
                    st = streams[sid] = Stream(self, sid)
                sid_now = sid
            op = rec[k_op]
            if op in RECV_OPS:
                if st.done or finishing:
                    continue
                # What Stream.recv needs, found here once: a plain record's chunk, or None
                # to make recv look closer (errors, truncated payloads, FIN without data,
                # data that is not base64: recv raises what it did).
                if "error" in rec:
                    err = rec["error"]
                    if err is not None and err["type"] in _TRANSIENT:
                        continue
                    chunk = None
                elif "truncated" in rec:
                    chunk = None
                else:
                    try:
                        chunk = _a2b(rec[k_data])
                    except (KeyError, ValueError, TypeError):
                        chunk = None
                st.recvq.append((st.rec_sent, chunk, rec))
            elif op in SEND_OPS:
                err = rec.get("error")
                if err is not None:
                    if err["type"] in _TRANSIENT:
                        continue
                else:
                    st.rec_sent += rec.get("nbytes") or 0
                if op == "sendto" and st.key is None:
                    self._key(st, rec)
                if not finishing or st.claimed:
                    st.sendq.append(rec)
            else:
                event_from_record(self.path, 0, rec)  # rare ops: the full checks
                if not st.done and not finishing:
                    self._file_other(st, rec, op)
        self._last_seq = last

    def _blame(self, lineno: int, batch: list[Any]) -> TraceFormatError:
        """The error naming the first bad record of a batch that did not file."""
        last = self._last_seq
        for i, rec in enumerate(batch):
            where = f"{self.path}:{lineno + i}"
            if not isinstance(rec, dict):
                return TraceFormatError(f"{where}: a trace line must be a JSON object")
            if "type" not in rec:
                return TraceFormatError(f"{where}: record has no 'type' field")
            if rec["type"] != "call":
                continue
            try:
                ev = event_from_record(self.path, lineno + i, rec)
            except TraceFormatError as exc:
                return exc
            if ev.seq <= last:
                return TraceFormatError(f"{where}: seq {ev.seq} does not follow {last} (seq "
                                        "must increase strictly)")
            last = ev.seq
            err = rec.get("error")
            if err is not None and not isinstance(err.get("type"), str):
                return TraceFormatError(f"{where}: 'error' lacks its 'type'")
        return TraceFormatError(f"{self.path}:{lineno}-{lineno + len(batch) - 1}: a malformed "
                                "record")

    def _file_other(self, st: Stream, rec: Record, op: str) -> None:
        if op == "socket":
            st.family = rec.get("family", st.family)
            st.kind = rec.get("kind", st.kind)
            st.parent = rec.get("parent", st.parent)
            if rec.get("laddr") is not None:
                st.laddr = decode_addr(rec["laddr"])
            if rec.get("raddr") is not None:
                st.raddr = decode_addr(rec["raddr"])
        elif op in _SETUP:
            st.setup.append(rec)
            if rec.get("laddr") is not None:
                st.laddr = decode_addr(rec["laddr"])
            if rec.get("raddr") is not None:
                st.raddr = decode_addr(rec["raddr"])
            elif op in ("connect", "connect_ex") and "error" not in rec:
                st.raddr = decode_addr(rec.get("args", {}).get("address"))
            if op in _KEY_OF and st.key is None:
                self._key(st, rec)
        elif op == "accept":
            st.acceptq.append(rec)
            if st.notify is not None and not st.ready:  # no _update(): it may pull
                st.ready = True
                st.notify(True)
        elif op == "wrap_bio" and isinstance(rec.get("transport"), int):
            self._bios.setdefault(rec["transport"], deque()).append(st)

    def _key(self, st: Stream, rec: Record) -> None:
        if st.parent is not None:
            return
        address = rec.get("args", {}).get("address")
        st.key = (_KEY_OF[rec["op"]], st.family, st.kind, address_key(st.family, address))
        st.key_address = decode_addr(address)
        if not st.claimed:
            self.unclaimed.append(st)

    # -- handing out streams ------------------------------------------------------------

    def take(self, sid: int) -> Stream:
        """Claim recorded socket ``sid`` directly (ReplaySocket.from_connection)."""
        with self.lock:
            while sid not in self.streams and self.pull():
                pass
            st = self.streams.get(sid)
            if st is None or st.claimed:
                raise ReplayError(f"{self.path}: no unclaimed recorded socket #{sid}")
            if st in self.unclaimed:
                self.unclaimed.remove(st)
            st.claimed = True
            st.anchor = (self.clock(), 0.0)
            return st

    def claim(self, how: str, family: str, kind: str, address: Any) -> Stream:
        """The first unclaimed recorded socket set up the same way (ReplayError if none)."""
        key = (how, family, kind, address_key(family, address))
        with self.lock:
            seen = 0
            while True:
                for st in self.unclaimed[seen:]:
                    if st.key == key:
                        self.unclaimed.remove(st)
                        st.claimed = True
                        first = st.setup[0] if st.setup else (st.sendq[0] if st.sendq else None)
                        t0 = float(first["t"]) if first is not None else 0.0
                        st.anchor = (self.clock(), t0)
                        return st
                seen = len(self.unclaimed)
                if not self.pull():
                    break
            left = ", ".join(f"#{s.sid} {s.key[0]} {format_addr(s.key_address)} "
                             f"({s.key[1]}, {s.key[2]})" for s in self.unclaimed[:6]) or "none"
            err = ReplayError(
                f"{self.path}: no recorded connection matches {how} to "
                f"{format_addr(decode_addr(address))} ({family}, {kind}); recorded sockets "
                f"not yet used: {left}. Replay never reaches the network: record this "
                "exchange again")
            self.errors.append(err)
            raise err

    def tls_over(self, transport: Stream) -> Stream:
        """The recorded TLS-over-memory-BIO object (asyncio ``ssl=``) whose ``wrap_bio``
        named ``transport``: its reads and writes are that connection's plaintext."""
        with self.lock:
            while not self._bios.get(transport.sid):
                if not self.pull():
                    err = ReplayError(
                        f"{self.path}: {transport.describe()}: the code does TLS over memory "
                        "BIOs (asyncio ssl=) on this connection, but no recorded wrap_bio "
                        "names it as its transport (a wrap_bio whose transport is null cannot "
                        "be replayed); record this exchange again")
                    self.errors.append(err)
                    raise err
            bio = self._bios[transport.sid].popleft()
            bio.claimed = True
            bio.anchor = transport.anchor
            bio.family, bio.kind = transport.family, transport.kind
            bio.laddr = transport.laddr
            # asyncio's connect is recorded as EINPROGRESS: its address is the key's
            bio.raddr = transport.raddr if transport.raddr is not None else transport.key_address
            return bio

    def resolve(self, port: int) -> list[tuple[str, str, Any]]:
        """Recorded connect addresses to ``port`` not yet used: (family, kind, address),
        up to the first that connected (a hostname resolves through the recording)."""
        found: list[tuple[str, str, Any]] = []
        with self.lock:
            seen = 0
            while True:
                for st in self.unclaimed[seen:]:
                    rec = next((r for r in st.setup if r["op"] in _KEY_OF), None)
                    if st.key[0] != "connect" or rec is None:
                        continue
                    addr = decode_addr(rec.get("args", {}).get("address"))
                    if not isinstance(addr, tuple) or len(addr) < 2 or addr[1] != port:
                        continue
                    found.append((str(st.family), str(st.kind), addr))
                    if "error" not in rec and not rec.get("result"):
                        return found
                seen = len(self.unclaimed)
                if not self.pull():
                    return found

    # -- pacing -------------------------------------------------------------------------

    def pace(self, st: Stream, rec: Record) -> None:
        """Sleep until the recorded moment ``rec`` finished, relative to the stream's start."""
        anchor = st.anchor
        if anchor is None or not self.speed:
            return
        target = anchor[0] + (float(rec["t"]) + float(rec.get("dur") or 0.0) - anchor[1]) \
            / self.speed
        delay = target - self.clock()
        if delay > 0:
            self.sleep(delay)

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> None:
        """End of replay: raise what went wrong unseen (errors caught by the code, bytes
        recorded as sent that the code never sent), then close."""
        try:
            if not self.final_checks:
                return
            if self.errors:
                first = self.errors[0]
                raise type(first)(f"{first} (raised during replay and caught by the code)")
            if self.check != "off":
                with self.lock:
                    self._finishing = True
                    while self.pull():
                        pass
                    for st in self.streams.values():
                        problem = st.unsent() if st.claimed else None
                        if problem is not None:
                            raise problem
        finally:
            self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._eof = True
