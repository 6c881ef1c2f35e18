"""Following child processes: ``tracesock run --follow-children``, ``trace(follow_children=True)``,
and replaying them: ``replay(path, follow_children=True)``.

Theory of operation. Every process writes its own file (no two writers ever share
one), and the files are merged into the trace as ``strace -f`` would show it: one
logical trace in which every call carries its ``pid``.

- ``fork()``: the recorder's ``fork_sink`` (recorder.py) gives the child
  ``DIR/PID.jsonl`` with a header naming ``ppid``, ``forked`` and ``id_base`` (the ids
  allocated before the fork: inherited sockets keep them). Events the parent had
  finished are in the parent's file only, so nothing is written twice, and no child
  ever writes into the parent's file.
- Python children started with exec (``subprocess`` running Python, ``multiprocessing``
  with spawn or forkserver): ``TRACESOCK_FOLLOW`` in the environment, and on
  ``PYTHONPATH`` a bootstrap folder whose ``sitecustomize`` starts tracing into
  ``DIR/PID.jsonl`` until the child exits (then imports the program's own
  ``sitecustomize``, if any). Grandchildren inherit both.

Who merges: the last one out. Every traced process registers (``DIR/PID.live``, holding
its start time so that a reused pid is not taken for it) before it writes, and
deregisters when its file is finished; both under an ``flock`` of DIR. The top process
merges, when it finishes, what is finished so far (its own calls and the children that
ended), so that the trace is whole at once in the common case and its exit never waits
for anyone. A process that finishes when no other registered process is alive merges
the rest and removes DIR. A registered process that is gone without deregistering
(SIGKILL, ``os._exit`` in forked children) is finished, not alive: its lines are merged
as they are. If it was the last one, the next reader (``load``, show, stats, replay)
merges: the trace header names DIR (``children``), and a reader that finds DIR with
nobody alive in it does the merge; with somebody alive it warns that the trace is
still being written. A process that registers after DIR was removed (a child still
starting when the others were done, as a daemonising script leaves it) creates DIR
again and is merged into the finished trace when it ends. Per-process files are
removed only after a merge that wrote them.

``merge_files()`` reads the files (a child that ended with ``os._exit`` has no ``end``
line: its lines are kept all the same), puts every call on the top trace's clock
(shifted by the difference of ``epoch``), renumbers socket ids so they are unique in
the trace (inherited ones map to the parent's), interleaves the processes by the time
each call finished and renumbers ``seq``.

Replay (``replay(path, follow_children=True)``): ``TRACESOCK_REPLAY`` and the same
bootstrap make every Python child replay too. A child claims the recorded process it
stands for: the first one, in the order they were started, that its parent (the
recorded process the parent replays) started with exec, whose command line matches
(digits aside: ports and descriptor numbers change from run to run) and that no other
child claimed (``claim-PID`` files, created with O_EXCL, in a folder of the replay).
Each process replays only the records of the process it stands for and of its forked
children, and checks its own sends; a child reports its problems into that folder, and
the replaying top raises them when its block ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from .errors import ReplayError, ReplayMismatch, TracesockError
from .sink import Sink, open_sink

ENV = "TRACESOCK_FOLLOW"
REPLAY_ENV = "TRACESOCK_REPLAY"
BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ID_FIELDS = ("sock", "parent", "accepted", "new", "transport")
_OPTS = orjson.OPT_APPEND_NEWLINE
_IDMAPS = "idmaps.json"  # id maps of processes merged while others still run


@contextlib.contextmanager
def _child_environment(name: str, config: Mapping[str, Any]) -> Iterator[None]:
    """Set ``name`` and put the bootstrap first on PYTHONPATH, for exec'd Python children."""
    saved = {k: os.environ.get(k) for k in (name, "PYTHONPATH")}
    os.environ[name] = json.dumps({**config, "root": _PACKAGE_PARENT,
                                   "python": list(sys.version_info[:2])})
    paths = [BOOTSTRAP]  # tracesock itself is found through "root", only by the bootstrap
    if saved["PYTHONPATH"]:
        paths.append(saved["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _argv() -> list[str]:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(getattr(sys, "argv", []))


def _warn(message: str) -> None:
    sys.stderr.write(f"tracesock: warning: {message}\n")


# -- who is still running ----------------------------------------------------------------


def _stamp(pid: int) -> str | None:
    """When live process ``pid`` started ("" where /proc cannot say); None if it is gone.
    A zombie is gone: it has written all it ever will."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if os.path.exists("/proc/self/stat"):
            return None
    except OSError:
        pass
    else:
        fields = data[data.rfind(b")") + 2:].split()
        if not fields or fields[0] in (b"Z", b"X", b"x"):
            return None
        return fields[19].decode() if len(fields) > 19 else ""
    try:  # no /proc: ask the kernel whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _alive(pid: int, stamp: str) -> bool:
    now = _stamp(pid)
    return now is not None and (not stamp or not now or now == stamp)


@contextlib.contextmanager
def _locked(folder: str, *, create: bool) -> Iterator[bool]:
    """Hold the lock of ``folder`` (True), or yield False when it is gone and not ``create``.

    The merger removes the folder while holding its lock: whoever waited gets the lock
    of a removed folder, sees it, and starts again (on a new folder, when creating)."""
    for _ in range(20):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                yield False
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                st, here = os.stat(folder), os.fstat(fd)
                same = (st.st_ino, st.st_dev) == (here.st_ino, here.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                yield True
                return
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child may hold a copy of fd
            os.close(fd)
    raise OSError(f"cannot lock {folder}: it keeps being removed")


def _registered(folder: str) -> dict[int, str]:
    """pid -> start time of the processes registered in ``folder``."""
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".live") and name[:-5].isdigit():
            try:
                with open(os.path.join(folder, name)) as f:
                    out[int(name[:-5])] = f.read().strip()
            except FileNotFoundError:
                pass
    return out


class Following:
    """The per-process files of one followed trace: registering, finishing, merging."""

    def __init__(self, path: str, folder: str, options: Mapping[str, Any], top: int) -> None:
        self.path = os.path.abspath(path)  # the program may chdir before the merge
        self.dir = folder
        self.options = dict(options)  # payload, max_payload, redact, keylog: for exec'd children
        self.top = top  # the pid of the traced program

    @classmethod
    def create(cls, path: str, options: Mapping[str, Any]) -> Following:
        """For the traced program: a new folder next to ``path``, with this process in it."""
        path = os.path.abspath(path)
        folder = tempfile.mkdtemp(prefix=".tracesock-children-", dir=os.path.dirname(path))
        follow = cls(path, folder, options, os.getpid())
        follow.register(os.getpid())
        return follow

    @classmethod
    def from_environment(cls) -> Following:
        config = json.loads(os.environ[ENV])
        return cls(config["path"], config["dir"], config["options"], config["top"])

    @property
    def header(self) -> dict[str, Any]:
        """What the top trace's header says, so that readers find the folder."""
        return {"children": os.path.basename(self.dir)}

    def register(self, pid: int) -> None:
        """Count ``pid`` among the processes writing files (before it writes)."""
        with _locked(self.dir, create=True):
            live = os.path.join(self.dir, f"{pid}.live")
            with open(live, "w") as f:
                f.write(_stamp(pid) or "")

    def fork_sink(self, pid: int) -> Sink:
        self.register(pid)
        return open_sink(os.path.join(self.dir, f"{pid}.jsonl"))

    def environment(self) -> contextlib.AbstractContextManager[None]:
        """Set the variables that make exec'd Python children trace themselves."""
        return _child_environment(ENV, {"dir": self.dir, "path": self.path, "top": self.top,
                                        "options": self.options})

    def abandon(self) -> None:
        """The trace could not start: nothing to merge."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def leave(self) -> None:
        """This process finished its file: deregister, and merge when it is the top
        process (what is finished so far) or the last one alive (everything)."""
        pid = os.getpid()
        try:
            with _locked(self.dir, create=False) as there:
                if not there:
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, f"{pid}.live"))
                _merge_finished(self.path, self.dir, final_only=pid != self.top)
        except Exception as exc:  # never fail the program's exit: the files are kept
            _warn(f"cannot merge the child processes' traces into {self.path} ({exc}); "
                  f"they are kept in {self.dir}")


def _merge_finished(path: str, folder: str, *, final_only: bool) -> list[int]:
    """Merge the files of the processes no longer running into ``path`` (with the lock
    held); remove the folder when nobody is left. Returns the pids still running."""
    live = [pid for pid, stamp in _registered(folder).items() if _alive(pid, stamp)]
    if live and final_only:
        return live
    names = [n for n in os.listdir(folder)
             if n.endswith(".jsonl") and n[:-6].isdigit() and int(n[:-6]) not in live]
    if os.path.isfile(path):  # (a pipe cannot be rewritten)
        maps_file = os.path.join(folder, _IDMAPS)
        id_maps: dict[int, dict[int, int]] = {}
        if live and os.path.exists(maps_file):
            with open(maps_file, "rb") as f:
                id_maps = {int(k): {int(a): b for a, b in v.items()}
                           for k, v in orjson.loads(f.read()).items()}
        merge_files(path, [os.path.join(folder, n) for n in names], id_maps)
        if live:
            with open(maps_file + ".tmp", "wb") as f:
                f.write(orjson.dumps({str(k): {str(a): b for a, b in v.items()}
                                      for k, v in id_maps.items()}))
            os.replace(maps_file + ".tmp", maps_file)
    if not live:
        shutil.rmtree(folder, ignore_errors=True)
        return live
    for name in names:  # merged: their files and registrations go
        for suffix in (".jsonl", ".live"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name[:-6] + suffix))
    return live


def settle(path: str, name: str) -> tuple[bool, str | None]:
    """For a reader of ``path``, whose header names the children's folder ``name``:
    merge it when every process in it has ended (True), or say which still run."""
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(name))
    if not os.path.isdir(folder):
        return False, None
    try:
        with _locked(folder, create=False) as there:
            if not there:
                return False, None
            live = _merge_finished(os.path.abspath(path), folder, final_only=True)
            if not live:
                return True, None
            who = ", ".join(f"pid {pid}" for pid in sorted(live))
    except OSError as exc:
        return False, (f"{path}: the calls of child processes are still in {folder} and "
                       f"could not be merged ({exc})")
    return False, (f"{path}: the trace is still being written: traced processes still run "
                   f"({who}); their calls are not in it yet (the last one to exit merges them)")


# -- in an exec'd child ---------------------------------------------------------------------


def start_in_child() -> None:
    """Trace this process into the followed trace's folder (called by sitecustomize)."""
    import atexit

    from .patching import socket_class_patched
    from .recorder import Recorder

    follow = Following.from_environment()
    options = dict(follow.options)
    keylog = options.pop("keylog", None)
    pid = os.getpid()
    follow.register(pid)
    stack = contextlib.ExitStack()
    stack.callback(follow.leave)
    try:
        rec = Recorder.open(os.path.join(follow.dir, f"{pid}.jsonl"), argv=_argv(),
                            fork_sink=follow.fork_sink,
                            header={"ppid": os.getppid(), "forked": False}, **options)
    except BaseException:
        stack.close()
        raise
    stack.callback(rec.close)
    stack.enter_context(socket_class_patched(rec, keylog=keylog))
    atexit.register(stack.close)


# -- merging ------------------------------------------------------------------------------


def _read(path: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    with open(path, "rb") as f:
        raw = f.read()
    head: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    end = None
    for line in raw.split(b"\n"):
        if not line or line[0] == 0:
            break
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            break  # a line cut by a kill: the rest is not there
        kind = rec.get("type")
        if kind == "trace":
            head = rec
        elif kind == "call":
            calls.append(rec)
        elif kind == "end":
            end = rec
    return head, calls, end


def merge_files(path: str, children: list[str],
                id_maps: dict[int, dict[int, int]] | None = None) -> None:
    """Merge the per-process files ``children`` into the trace at ``path`` (in place).

    ``path`` is the top process's own trace, or a trace merged before (its calls keep
    their ``pid``, its ``processes`` grow). ``id_maps`` (pid -> its ids in the trace)
    carries the ids of processes merged earlier to their forked children, and is updated.
    """
    top_head, top_calls, top_end = _read(path)
    if not top_head:
        raise OSError(f"{path} has no trace header")
    id_maps = {} if id_maps is None else id_maps
    top = top_head.get("pid", 0)
    epoch = top_head.get("epoch", 0.0)
    next_id = max((c[k] for c in top_calls for k in _ID_FIELDS if isinstance(c.get(k), int)),
                  default=0)
    processes = list(top_head.get("processes") or [])
    if not processes:  # the top's own file: it keeps its ids, its calls get its pid
        for c in top_calls:
            c["pid"] = top
        processes.append({"pid": top, "ppid": top_head.get("ppid"),
                          "argv": top_head.get("argv"), "forked": False, "started": epoch,
                          "events": len(top_calls), "complete": top_end is not None})
    known = {p["pid"] for p in processes}
    streams = [top_calls]
    lost = top_end.get("lost", 0) if top_end else 0
    files = sorted((_read(c) for c in children),
                   key=lambda f: f[0].get("opened", f[0].get("epoch", 0.0)))
    for head, calls, end in files:
        pid = head.get("pid", 0)
        if not head or pid == top:
            continue
        shift = head.get("epoch", epoch) - epoch  # forked children: their parent's epoch
        mapping: dict[int, int] = {}
        base, inherited = 0, {}
        ppid = head.get("ppid", -1)
        if head.get("forked") and (ppid == top or ppid in id_maps):
            # Ids up to id_base were the parent's: they keep the parent's (top: the same).
            base, inherited = head.get("id_base", 0), id_maps.get(ppid, {})
        for c in calls:
            for key in _ID_FIELDS:
                value = c.get(key)
                if not isinstance(value, int):
                    continue
                if value not in mapping:
                    if value <= base:
                        mapping[value] = inherited.get(value, value)
                    else:
                        next_id += 1
                        mapping[value] = next_id
                c[key] = mapping[value]
            c["pid"] = pid
            c["t"] += shift
        id_maps[pid] = mapping
        lost += end.get("lost", 0) if end else 0
        if pid not in known:
            known.add(pid)
            processes.append({"pid": pid, "ppid": ppid, "argv": head.get("argv"),
                              "forked": bool(head.get("forked")),
                              "started": head.get("opened", head.get("epoch")),
                              "events": len(calls),
                              "complete": end is not None})
        streams.append(calls)
    merged = heapq.merge(*streams, key=lambda c: c["t"] + c["dur"])
    header = {**top_head, "processes": processes}
    tmp = path + ".merging"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count = 0
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(header, option=_OPTS))
        for count, c in enumerate(merged, 1):
            c["seq"] = count
            out.write(orjson.dumps(c, option=_OPTS))
        if top_end is not None:
            out.write(orjson.dumps({**top_end, "events": count, "lost": lost}, option=_OPTS))
    os.replace(tmp, path)


# -- replaying ----------------------------------------------------------------------------

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
    for lineno, batch in batches:
        yield lineno, [r for r in batch if not isinstance(r, dict) or r.get("type") != "call"
                       or r.get("pid") in pids]


def _shape(argv: Iterable[str]) -> list[str]:
    # Ports, descriptor numbers and pids change from run to run; the interpreter's path
    # may too (argv[0]). What is left names the program.
    return [re.sub(r"\d+", "#", a) for a in list(argv)[1:]]


def _processes(trace: str) -> list[dict[str, Any]]:
    from .tracefile import TraceReader

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
    processes = _processes(trace)
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


def _report(state: str, message: str) -> None:
    """Tell the replaying program (the first problem of this process only)."""
    sys.stderr.write(f"tracesock: error: {message}\n")
    name = os.path.join(state, f"report-{os.getpid()}.txt")
    with contextlib.suppress(OSError):  # gone: the replay that started us is over
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(message)


class ReplayingChildren:
    """The replaying program's side: what its exec'd Python children need, what they said."""

    def __init__(self, trace: str, pid: int | None, options: Mapping[str, Any]) -> None:
        self.trace = os.path.abspath(trace)
        self.pid = pid
        self.state = tempfile.mkdtemp(prefix="tracesock-replay-")
        self.options = dict(options)

    def environment(self) -> contextlib.AbstractContextManager[None]:
        return _child_environment(REPLAY_ENV, {"trace": self.trace, "state": self.state,
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
            for p in _descendants(_processes(self.trace), self.pid):
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


def start_replay_in_child() -> None:
    """Replay this process from the recording of the child it stands for (called by
    sitecustomize); problems go to stderr and to the replaying program."""
    import atexit

    from .replay import replay

    config = json.loads(os.environ[REPLAY_ENV])
    trace, state = config["trace"], config["state"]
    stack = contextlib.ExitStack()
    me: int | None = None
    try:
        me = claim(trace, int(config["as"]), _argv(), state)
    except ReplayError as exc:
        _report(state, str(exc))
        stack.enter_context(_refusing(trace, str(exc)))  # never the network instead
    else:
        os.environ[REPLAY_ENV] = json.dumps({**config, "as": me})  # for its own children
        stack.enter_context(replay(trace, process=me, **config["options"]))
    atexit.register(_finish_child, stack, state, me)
    hook = sys.excepthook

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, TracesockError):  # a mismatch that ended the child
            _report(state, f"process {os.getpid()} replaying recorded pid {me}: {exc}")
        hook(kind, exc, tb)

    sys.excepthook = excepthook


def _finish_child(stack: contextlib.ExitStack, state: str, me: int | None) -> None:
    try:
        stack.close()
    except TracesockError as exc:
        _report(state, f"process {os.getpid()} replaying recorded pid {me}: {exc}")


@contextlib.contextmanager
def _refusing(trace: str, why: str) -> Iterator[None]:
    """Sockets that match nothing: a child with no recording fails on its first socket."""
    from .cassette import Cassette
    from .patching import socket_class_replaced
    from .replay import ReplaySocket

    cas = Cassette(iter([]), path=f"{trace} (no recorded process for this child: {why[:60]}...)")
    with socket_class_replaced(ReplaySocket.bound_to(cas, stand_in=True)):
        yield
