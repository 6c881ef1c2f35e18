"""Turns socket-call facts into trace records and hands them, encoded, to a sink.

This is the I/O-free core of tracing: it never touches a socket. ``sockets.py`` measures
a call and reports what happened; the recorder numbers it (``seq``), stamps it against
its own injected monotonic clock, applies the payload policy (off, capped, redacted)
and writes one JSON line. A lock makes numbering and writing one step, so ``seq`` is
strictly increasing in the file even with many threads.

Tracing must never change the traced program: nothing here raises into a socket
method. If writing fails (disk full, output gone), the recorder warns once on stderr,
stops recording and lets the program run on; everything already written stays.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..errors import stderr_warn
from .compiled import Journal
from .encoding import header_record, json_default, payload_text, unencodable
from .sink import MmapSink, Sink, open_sink

Clock = Callable[[], float]
Warn = Callable[[str], None]

_OPTS = orjson.OPT_APPEND_NEWLINE
_WOULD_BLOCK = frozenset({"BlockingIOError", "SSLWantReadError", "SSLWantWriteError"})
_get_ident = threading.get_ident
# The journal reads CLOCK_MONOTONIC itself to end a call: only right when the recorder's
# clock is time.perf_counter and that is what perf_counter reads.
_PERF_IS_MONOTONIC = (
    time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)")
_dumps = orjson.dumps
_b64 = binascii.b2a_base64


class Recorder:
    """Records socket calls into one trace.

    Build it with :meth:`open` for a file, or pass any :class:`~tracesock.sink.Sink`.
    ``clock`` must be monotonic; ``wall`` gives the epoch time matching the clock's
    zero (it lets captures, stamped in wall time, be joined with calls).

    Two paths write the same records. The compiled journal (``_journal.c``) takes the
    sends and receives of a trace file with the default clock and payload policy (one C
    call each, the GIL as the lock); everything else, and everything without it
    (``compiled=False``, ``TRACESOCK_PURE_PYTHON=1``), goes the Python way below."""

    transfer: Callable[..., None]

    def __init__(
        self,
        sink: Sink,
        *,
        payload: bool = True,
        max_payload: int | None = None,
        redact: Iterable[str] = (),
        argv: Iterable[str] | None = None,
        clock: Clock = time.perf_counter,
        wall: Callable[[], float] = time.time,
        warn: Warn = stderr_warn,
        header: Mapping[str, Any] | None = None,
        fork_sink: Callable[[int], Sink] | None = None,
        compiled: bool | None = None,
    ) -> None:
        if max_payload is not None and max_payload < 0:
            raise ValueError("max_payload must be >= 0")
        self._sink: Sink | None = sink
        self._clock = clock
        self.now = clock  # what sockets.py reads to time a call
        self._warn = warn
        self._lock = threading.Lock()
        self._refill_lock = threading.Lock()
        self._seq = 0
        self._next_id = 0
        self._lost = 0
        self._held: dict[int, dict[str, Any]] = {}  # would-block results being folded
        self.payload = payload
        self.max_payload = max_payload
        self._redact = [re.compile(p.encode("utf-8")) for p in redact]
        self._verbatim = not self._redact and max_payload is None
        if compiled is None:
            compiled = not os.environ.get("TRACESOCK_PURE_PYTHON")
        self._compiled = (compiled and Journal is not None and clock is time.perf_counter
                          and _PERF_IS_MONOTONIC and (self._verbatim or not payload))
        self._journal: Journal | None = None
        self._refill_error: Exception | None = None
        self.transfer = self._transfer_py
        epoch = wall()
        self._t0 = clock()
        head = header_record(epoch, list(sys.argv if argv is None else argv), payload,
                             max_payload, len(self._redact))
        if header:
            head.update(header)
        self._head = head
        self._fork_sink = fork_sink
        self._write_now(orjson.dumps(head, default=json_default, option=_OPTS))
        self._attach_journal()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork_in_child(ref))

    @classmethod
    def open(cls, path: str, **options: Any) -> Recorder:
        """Create ``path`` (mode 0600) and record into it."""
        return cls(open_sink(path), **options)

    # -- identities ---------------------------------------------------------------------

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    @property
    def closed(self) -> bool:
        return self._sink is None

    @property
    def events_written(self) -> int:
        return self._journal.seq if self._journal is not None else self._seq

    @property
    def lost(self) -> int:
        return self._lost + (self._journal.lost if self._journal is not None else 0)

    @property
    def compiled(self) -> bool:
        """Whether the compiled journal is writing this trace's sends and receives."""
        return self._journal is not None

    # -- the compiled journal -----------------------------------------------------------

    def _attach_journal(self) -> None:
        """Hand the trace file's windows to a compiled journal, when there can be one."""
        sink = self._sink
        if not self._compiled or not isinstance(sink, MmapSink):
            return
        window, start, pos = sink.hand_over()
        journal = Journal(self._transfer_py, self._refill, self._t0, self.payload,
                          sink.fileno(), start)
        self._journal = journal  # first: add_window asks _refill for the next window
        journal.add_window(window, pos)
        self.transfer = journal.transfer

    def _refill(self) -> None:
        """The journal asks for the next window (from any thread, maybe while this
        thread holds the lock: so it takes none, and never raises)."""
        # Mapping a window lets other threads run (and maybe ask too): one at a time,
        # and a caller that finds it taken returns (the journal asks again later).
        if not self._refill_lock.acquire(blocking=False):
            return
        try:
            journal, sink = self._journal, self._sink
            if journal is None or not isinstance(sink, MmapSink) or not journal.needs_window:
                return
            if journal.failure:  # the trace's pages could not be had: a full disk...
                # (madvise's EFAULT: populating would have raised SIGBUS, for want of space)
                err = errno.ENOSPC if journal.failure == errno.EFAULT else journal.failure
                raise OSError(err, os.strerror(err))
            window, ready = sink.map_next(journal.waiting)
            journal.add_window(window, 0, ready)
        except Exception as exc:  # a full disk: every later write fails with this
            self._refill_error = exc  # (_put_call raises it)
            if self._journal is not None:
                self._journal.stop()
        finally:
            self._refill_lock.release()

    def _detach_journal(self, sink: Sink) -> None:
        """Close ``sink`` (lock held), through the journal when it has the windows."""
        journal, self._journal = self._journal, None
        self.transfer = self._transfer_py
        if journal is not None and isinstance(sink, MmapSink):
            written, waiting = journal.detach()
            self._seq = journal.seq
            self._lost += journal.lost
            sink.finish(written, waiting)
        else:
            sink.close()

    def _put_call(self, sink: Sink, ev: dict[str, Any]) -> None:
        """Number and write a call record (lock held)."""
        journal = self._journal
        if journal is not None:
            if self._refill_error is not None:
                raise self._refill_error
            ev["seq"] = journal.append_call(_dumps(ev, default=json_default, option=_OPTS))
            return
        ev["seq"] = seq = self._seq + 1
        line = _dumps(ev, default=json_default, option=_OPTS)
        try:
            sink.write(line)
        except ValueError:  # no room left in the sink's window: the slow path
            sink.spill(line)
        self._seq = seq

    def _put_raw(self, sink: Sink, line: bytes) -> None:
        """Write a line that is not a call (lock held)."""
        if self._journal is not None and self._refill_error is None:
            self._journal.append_raw(line)
        else:
            sink.spill(line)

    def note(self, record: dict[str, Any]) -> None:
        """Write a record that is not a call (``entropy``); ``after``: the last call's seq."""
        with self._lock:
            if self._sink is not None:
                try:
                    record["after"] = self.events_written
                    self._put_raw(self._sink, _dumps(record, option=_OPTS))
                except Exception as exc:
                    self._fail(exc)

    # -- building records ---------------------------------------------------------------

    def _call(self, sock: int, op: str, start: float, fields: dict[str, Any]) -> dict[str, Any]:
        """The record of a call that started at ``start`` and ends now (``seq`` is set when
        it is written). ``transfer`` builds the same keys inline: it is the hot path."""
        end = self._clock()
        ev = {
            "type": "call",
            "seq": 0,
            "t": start - self._t0,
            "dur": end - start,
            "sock": sock,
            "op": op,
            "thread": _get_ident(),
        }
        ev.update(fields)
        return ev

    def event(self, sock: int, op: str, start: float, fields: dict[str, Any]) -> None:
        """A call that finished normally. ``fields`` holds op-specific keys."""
        self._emit(self._call(sock, op, start, fields))

    def _transfer_py(
        self, sock: int, op: str, start: float, nbytes: int, data: Any, args: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """``transfer(sock, op, start, nbytes, data, args, extra=None)``: a send/recv that
        moved ``nbytes``; ``data`` is the buffer (or None); ``extra``: more top-level
        fields (``{"tls": True}``). The hot path, kept flat on purpose; with the compiled
        journal, ``transfer`` is the journal's, which calls this for what it leaves."""
        end = self._clock()
        ev: dict[str, Any] = {
            "type": "call",
            "seq": 0,
            "t": start - self._t0,
            "dur": end - start,
            "sock": sock,
            "op": op,
            "thread": _get_ident(),
            "args": args,
            "nbytes": nbytes,
        }
        if extra is not None:
            ev.update(extra)
        if data is not None and self.payload:
            if self._verbatim and type(data) is bytes and len(data) == nbytes:
                ev["data"] = _b64(data, newline=False).decode("ascii")
            else:
                self._add_payload(ev, data, nbytes)
        with self._lock:
            sink = self._sink
            if sink is None:
                self._lost += 1
                return
            if self._held and sock in self._held:
                self._release(sink, sock)
            try:
                self._put_call(sink, ev)
            except Exception as exc:
                self._write_failed(sink, ev, exc)

    def failure(
        self, sock: int, op: str, start: float, exc: BaseException, fields: dict[str, Any]
    ) -> None:
        """A call that raised ``exc`` (the caller re-raises it unchanged)."""
        ev = self._call(sock, op, start, fields)
        err: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        errno = getattr(exc, "errno", None)
        if isinstance(errno, int):
            err["errno"] = errno
        ev["error"] = err
        if err["type"] in _WOULD_BLOCK:
            self._fold(ev)
        else:
            self._emit(ev)

    def _add_payload(self, ev: dict[str, Any], data: Any, nbytes: int) -> None:
        ev["data"], truncated = payload_text(data, nbytes, self._redact, self.max_payload)
        if truncated:
            ev["truncated"] = True

    # -- writing ------------------------------------------------------------------------

    def _emit(self, ev: dict[str, Any]) -> None:
        with self._lock:
            sink = self._sink
            if sink is None:
                self._lost += 1
                return
            if self._held and ev["sock"] in self._held:
                self._release(sink, ev["sock"])
            try:
                self._put_call(sink, ev)
            except Exception as exc:
                self._write_failed(sink, ev, exc)

    # Would-block results (BlockingIOError, SSLWantRead/WriteError) of non-blocking code
    # come in runs: a run of the same op on the same socket is one event, held back
    # until that socket's next call (or the end), then written with its "count" and a
    # "dur" from the first attempt's start to the last one's end.

    def _fold(self, ev: dict[str, Any]) -> None:
        with self._lock:
            if self._sink is None:
                self._lost += 1
                return
            sock = ev["sock"]
            held = self._held.get(sock)
            if held is not None and held["op"] == ev["op"]:
                held["count"] = held.get("count", 1) + 1
                held["dur"] = ev["t"] + ev["dur"] - held["t"]
                return
            if held is not None:
                self._release(self._sink, sock)
            if self._journal is not None:  # before the event is held: the journal's
                self._journal.held = True  # transfers must see it from now on
            self._held[sock] = ev

    def _release(self, sink: Sink, sock: int) -> None:
        """Write the held would-block event of ``sock`` (lock held)."""
        ev = self._held.pop(sock)
        if self._journal is not None and not self._held:
            self._journal.held = False
        try:
            self._put_call(sink, ev)
        except Exception as exc:
            self._write_failed(sink, ev, exc)

    def _write_failed(self, sink: Sink, ev: dict[str, Any], exc: Exception) -> None:
        """Called with the lock held when encoding or writing ``ev`` raised ``exc``."""
        if isinstance(exc, TypeError):  # a value orjson refuses: keep the event, say why
            try:
                plain = unencodable(ev, exc)
                plain["seq"] = 0
                self._put_call(sink, plain)
                return
            except Exception as again:
                exc = again
        self._fail(exc)

    def _write_now(self, line: bytes) -> None:
        assert self._sink is not None
        self._sink.spill(line)

    def _fail(self, exc: BaseException) -> None:
        sink, self._sink = self._sink, None
        self._lost += 1
        if sink is not None:
            with contextlib.suppress(Exception):  # already failing; keep what was written
                self._detach_journal(sink)
        self._warn(f"cannot write the trace any more ({exc}); tracing stopped, "
                   "the program runs on and the trace so far is kept")

    def close(self) -> None:
        """Write the ``end`` record and close the file. Idempotent."""
        with self._lock:
            sink, self._sink = self._sink, None
            if sink is None:
                return
            if self._journal is not None:  # its transfers now wait for this lock, so
                self._journal.stop()  # the end record's count is the last seq
            for sock in list(self._held):
                self._release(sink, sock)
            end = {"type": "end", "t": self._clock() - self._t0, "events": self.events_written,
                   "lost": self.lost}
            try:
                self._put_raw(sink, orjson.dumps(end, option=_OPTS))
            except Exception as exc:
                self._warn(f"cannot finish the trace ({exc})")
            try:
                self._detach_journal(sink)
            except Exception as exc:
                self._warn(f"cannot finish the trace ({exc})")

    def _in_forked_child(self) -> None:
        # The child shares the parent's mapping: writing into it would interleave with
        # the parent's lines. Drop the child's copy (nothing is buffered: every event the
        # parent finished is already in the file, once). With ``fork_sink`` the child
        # goes on in a file of its own, same clock and t0, ids continuing the parent's.
        self._lock = threading.Lock()
        self._refill_lock = threading.Lock()
        self._held = {}  # the parent writes these
        sink, self._sink = self._sink, None
        journal, self._journal = self._journal, None
        self.transfer = self._transfer_py
        if journal is not None:  # let go of the parent's windows, writing nothing
            self._seq = journal.seq
            journal.detach()
        if sink is not None:
            sink.abandon()
        if sink is None or self._fork_sink is None:
            return
        pid = os.getpid()
        head = {**self._head, "pid": pid, "ppid": os.getppid(), "forked": True,
                "id_base": self._next_id, "opened": time.time(), "parent_seq": self._seq}
        try:
            self._sink = self._fork_sink(pid)
            self._seq = self._lost = 0
            self._refill_error = None
            self._write_now(orjson.dumps(head, default=json_default, option=_OPTS))
            self._attach_journal()
        except Exception as exc:
            self._fail(exc)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after_fork_in_child(ref: weakref.ref[Recorder]) -> None:
    rec = ref()
    if rec is not None:
        rec._in_forked_child()
