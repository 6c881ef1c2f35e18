"""Replaying child processes, the replaying program's side: ``replay(path, follow_children=True)``.

Theory of operation. ``TRACESOCK_REPLAY`` and the bootstrap (patching.py) make every
Python child replay too (``child.py`` is the child's side). A child claims the recorded
process it stands for: the first one, in the order they were started, that its parent
(the recorded process the parent replays) started with exec, whose command line matches
(digits aside: ports and descriptor numbers change from run to run) and that no other
child claimed (``claim-PID`` files, created with O_EXCL, in a folder of the replay).
Each process replays only the records of the process it stands for and of its forked
children (``only_process``), and checks its own sends; a child reports its problems
into that folder, and the replaying top raises them when its block ends (``finish``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import ReplayError, ReplayMismatch
from ..patching import child_environment
from ..trace.reader import TraceReader

REPLAY_ENV = "TRACESOCK_REPLAY"

Batches = Iterator[tuple[int, list[Any]]]


def scope(processes: Iterable[Mapping[str, Any]], pid: int | None) -> frozenset[int]:
    """``pid`` and its forked descendants: the recorded processes one replay answers for
    (forked children replay from their copy of their parent's cassette)."""
    kids: dict[Any, list[int]] = {}
    for p in processes:
        if p.get("forked"):
            kids.setdefault(p.get("ppid"), []).append(p["pid"])
    out, todo = {pid}, [pid]
    while todo:
        for kid in kids.get(todo.pop(), ()):
            if kid not in out:
                out.add(kid)
                todo.append(kid)
    return frozenset(p for p in out if p is not None)


def only_process(path: str, header: Any, batches: Batches,
                 process: int | None) -> tuple[Batches, int | None]:
    """The batches of records recorded process ``process`` (default: the top one) and its
    forked children made, and that pid; a trace without children: all of them."""
    processes = header.extra.get("processes")
    pid = header.pid if process is None else process
    if not processes:
        if pid != header.pid:
            raise ReplayError(f"{path}: the trace holds one process, pid {header.pid}, "
                              f"not pid {process}")
        return batches, pid
    if pid not in {p.get("pid") for p in processes}:
        known = ", ".join(str(p.get("pid")) for p in processes)
        raise ReplayError(f"{path}: no recorded process has pid {pid} (recorded: {known})")
    return _only(batches, scope(processes, pid)), pid


def _only(batches: Batches, pids: frozenset[int]) -> Batches:
    for lineno, batch in batches:  # calls and entropy records carry their process's pid
        yield lineno, [r for r in batch if not isinstance(r, dict)
                       or r.get("type") not in ("call", "entropy") or r.get("pid") in pids]


def _shape(argv: Iterable[str]) -> list[str]:
    # Ports, descriptor numbers and pids change from run to run; the interpreter's path
    # may too (argv[0]). What is left names the program.
    return [re.sub(r"\d+", "#", a) for a in list(argv)[1:]]


def processes_of(trace: str) -> list[dict[str, Any]]:
    reader = TraceReader(trace)
    reader.close()
    return list(reader.header.extra.get("processes") or [])


def _descendants(processes: list[dict[str, Any]], pid: int) -> list[dict[str, Any]]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for p in processes:
            if p.get("ppid") == parent and p["pid"] != pid and p not in found:
                found.append(p)
                todo.append(p["pid"])
    return found


def claim(trace: str, parent: int, argv: list[str], state: str) -> int:
    """The recorded process this exec'd child stands for: the first child of ``parent``
    (or of its forked children), in the order they started, with the same command line
    (digits aside) that no other child claimed."""
    processes = processes_of(trace)
    family = scope(processes, parent)
    started = sorted((p for p in processes if not p.get("forked") and p.get("ppid") in family
                      and p["pid"] not in family), key=lambda p: p.get("started") or 0.0)
    shape = _shape(argv)
    for p in started:
        if _shape(p.get("argv") or []) != shape:
            continue
        try:
            os.close(os.open(os.path.join(state, f"claim-{p['pid']}"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        return int(p["pid"])
    recorded = "; ".join(f"pid {p['pid']}: {shlex.join(p.get('argv') or [])}"
                         for p in started) or "none"
    raise ReplayError(
        f"{trace}: Python child process {os.getpid()} ({shlex.join(argv)}) matches no "
        f"recorded child of pid {parent} left to replay (children are matched in the order "
        f"they started, on their command line, digits aside); recorded: {recorded}")



class ReplayingChildren:
    """The replaying program's side: what its exec'd Python children need, what they said."""

    def __init__(self, trace: str, pid: int | None, options: Mapping[str, Any]) -> None:
        self.trace = os.path.abspath(trace)
        self.pid = pid
        self.state = tempfile.mkdtemp(prefix="tracesock-replay-")
        self.options = dict(options)

    def environment(self) -> contextlib.AbstractContextManager[None]:
        return child_environment(REPLAY_ENV, {"trace": self.trace, "state": self.state,
                                               "as": self.pid, "options": self.options})

    def finish(self) -> None:
        """Raise what went wrong in a child, or a recorded child the replay never started."""
        try:
            reports = sorted(n for n in os.listdir(self.state) if n.startswith("report-"))
            if reports:
                with open(os.path.join(self.state, reports[0])) as f:
                    first = f.read()
                more = f" (and {len(reports) - 1} more child processes failed)" \
                    if len(reports) > 1 else ""
                raise ReplayError(f"in a child process: {first}{more}")
            if self.pid is None:
                return
            for p in _descendants(processes_of(self.trace), self.pid):
                if not p.get("forked") and p.get("events") and not os.path.exists(
                        os.path.join(self.state, f"claim-{p['pid']}")):
                    raise ReplayMismatch(
                        f"{self.trace}: recorded child process {p['pid']} "
                        f"({shlex.join(p.get('argv') or [])}) made {p['events']} socket "
                        "calls, but no such Python child was started during the replay")
        finally:
            self.close()

    def close(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
