"""Following child processes: ``tracesock run --follow-children``, ``trace(follow_children=True)``.

Theory of operation. Every process writes its own file (no two writers ever share
one); at the end the top process merges them into its trace, as ``strace -f`` would
show it: one logical trace in which every call carries its ``pid``.

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

``merge()`` reads the files (a child that ended with ``os._exit``, as forked
``multiprocessing`` and ``socketserver`` children do, has no ``end`` line: its lines
are kept all the same), puts every call on the top trace's clock (forked children share
it; exec'd ones are shifted by the difference of their ``epoch``), renumbers socket ids
so they are unique in the trace (inherited ones map to the parent's), interleaves the
processes by the time each call finished and renumbers ``seq``. Children still running
when the top process ends are cut where they are.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import orjson

from .sink import Sink, open_sink

ENV = "TRACESOCK_FOLLOW"
BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ID_FIELDS = ("sock", "parent", "accepted", "new", "transport")
_OPTS = orjson.OPT_APPEND_NEWLINE


class Following:
    """The per-process files of one followed trace, and how children find them."""

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self.path = os.path.abspath(path)  # the program may chdir before the merge
        self.dir = tempfile.mkdtemp(prefix=".tracesock-children-",
                                    dir=os.path.dirname(self.path))
        self.options = options  # payload, max_payload, redact, keylog: for exec'd children
        self.pid = os.getpid()  # only this process merges (a forked child may exit too)

    def fork_sink(self, pid: int) -> Sink:
        return open_sink(os.path.join(self.dir, f"{pid}.jsonl"))

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Set the variables that make exec'd Python children trace themselves."""
        saved = {k: os.environ.get(k) for k in (ENV, "PYTHONPATH")}
        os.environ[ENV] = json.dumps({"dir": self.dir, "options": self.options,
                                      "root": _PACKAGE_PARENT,
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

    def merge(self) -> None:
        """Merge the children's files into ``path`` and remove them."""
        if os.getpid() != self.pid:
            return
        try:
            files = [os.path.join(self.dir, name) for name in os.listdir(self.dir)
                     if name.endswith(".jsonl")]
            if files and os.path.isfile(self.path):  # (a pipe cannot be rewritten)
                merge_files(self.path, files)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- in the child -------------------------------------------------------------------------


def _argv() -> list[str]:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(getattr(sys, "argv", []))


def start_in_child() -> None:
    """Trace this process into the followed trace's folder (called by sitecustomize)."""
    import atexit

    from .patching import socket_class_patched
    from .recorder import Recorder

    config = json.loads(os.environ[ENV])
    folder: str = config["dir"]
    options = dict(config["options"])
    keylog = options.pop("keylog", None)
    follow = Following.__new__(Following)
    follow.dir, follow.pid = folder, -1  # children never merge
    rec = Recorder.open(os.path.join(folder, f"{os.getpid()}.jsonl"), argv=_argv(),
                        fork_sink=follow.fork_sink,
                        header={"ppid": os.getppid(), "forked": False}, **options)
    stack = contextlib.ExitStack()
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


def merge_files(path: str, children: list[str]) -> None:
    """Merge the per-process files ``children`` into the trace at ``path`` (in place)."""
    top_head, top_calls, top_end = _read(path)
    files = [(top_head, top_calls, top_end)]
    files += sorted((_read(c) for c in children),
                    key=lambda f: f[0].get("opened", f[0].get("epoch", 0.0)))
    epoch = top_head.get("epoch", 0.0)
    id_maps: dict[int, dict[int, int]] = {}
    next_id = max((c["sock"] for c in top_calls), default=0)
    processes = []
    streams = []
    lost = 0
    for head, calls, end in files:
        if not head:
            continue
        pid = head.get("pid", 0)
        shift = 0.0 if head.get("forked") else head.get("epoch", epoch) - epoch
        mapping: dict[int, int] = {}
        if head is top_head:
            base, inherited = next_id, {}  # the top trace keeps its ids
        else:
            base = head.get("id_base", 0) if head.get("forked") else 0
            inherited = id_maps.get(head.get("ppid", -1), {})
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
        processes.append({"pid": pid, "ppid": head.get("ppid"), "argv": head.get("argv"),
                          "forked": bool(head.get("forked")), "events": len(calls),
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
