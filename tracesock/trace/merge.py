"""Merging the per-process files of a trace that followed child processes.

Theory of operation. Every traced process writes its own file (no two writers ever
share one) into a folder next to the trace (``record/children.py`` creates it and
registers processes), and the files are merged into the trace as ``strace -f`` would
show it: one logical trace in which every call carries its ``pid``.

Who merges: the last one out. Every traced process registers (``DIR/PID.live``, holding
its start time so that a reused pid is not taken for it) before it writes, and
deregisters when its file is finished; both under an ``flock`` of DIR. The top process
merges, when it finishes, what is finished so far (its own calls and the children that
ended), so that the trace is whole at once in the common case and its exit never waits
for anyone. A process that finishes when no other registered process is alive merges
the rest and removes DIR. A registered process that is gone without deregistering
(SIGKILL, ``os._exit`` in forked children) is finished, not alive: its lines are merged
as they are. If it was the last one, the next reader (``load``, show, stats, replay)
merges (``settle``): the trace header names DIR (``children``), and a reader that finds
DIR with nobody alive in it does the merge; with somebody alive it warns that the trace
is still being written. Per-process files are removed only after a merge that wrote them.

``merge_files()`` reads the files (a child that ended with ``os._exit`` has no ``end``
line: its lines are kept all the same), puts every call on the top trace's clock
(shifted by the difference of ``epoch``), renumbers socket ids so they are unique in
the trace (inherited ones map to the parent's), interleaves the processes by the time
each call finished and renumbers ``seq``. Entropy records (the program's own random
bytes, record/entropy.py) are kept, with their process's ``pid``, each after the call
its process made before it; each process's header ``entropy`` field goes into its
``processes`` entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import shutil
from collections.abc import Iterator
from typing import Any

import orjson

_ID_FIELDS = ("sock", "parent", "accepted", "new", "transport")
_OPTS = orjson.OPT_APPEND_NEWLINE
_IDMAPS = "idmaps.json"  # id maps of processes merged while others still run


# -- who is still running ----------------------------------------------------------------


def stamp(pid: int) -> str | None:
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


def alive(pid: int, started: str) -> bool:
    now = stamp(pid)
    return now is not None and (not started or not now or now == started)


@contextlib.contextmanager
def locked(folder: str, *, create: bool) -> Iterator[bool]:
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


def registered(folder: str) -> dict[int, str]:
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


def merge_finished(path: str, folder: str, *, final_only: bool) -> list[int]:
    """Merge the files of the processes no longer running into ``path`` (with the lock
    held); remove the folder when nobody is left. Returns the pids still running."""
    live = [pid for pid, started in registered(folder).items() if alive(pid, started)]
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
        with locked(folder, create=False) as there:
            if not there:
                return False, None
            live = merge_finished(os.path.abspath(path), folder, final_only=True)
            if not live:
                return True, None
            who = ", ".join(f"pid {pid}" for pid in sorted(live))
    except OSError as exc:
        return False, (f"{path}: the calls of child processes are still in {folder} and "
                       f"could not be merged ({exc})")
    return False, (f"{path}: the trace is still being written: traced processes still run "
                   f"({who}); their calls are not in it yet (the last one to exit merges them)")


# -- merging ------------------------------------------------------------------------------


def _read(path: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """A process's file: its header, its call and entropy records in order, its end."""
    with open(path, "rb") as f:
        raw = f.read()
    head: dict[str, Any] = {}
    recs: list[dict[str, Any]] = []
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
        elif kind in ("call", "entropy"):
            recs.append(rec)
        elif kind == "end":
            end = rec
    return head, recs, end


def _keyed(recs: list[dict[str, Any]],
           start: float = float("-inf")) -> Iterator[tuple[float, dict[str, Any]]]:
    """The records with the time they are merged by: a call's end; an entropy record
    stays after the call its process made before it (``after``), or at the process's
    ``start`` (on the top's clock) before its first call."""
    key = start
    for rec in recs:
        if rec["type"] == "call":
            key = rec["t"] + rec["dur"]
        yield key, rec


