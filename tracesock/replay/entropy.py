"""The program's own nondeterministic inputs, given back as they were recorded.

Theory of operation. A trace recorded with entropy (record/entropy.py) holds what the
program got from ``os.urandom``/``os.getrandom`` (and ``time.time``/``time_ns`` when
recorded with ``wall_clock=True``) as ``entropy`` records, each naming its thread by
the order of that thread's first such call. While replaying, patching.py swaps in the
functions here: the n-th thread to ask gets the recorded values of the n-th recorded
thread, in order. ``random``'s global generator is set to its recorded state when the
block starts. ``os.getpid()``/``os.getppid()`` answer the recorded ids only where the
replay covers the process's whole life (``pids=True``: the CLI, followed children, and
forked children of the block): objects made before the block keep the real pid and
compare it (multiprocessing, fork-detecting pools), so a block that starts mid-life
leaves them real. A forked child's ``getppid()`` is its parent's ``getpid()`` answer,
as long as that parent is its real parent.

In a trace that followed child processes every record carries its process's ``pid``,
and each process's header fields are in its ``processes`` entry (trace/merge.py). A
replay answers for one recorded process (``replay(process=PID)``, which an exec'd child
gets by claiming one: children.py). A process it forks (with ``os.fork``, whose at-fork
hooks this counts) stands for the recorded forked child of the same rank: the n-th fork
of a replayed process is its recorded process's n-th forked child (in the order of the
fork: ``parent_seq``, then when it started), and from then on gets that child's values
from its own copy of the cassette, its threads numbered afresh, and ``random`` set to the
state that child's generator had after reseeding itself at the fork. A fork beyond those
recorded, or of a process that is not replayed, gets real values.

The cassette files entropy records as it reads the trace (its filing loop hands them to
:meth:`EntropyReplay.file`); a thread that asks before its record was read makes the
cassette read on. When the code asks for something else than what was recorded (another
size, another function, or more calls than were recorded), that thread gets fresh real
values from then on, and the replay ends with a ReplayMismatch saying what differed.
"""

from __future__ import annotations

import binascii
import os
import random
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeGuard

from ..errors import TraceFormatError
from ..patching import getrandom_args, urandom_size
from .cassette import Cassette

_urandom = os.urandom
_getrandom: Callable[..., bytes] | None = getattr(os, "getrandom", None)
_getpid = os.getpid
_getppid = os.getppid
_time = time.time
_time_ns = time.time_ns
_STATE_WORDS = 625  # random.getstate()'s: the Mersenne Twister's 624 and its position


def restore_random(state: tuple[Any, ...]) -> None:
    """Set ``random``'s global generator to a state :func:`checked_fields` made."""
    random.setstate(state)


def random_state(where: str, state: Any) -> tuple[Any, ...]:
    """The ``random.setstate`` argument of a recorded state (record/entropy.py), checked;
    TraceFormatError naming ``where`` when it is not one."""
    if not isinstance(state, dict):
        raise TraceFormatError(f"{where}: 'random' must be an object")
    version, words, gauss = state.get("version"), state.get("words"), state.get("gauss")
    if not _is_int(version):
        raise TraceFormatError(f"{where}: 'random.version' must be an integer")
    if gauss is not None and (isinstance(gauss, bool) or not isinstance(gauss, (int, float))):
        raise TraceFormatError(f"{where}: 'random.gauss' must be a number or null")
    raw = _decode(words)
    if raw is None or len(raw) != _STATE_WORDS * 4:
        raise TraceFormatError(f"{where}: 'random.words' must be the base64 of "
                               f"{_STATE_WORDS} 32-bit words")
    mt = struct.unpack(f"<{_STATE_WORDS}I", raw)
    if version != 3 or mt[-1] > _STATE_WORDS - 1:  # what random.setstate takes
        raise TraceFormatError(f"{where}: 'random' is not a version 3 generator state")
    return (version, mt, gauss)


