"""The program's own nondeterministic inputs, written down as it gets them.

Theory of operation. A replay can only give the recorded answers if the program asks the
same questions, and most real clients put randomness into what they send: multipart
boundaries, nonces, websocket keys, ``uuid4`` request ids. So while tracing, the
program's ``os.urandom`` and ``os.getrandom`` (also ``random.SystemRandom``, ``secrets``
and ``uuid.uuid4``, which call them) and, with ``wall_clock=True``, ``time.time`` and
``time.time_ns`` are the ones built here (patching.py swaps them in): each makes the
real call, hands the program the real value, and writes it down in an ``entropy``
record. Nothing is seeded or faked while recording.

Each record names the thread by the order of its first such call (thread idents change
from run to run; the order in which threads first ask is what replay can match), so
replay gives every thread its own values back in the order it asked for them. The
state of ``random``'s global generator and the process ids go into the header's
``entropy`` field at the start of the block: replay restores the one and answers
``os.getpid()``/``os.getppid()`` with the others. (``random`` is imported with
tracesock, so a program that imports it inside the block gets the generator whose state
was recorded, not one seeded then from the kernel, unseen.) Only the process that
started the trace records, unless the trace follows child processes: then a forked child
records into its own file (its threads numbered afresh, the forking one first), and an
exec'd child records as a process of its own (children.py); the merge keeps each
process's records with its ``pid`` (trace/merge.py). The threads tracesock runs itself
(the capture's sniffer, which stamps every packet with ``time.time()``) are not the
program's: their calls get real values and are not written down.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any

from ..patching import getrandom_args, urandom_size
from ..trace.events import encode_data
from .recorder import Recorder

_urandom = os.urandom
_getrandom: Callable[..., bytes] | None = getattr(os, "getrandom", None)
_getpid = os.getpid
_time = time.time
_time_ns = time.time_ns


def random_state() -> dict[str, Any]:
    """``random``'s global generator state, compact: the Mersenne Twister's 625 words,
    little-endian, base64, and the cached Gaussian."""
    version, words, gauss = random.getstate()
    return {"version": version, "gauss": gauss,
            "words": encode_data(struct.pack(f"<{len(words)}I", *words))}


def header_fields(clock: bool) -> dict[str, Any]:
    """What the header's ``entropy`` field holds for a block starting now."""
    return {"pid": os.getpid(), "ppid": os.getppid(), "random": random_state(),
            "clock": clock}


class EntropyRecorder:
    """The functions swapped in for the block, writing into ``recorder``."""

    def __init__(self, recorder: Recorder, *, clock: bool = False,
                 follow: bool = False, own_threads: Collection[int] = ()) -> None:
        self._rec = recorder
        self._own = own_threads  # tracesock's threads (the sniffer's): never written down
        self._pid = _getpid()
        self._local = threading.local()
        self._next_thread = 0
        self._lock = threading.Lock()
        if follow:  # forked children record too, into their own file (the recorder's)
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forked(ref))
        self.functions: dict[str, Callable[..., Any]] = {"urandom": self.urandom}
        if _getrandom is not None:
            self.functions["getrandom"] = self.getrandom
        if clock:
            self.functions.update(time=self.time, time_ns=self.time_ns)

    def in_forked_child(self) -> None:
        """Number this process's threads afresh (the forking one asks first), and write
        down ``random``'s state: ``random`` reseeds itself from the kernel in a forked
        child (its at-fork hook, which ran before this one). The merge moves it into the
        child's ``processes`` entry (trace/merge.py)."""
        self._pid = _getpid()
        self._own = ()  # none of tracesock's threads here; a new one may reuse an ident
        self._local = threading.local()
        self._next_thread = 0
        self._lock = threading.Lock()
        self._rec.note({"type": "entropy", "fn": "random", "state": random_state()})

    def _note(self, fn: str, fields: dict[str, Any]) -> None:
        if _getpid() != self._pid or threading.get_ident() in self._own:
            return
        thread = getattr(self._local, "thread", None)
        if thread is None:  # a thread's first call (a thread-local: idents are reused)
            with self._lock:
                thread = self._local.thread = self._next_thread
                self._next_thread += 1
        self._rec.note({"type": "entropy", "thread": thread, "fn": fn, **fields})

    def urandom(self, *args: Any, **kwargs: Any) -> bytes:
        size = urandom_size(args, kwargs)
        if size is None:  # what the real one raises, as it raises it: no bytes given
            return _urandom(*args, **kwargs)
        data = _urandom(size)
        self._note("urandom", {"size": size, "data": encode_data(data)})
        return data

    def getrandom(self, *args: Any, **kwargs: Any) -> bytes:
        assert _getrandom is not None
        call = getrandom_args(args, kwargs)
        if call is None:
            return _getrandom(*args, **kwargs)
        data = _getrandom(*call)
        self._note("getrandom", {"size": call[0], "data": encode_data(data)})
        return data

    def time(self) -> float:
        value = _time()
        self._note("time", {"value": value})
        return value

    def time_ns(self) -> int:
        value = _time_ns()
        self._note("time_ns", {"value": value})
        return value


def _forked(ref: weakref.ref[EntropyRecorder]) -> None:
    entropy = ref()
    if entropy is not None:
        entropy.in_forked_child()