def merge_files(path: str, children: list[str],
                id_maps: dict[int, dict[int, int]] | None = None) -> None:
    """Merge the per-process files ``children`` into the trace at ``path`` (in place).

    ``path`` is the top process's own trace, or a trace merged before (its calls keep
    their ``pid``, its ``processes`` grow). ``id_maps`` (pid -> its ids in the trace)
    carries the ids of processes merged earlier to their forked children, and is updated.
    """
    top_head, top_recs, top_end = _read(path)
    top_calls = [r for r in top_recs if r["type"] == "call"]
    if not top_head:
        raise OSError(f"{path} has no trace header")
    id_maps = {} if id_maps is None else id_maps
    top = top_head.get("pid", 0)
    epoch = top_head.get("epoch", 0.0)
    next_id = max((c[k] for c in top_calls for k in _ID_FIELDS if isinstance(c.get(k), int)),
                  default=0)
    processes = list(top_head.get("processes") or [])
    if not processes:  # the top's own file: it keeps its ids, its records get its pid
        for r in top_recs:
            r["pid"] = top
        processes.append({"pid": top, "ppid": top_head.get("ppid"),
                          "argv": top_head.get("argv"), "forked": False, "started": epoch,
                          "events": len(top_calls), "complete": top_end is not None,
                          **_entropy_of(top_head)})
    known = {p["pid"] for p in processes}
    streams = [_keyed(top_recs)]
    lost = top_end.get("lost", 0) if top_end else 0
    files = sorted((_read(c) for c in children),
                   key=lambda f: f[0].get("opened", f[0].get("epoch", 0.0)))
    for head, recs, end in files:
        pid = head.get("pid", 0)
        seeded = [r for r in recs if r.get("fn") == "random"]  # a forked child's random
        recs = [r for r in recs if r.get("fn") != "random"]
        calls = [r for r in recs if r["type"] == "call"]
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
            c["t"] += shift
        for r in recs:
            r["pid"] = pid
        id_maps[pid] = mapping
        lost += end.get("lost", 0) if end else 0
        if pid not in known:
            known.add(pid)
            processes.append({"pid": pid, "ppid": ppid, "argv": head.get("argv"),
                              "forked": bool(head.get("forked")),
                              "started": head.get("opened", head.get("epoch")),
                              "events": len(calls),
                              "complete": end is not None,
                              **_entropy_of(head, seeded[0]["state"] if seeded else None)})
        streams.append(_keyed(recs, head.get("opened", head.get("epoch", epoch)) - epoch))
    merged = heapq.merge(*streams, key=lambda kr: kr[0])
    header = {**top_head, "processes": processes}
    tmp = path + ".merging"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count = 0
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(header, option=_OPTS))
        for _, rec in merged:
            if rec["type"] == "call":
                count += 1
                rec["seq"] = count
            else:  # entropy: after the last call written (record/entropy.py)
                rec["after"] = count
            out.write(orjson.dumps(rec, option=_OPTS))
        if top_end is not None:
            out.write(orjson.dumps({**top_end, "events": count, "lost": lost}, option=_OPTS))
    os.replace(tmp, path)


def _entropy_of(head: dict[str, Any], seeded: Any = None) -> dict[str, Any]:
    """A process's ``entropy`` header field (its pids, random's state), for ``processes``;
    a forked child's has its own pids, ``random`` as it was reseeded at the fork (its
    ``entropy`` record ``fn: random``, ``seeded``) and ``parent_seq``, which orders the
    forks of one parent."""
    found = head.get("entropy")
    if not isinstance(found, dict):
        return {}
    if not head.get("forked"):
        return {"entropy": found}
    return {"entropy": {"pid": head.get("pid"), "ppid": head.get("ppid"),
                        "clock": found.get("clock", False), "random": seeded,
                        "parent_seq": head.get("parent_seq", 0)}}
