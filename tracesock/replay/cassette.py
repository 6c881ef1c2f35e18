"""The cassette: a recorded trace as something code can be replayed against.

Theory of operation. A trace is a stream of call records from many sockets,
interleaved. Replay hands each socket the code under test creates one *recorded*
socket (a ``Stream``, streams.py): the first one, in recorded order, not yet handed
out, that matches how the code set it up (``connect``, ``bind`` or ``sendto``; family,
type and address). Sockets an accept() returned are handed out by their listener's
accept records.

Streaming. The trace is read in batches of lines as the code needs events, and each
record goes into the queue of its stream; memory holds what was read ahead, not the
trace. Records stay the dicts orjson made (records.py).

This module does no I/O of its own beyond reading the trace: the clock and sleep are
injected, and the socket layer (sockets.py) is told of readiness changes by callback.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..errors import ReplayError, TraceFormatError, UsageError
from ..trace.batches import BatchReader
from ..trace.events import RECV_OPS, SEND_OPS, CallEvent, decode_addr, format_addr
from ..trace.reader import TraceReader, check_record, event_from_record
from .children import only_process
from .ignoring import Ignoring
from .pairs import gate_if_own_listener
from .records import (
    CHECKS,
    KEY_OF,
    NO_SID,
    SETUP_OPS,
    TRANSIENT,
    Record,
    a2b,
    address_key,
    hot_keys,
    record_of,
)
from .streams import Stream


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
                 reader: TraceReader | None = None,
                 ignore: Iterable[str | bytes] | None = None) -> None:
        if check not in CHECKS:
            raise UsageError(f"check must be one of {', '.join(CHECKS)}, not {check!r}")
        if speed < 0:
            raise UsageError("the replay speed must be positive")
        self.path = path
        self.check = check
        self.ignore = Ignoring(ignore) if ignore else None  # patterns blanked in sends
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self.lock = threading.RLock()
        self.turn = threading.Condition(self.lock)  # a gated recv waits on it (pairs.py)
        # A forked child replays from its copy: the lock must not be copied held by a
        # thread that does not exist there (a forking server's other threads).
        ref = weakref.ref(self)
        os.register_at_fork(before=lambda: _fork_lock(ref, "acquire"),
                            after_in_parent=lambda: _fork_lock(ref, "release"),
                            after_in_child=lambda: _fork_lock(ref, "release"))
        self.listeners: set[Any] = set()  # recorded addresses the code listens on
        self.streams: dict[int, Stream] = {}
        self.unclaimed: list[Stream] = []
        self.errors: list[BaseException] = []
        self._batches = batches
        self._reader = reader
        self._eof = False
        self._finishing = False
        self.ended = False  # the replay block is over: no stall timer is armed (ends.py)
        self._last_seq = -1
        self.final_checks = True
        self.pid = reader.header.pid if reader is not None else None  # the top process
        self._bios: dict[int, deque[Stream]] = {}  # wrap_bio streams by transport socket id
        self.header_extra: Mapping[str, Any] = reader.header.extra if reader else {}
        self.entropy: Any = None  # what files entropy records, when they are given back

    @classmethod
    def open(cls, path: str, *, process: int | None = None, **options: Any) -> Cassette:
        """Open a trace file for replay (TraceFormatError/ReplayError on bad input).

        In a trace that followed child processes, only the records of ``process``
        (default: the top one) and of its forked children are replayed (children.py)."""
        reader = BatchReader(path)
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
        try:
            cas = cls(batches, path=path, reader=reader, **options)
        except BaseException:  # bad options (check, ignore): the file is not left open
            reader.close()
            raise
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
            if self._reader is not None:
                self._reader.finished()
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
        k_type, k_seq, k_sock, k_op, k_data = hot_keys(batch)
        # Records come in runs on one socket: its Stream is looked up once per run.
        sid_now: Any = NO_SID
        st = None
        for rec in batch:
            if rec[k_type] != "call":
                if rec[k_type] == "entropy" and self.entropy is not None:
                    self.entropy.file(rec)  # the program's own inputs (entropy.py)
                elif rec[k_type] == "end" and self._reader is not None:
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
                    if err is not None and err["type"] in TRANSIENT:
                        continue
                    chunk = None
                elif "truncated" in rec:
                    chunk = None
                else:
                    try:
                        chunk = a2b(rec[k_data])
                    except (KeyError, ValueError, TypeError):
                        chunk = None
                st.recvq.append((st.rec_sent, chunk, rec))
            elif op in SEND_OPS:
                err = rec.get("error")
                if err is not None:
                    if err["type"] in TRANSIENT:
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
            try:
                ev = check_record(self.path, lineno + i, rec, last)
            except TraceFormatError as exc:
                return exc
            if ev is None:
                if rec["type"] == "entropy" and self.entropy is not None:
                    problem = self.entropy.problem(rec)
                    if problem is not None:
                        return TraceFormatError(f"{where}: {problem}")
                continue
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
        elif op in SETUP_OPS:
            st.setup.append(rec)
            if rec.get("laddr") is not None:
                st.laddr = decode_addr(rec["laddr"])
            if rec.get("raddr") is not None:
                st.raddr = decode_addr(rec["raddr"])
            elif op in ("connect", "connect_ex") and "error" not in rec:
                st.raddr = decode_addr(rec.get("args", {}).get("address"))
            if op in KEY_OF and st.key is None:
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
        st.key = (KEY_OF[rec["op"]], st.family, st.kind, address_key(st.family, address))
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
                        if how == "connect":
                            gate_if_own_listener(self, st)
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
                    rec = next((r for r in st.setup if r["op"] in KEY_OF), None)
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
        """The end of the replay block: its streams' stall timers (ends.py) are stopped,
        so none outlives it for a socket the code left open."""
        with self.lock:
            self.ended = True
            timers = [st.stall for st in self.streams.values() if st.stall is not None]
            for timer in timers:
                timer.cancel()
        for timer in timers:  # outside the lock: a firing timer takes it
            if timer.is_alive() and timer is not threading.current_thread():
                timer.join()
        if self._reader is not None:
            self._reader.close()
        self._eof = True


def _fork_lock(ref: weakref.ref[Cassette], how: str) -> None:
    """Around ``os.fork``: the forking thread holds the lock, in the parent and the child."""
    cas = ref()
    if cas is not None:
        getattr(cas.lock, how)()