def checked_fields(where: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A header ``entropy`` field (record/entropy.py) with its types checked (as in
    trace/schema.json) and its ``random`` state made ready for ``random.setstate``."""
    out = dict(fields)
    for key in ("pid", "ppid"):
        if key in out and out[key] is not None and not _is_int(out[key]):
            raise TraceFormatError(f"{where}: {key!r} must be an integer, not "
                                   f"{out[key]!r}")
    if "clock" in out and not isinstance(out["clock"], bool):
        raise TraceFormatError(f"{where}: 'clock' must be true or false")
    if "random" in out:
        out["random"] = random_state(where, out["random"])
    return out


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(text: Any) -> bytes | None:
    """Strict base64, or None (a lenient decoder skips what is not base64)."""
    if not isinstance(text, str):
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def recorded_fields(path: str, header: Mapping[str, Any],
                    pid: int | None) -> dict[str, Any] | None:
    """The header ``entropy`` fields of recorded process ``pid`` (its ``processes`` entry's
    in a trace that followed children), checked, or None: recorded without entropy."""
    found: Any = header.get("entropy")
    for p in header.get("processes") or ():
        if isinstance(p, dict) and p.get("pid") == pid:
            found = p.get("entropy")
    if not isinstance(found, dict):
        return None
    return checked_fields(f"{path}:1: header 'entropy'", found)


def checked_processes(path: str, processes: Any) -> list[dict[str, Any]]:
    """A header's ``processes`` entries (trace/merge.py), their ``entropy`` checked."""
    out = []
    for p in processes if isinstance(processes, list) else ():
        if isinstance(p, dict) and isinstance(p.get("entropy"), dict):
            where = f"{path}:1: header 'processes' entry of pid {p.get('pid')}: 'entropy'"
            p = {**p, "entropy": checked_fields(where, p["entropy"])}
        out.append(p)
    return out


class EntropyReplay:
    """The functions swapped in for the block, answering from ``cassette``; in a trace
    that followed children, for recorded process ``process`` (``processes``: them all)."""

    def __init__(self, cassette: Cassette, recorded: Mapping[str, Any],
                 processes: Iterable[Mapping[str, Any]] = (),
                 process: int | None = None, *,
                 pids: bool | Literal["self"] = False) -> None:
        self._cas = cassette
        self._pid = _getpid()  # the process whose recorded values this one gives (or -1)
        # What os.getpid()/getppid() answer: in process _me, _shown (None: the real pid),
        # and while its real parent is _parent[0], _parent[1] (what the parent's answer).
        self._me = self._pid
        self._shown: int | None = None
        self._parent: tuple[int, int] | None = None
        if pids and isinstance(recorded.get("pid"), int):
            self._shown = recorded["pid"]
            if pids is True and isinstance(recorded.get("ppid"), int):
                self._parent = (_getppid(), recorded["ppid"])
        self._processes = list(processes)
        self._as = process if self._processes else None  # the pid its records carry
        self._forks = 0
        self._queues: dict[tuple[int | None, int], deque[dict[str, Any]]] = {}
        self._local = threading.local()
        self._next_thread = 0
        self._diverged: set[int] = set()
        self.mismatches: list[str] = []
        self.functions: dict[str, Callable[..., Any]] = {
            "urandom": self.urandom, "getpid": self.getpid, "getppid": self.getppid}
        if _getrandom is not None:
            self.functions["getrandom"] = self.getrandom
        if recorded.get("clock"):
            self.functions.update(time=self.time, time_ns=self.time_ns)
        cassette.entropy = self
        ref = weakref.ref(self)
        os.register_at_fork(after_in_parent=lambda: _fork(ref, child=False),
                            after_in_child=lambda: _fork(ref, child=True))

    def file(self, rec: dict[str, Any]) -> None:
        """One entropy record, read from the trace (the cassette's filing loop), its
        value checked and decoded (TraceFormatError: the cassette names the line)."""
        problem = self.problem(rec)
        if problem is not None:
            raise TraceFormatError(problem)
        if "thread" not in rec:  # a forked child's random, not merged: nobody asks for it
            return
        key = (rec.get("pid"), rec["thread"])
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(rec)

    @staticmethod
    def problem(rec: dict[str, Any]) -> str | None:
        """What is wrong with an entropy record, or None; decodes its ``data`` into
        ``rec["bytes"]``. A record of a process's ``random`` after a fork (``fn``
        ``random``, no thread) is the merge's business and is left alone."""
        fn = rec.get("fn")
        if fn == "random" and "thread" not in rec:
            return None
        if not _is_int(rec.get("thread")):
            return "entropy record: 'thread' must be an integer"
        if fn in ("urandom", "getrandom"):
            size, data = rec.get("size"), _decode(rec.get("data"))
            if not _is_int(size) or size < 0:
                return f"entropy record: os.{fn}'s 'size' must be an integer >= 0"
            if data is None or len(data) != size:
                return (f"entropy record: os.{fn}({size})'s 'data' must be the base64 of "
                        f"{size} bytes")
            rec["bytes"] = data
        elif fn in ("time", "time_ns"):
            value = rec.get("value")
            if isinstance(value, bool) or not isinstance(
                    value, int if fn == "time_ns" else (int, float)):
                return f"entropy record: time.{fn}'s 'value' must be " \
                    f"{'an integer' if fn == 'time_ns' else 'a number'}"
        return None  # another fn: a call asking for it finds no such record

    def forked(self, child: bool) -> None:
        """After ``os.fork``: the parent counts it; the child stands for the recorded
        forked child of that rank, or gets real values when there is none. Only while
        the replay's block runs (its functions are the ones installed)."""
        if os.getpid != self.getpid:
            return
        if not child:
            if _getpid() == self._pid:
                self._forks += 1
            return
        rank, self._forks = self._forks, 0
        real_parent = _getppid()  # the child's parent is the parent's os.getpid()
        shown = self._shown if self._shown is not None and real_parent == self._me \
            else real_parent
        self._me, self._shown, self._parent = _getpid(), None, (real_parent, shown)
        self._local = threading.local()
        self._next_thread = 0
        self._diverged = set()
        self.mismatches = []
        kids = sorted((p for p in self._processes
                       if p.get("forked") and p.get("ppid") == self._as),
                      key=lambda p: ((p.get("entropy") or {}).get("parent_seq") or 0,
                                     p.get("started") or 0.0))
        if self._as is None or rank >= len(kids):
            self._pid, self._as = -1, None  # nobody's recording: real values, and so
            return                          # for the forks it makes
        self._pid = _getpid()
        self._as = kids[rank]["pid"]
        if isinstance(self._as, int) and self._as != shown:  # its life is all replayed
            self._shown = self._as
        seeded = (kids[rank].get("entropy") or {}).get("random")
        if seeded is not None:  # random reseeded itself in the fork (its own hook)
            restore_random(seeded)

    def _recorded(self, fn: str, size: int | None) -> dict[str, Any] | None:
        """The next recorded answer of this thread, or None (then: a fresh value)."""
        if _getpid() != self._pid:
            return None
        cas = self._cas
        with cas.lock:
            thread = getattr(self._local, "thread", None)
            if thread is None:  # this thread's first call (idents are reused: a local)
                thread = self._local.thread = self._next_thread
                self._next_thread += 1
            if thread in self._diverged:
                return None
            key = (self._as, thread)
            queue = self._queues.get(key)
            try:
                while not queue and cas.pull():
                    queue = self._queues.get(key)
            except TraceFormatError as exc:  # raised at the end too, if the code catches it
                cas.errors.append(exc)
                raise
            asked = f"os.{fn}({size})" if size is not None else f"time.{fn}()"
            if not queue:
                self._diverge(thread, f"the code asked {asked} where the recording had no "
                              f"more such calls in thread {thread}")
                return None
            rec = queue[0]
            if rec.get("fn") != fn or rec.get("size") != size:
                had = (f"os.{rec.get('fn')}({rec.get('size')})" if "size" in rec
                       else f"time.{rec.get('fn')}()")
                self._diverge(thread, f"the code asked {asked} where the recording had "
                              f"{had}, after call seq {rec.get('after')}")
                return None
            queue.popleft()
            return rec

    def _diverge(self, thread: int, what: str) -> None:
        self._diverged.add(thread)
        self.mismatches.append(f"{self._cas.path}: {what} (thread {thread}; it got fresh "
                               "values from then on)")

    def urandom(self, *args: Any, **kwargs: Any) -> bytes:
        size = urandom_size(args, kwargs)
        if size is None:  # raises as the real one does; the recording has no such call
            return _urandom(*args, **kwargs)
        rec = self._recorded("urandom", size)
        return _urandom(size) if rec is None else bytes(rec["bytes"])

    def getrandom(self, *args: Any, **kwargs: Any) -> bytes:
        assert _getrandom is not None
        call = getrandom_args(args, kwargs)
        if call is None:
            return _getrandom(*args, **kwargs)
        rec = self._recorded("getrandom", call[0])
        return _getrandom(*call) if rec is None else bytes(rec["bytes"])

    def time(self) -> float:
        rec = self._recorded("time", None)
        return _time() if rec is None else float(rec["value"])

    def time_ns(self) -> int:
        rec = self._recorded("time_ns", None)
        return _time_ns() if rec is None else int(rec["value"])

    def getpid(self) -> int:
        pid = _getpid()
        return self._shown if self._shown is not None and pid == self._me else pid

    def getppid(self) -> int:
        ppid, parent = _getppid(), self._parent
        if parent is not None and ppid == parent[0] and _getpid() == self._me:
            return parent[1]
        return ppid


def _fork(ref: weakref.ref[EntropyReplay], *, child: bool) -> None:
    entropy = ref()
    if entropy is not None:
        entropy.forked(child)
