"""Following child processes: ``tracesock run --follow-children``, ``trace(follow_children=True)``.

Theory of operation. Every process writes its own file, and the files are merged into
the trace (``trace/merge.py``: who merges, and how).

- ``fork()``: the recorder's ``fork_sink`` (recorder.py) gives the child
  ``DIR/PID.jsonl`` with a header naming ``ppid``, ``forked`` and ``id_base`` (the ids
  allocated before the fork: inherited sockets keep them). Events the parent had
  finished are in the parent's file only, so nothing is written twice, and no child
  ever writes into the parent's file.
- Python children started with exec (``subprocess`` running Python, ``multiprocessing``
  with spawn or forkserver): ``TRACESOCK_FOLLOW`` in the environment, and on
  ``PYTHONPATH`` the bootstrap folder (patching.py) whose ``sitecustomize`` starts
  tracing into ``DIR/PID.jsonl`` until the child exits (``start_in_child``), with its
  own entropy (entropy.py) when the trace records it. A process
  that registers after DIR was removed (a child still starting when the others were
  done, as a daemonising script leaves it) creates DIR again and is merged into the
  finished trace when it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from ..errors import stderr_warn
from ..patching import child_environment, entropy_replaced, program_argv
from ..trace.merge import locked, merge_finished, stamp
from .entropy import EntropyRecorder, header_fields
from .patch import recording
from .recorder import Recorder
from .sink import Sink, open_sink

ENV = "TRACESOCK_FOLLOW"



class Following:
    """The per-process files of one followed trace: registering, finishing, merging."""

    def __init__(self, path: str, folder: str, options: Mapping[str, Any], top: int) -> None:
        self.path = os.path.abspath(path)  # the program may chdir before the merge
        self.dir = folder
        self.options = dict(options)  # how to record, for exec'd children
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
        with locked(self.dir, create=True):
            live = os.path.join(self.dir, f"{pid}.live")
            with open(live, "w") as f:
                f.write(stamp(pid) or "")

    def fork_sink(self, pid: int) -> Sink:
        self.register(pid)
        return open_sink(os.path.join(self.dir, f"{pid}.jsonl"))

    def environment(self) -> contextlib.AbstractContextManager[None]:
        """Set the variables that make exec'd Python children trace themselves."""
        return child_environment(ENV, {"dir": self.dir, "path": self.path, "top": self.top,
                                        "options": self.options})

    def abandon(self) -> None:
        """The trace could not start: nothing to merge."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def leave(self) -> None:
        """This process finished its file: deregister, and merge when it is the top
        process (what is finished so far) or the last one alive (everything)."""
        pid = os.getpid()
        try:
            with locked(self.dir, create=False) as there:
                if not there:
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, f"{pid}.live"))
                merge_finished(self.path, self.dir, final_only=pid != self.top)
        except Exception as exc:  # never fail the program's exit: the files are kept
            stderr_warn(f"cannot merge the child processes' traces into {self.path} ({exc}); "
                  f"they are kept in {self.dir}")



def start_in_child() -> None:
    """Trace this process into the followed trace's folder (called by sitecustomize)."""
    follow = Following.from_environment()
    options = dict(follow.options)
    keylog = options.pop("keylog", None)
    entropy, clock = options.pop("entropy", False), options.pop("wall_clock", False)
    pid = os.getpid()
    follow.register(pid)
    stack = contextlib.ExitStack()
    stack.callback(follow.leave)
    try:
        header: dict[str, Any] = {"ppid": os.getppid(), "forked": False}
        if entropy:
            header["entropy"] = header_fields(clock)
        rec = Recorder.open(os.path.join(follow.dir, f"{pid}.jsonl"), argv=program_argv(),
                            fork_sink=follow.fork_sink, header=header, **options)
    except BaseException:
        stack.close()
        raise
    stack.callback(rec.close)
    stack.enter_context(recording(rec, keylog=keylog))
    if entropy:
        stack.enter_context(entropy_replaced(
            EntropyRecorder(rec, clock=clock, follow=True).functions))
    atexit.register(stack.close)
