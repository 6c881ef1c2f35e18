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
import datetime
import os
import platform
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from . import events
from .sink import Sink, open_sink

Clock = Callable[[], float]
Warn = Callable[[str], None]

_OPTS = orjson.OPT_APPEND_NEWLINE
_WOULD_BLOCK = frozenset({"BlockingIOError", "SSLWantReadError", "SSLWantWriteError"})
_get_ident = threading.get_ident
_dumps = orjson.dumps
_b64 = binascii.b2a_base64


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"hex": bytes(obj).hex()}
    return repr(obj)


def buffer_len(data: Any) -> int:
    """Bytes in a buffer the program passed (bytes, bytearray, memoryview, array...)."""
    try:
        return len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    except TypeError:
        return 0


def buffer_bytes(data: Any) -> Any:
    """The buffer as bytes or a byte-wise memoryview, for the payload (None if it is not
    a buffer: the call then fails on its own and no payload is recorded)."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B")
    except TypeError:
        return None


def _plain(ev: dict[str, Any], exc: Exception) -> dict[str, Any]:
    keep = ("type", "seq", "t", "dur", "sock", "op", "nbytes")
    out = {k: (v if k in keep else repr(v)) for k, v in ev.items()}
    out["encode_error"] = str(exc)
    return out


def stderr_warn(message: str) -> None:
    """The default warning: one line on stderr, never an exception."""
    try:
        sys.stderr.write(f"tracesock: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


class Recorder:
    """Records socket calls into one trace.

    Build it with :meth:`open` for a file, or pass any :class:`~tracesock.sink.Sink`.
    ``clock`` must be monotonic; ``wall`` gives the epoch time matching the clock's
    zero (it lets captures, stamped in wall time, be joined with calls).
    """

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
    ) -> None:
        if max_payload is not None and max_payload < 0:
            raise ValueError("max_payload must be >= 0")
        self._sink: Sink | None = sink
        self._clock = clock
        self.now = clock  # what sockets.py reads to time a call
        self._warn = warn
        self._lock = threading.Lock()
        self._seq = 0
        self._next_id = 0
        self._lost = 0
        self._held: dict[int, dict[str, Any]] = {}  # would-block results being folded
        self.payload = payload
        self.max_payload = max_payload
        self._redact = [re.compile(p.encode("utf-8")) for p in redact]
        self._verbatim = not self._redact and max_payload is None
        epoch = wall()
        self._t0 = clock()
        head: dict[str, Any] = {
            "type": "trace",
            "format": events.FORMAT,
            "version": events.VERSION,
            "started": datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(),
            "epoch": epoch,
            "pid": os.getpid(),
            "argv": list(sys.argv if argv is None else argv),
            "python": platform.python_version(),
            "platform": sys.platform,
            "payload": payload,
            "max_payload": max_payload,
            "redacted": len(self._redact),
        }
        if header:
            head.update(header)
        self._head = head
        self._fork_sink = fork_sink
        self._write_now(orjson.dumps(head, default=_json_default, option=_OPTS))
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
        return self._seq

    @property
    def lost(self) -> int:
        return self._lost

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

    def transfer(
        self, sock: int, op: str, start: float, nbytes: int, data: Any, args: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """A send/recv that moved ``nbytes``; ``data`` is the buffer (or None); ``extra``
        holds further top-level fields (``{"tls": True}`` on TLS plaintext).

        This is the hot path of tracing (every send and recv), kept flat on purpose.
        """
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
            self._seq = seq = self._seq + 1
            ev["seq"] = seq
            try:
                line = _dumps(ev, default=_json_default, option=_OPTS)
                try:
                    sink.write(line)
                except ValueError:  # no room in the sink's buffer: the slow path
                    sink.spill(line)
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
        raw = bytes(data[:nbytes]) if len(data) != nbytes else bytes(data)
        for pattern in self._redact:
            raw = pattern.sub(lambda m: b"*" * len(m.group()), raw)
        cap = self.max_payload
        if cap is not None and len(raw) > cap:
            raw = raw[:cap]
            ev["truncated"] = True
        ev["data"] = events.encode_data(raw)

    # -- writing ------------------------------------------------------------------------

    def _emit(self, ev: dict[str, Any]) -> None:
        with self._lock:
            sink = self._sink
            if sink is None:
                self._lost += 1
                return
            if self._held and ev["sock"] in self._held:
                self._release(sink, ev["sock"])
            self._seq = seq = self._seq + 1
            ev["seq"] = seq
            try:
                sink.spill(_dumps(ev, default=_json_default, option=_OPTS))
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
            self._held[sock] = ev

    def _release(self, sink: Sink, sock: int) -> None:
        """Write the held would-block event of ``sock`` (lock held)."""
        ev = self._held.pop(sock)
        self._seq = seq = self._seq + 1
        ev["seq"] = seq
        try:
            sink.spill(_dumps(ev, default=_json_default, option=_OPTS))
        except Exception as exc:
            self._write_failed(sink, ev, exc)

    def _write_failed(self, sink: Sink, ev: dict[str, Any], exc: Exception) -> None:
        """Called with the lock held when encoding or writing ``ev`` raised ``exc``."""
        if isinstance(exc, TypeError):  # a value orjson refuses: keep the event, say why
            try:
                sink.spill(orjson.dumps(_plain(ev, exc), option=_OPTS))
                return
            except Exception as again:
                exc = again
        self._seq -= 1
        self._fail(exc)

    def _write_now(self, line: bytes) -> None:
        assert self._sink is not None
        self._sink.spill(line)

    def _fail(self, exc: BaseException) -> None:
        sink, self._sink = self._sink, None
        self._lost += 1
        if sink is not None:
            with contextlib.suppress(Exception):  # already failing; keep what was written
                sink.close()
        self._warn(f"cannot write the trace any more ({exc}); tracing stopped, "
                   "the program runs on and the trace so far is kept")

    def close(self) -> None:
        """Write the ``end`` record and close the file. Idempotent."""
        with self._lock:
            sink, self._sink = self._sink, None
            if sink is None:
                return
            for sock in list(self._held):
                self._release(sink, sock)
            end = {"type": "end", "t": self._clock() - self._t0, "events": self._seq,
                   "lost": self._lost}
            try:
                sink.spill(orjson.dumps(end, option=_OPTS))
                sink.close()
            except Exception as exc:
                self._warn(f"cannot finish the trace ({exc})")

    def _in_forked_child(self) -> None:
        # The child shares the parent's mapping: writing into it would interleave with
        # the parent's lines. Drop the child's copy (nothing is buffered: every event the
        # parent finished is already in the file, once). With ``fork_sink`` the child
        # goes on in a file of its own, same clock and t0, ids continuing the parent's.
        self._lock = threading.Lock()
        self._held = {}  # the parent writes these
        sink, self._sink = self._sink, None
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
            self._write_now(orjson.dumps(head, default=_json_default, option=_OPTS))
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
