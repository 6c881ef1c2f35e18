"""Replaying child processes, the child's side (``replay(..., follow_children=True)``).

The bootstrap's ``sitecustomize`` (patching.py) calls ``start_replay_in_child`` in every
exec'd Python child of a replay that follows children: the child claims the recorded
process it stands for (children.py) and replays it, or, when none is left for it,
fails on its first socket (never the network instead). Problems go to stderr and into
the replay's folder, where the replaying program finds them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, Literal

from ..errors import ReplayError, TracesockError
from ..patching import program_argv
from .cassette import Cassette
from .children import REPLAY_ENV, claim
from .session import replacing, replay
from .sockets import ReplaySocket


def _report(state: str, message: str) -> None:
    """Tell the replaying program (the first problem of this process only)."""
    sys.stderr.write(f"tracesock: error: {message}\n")
    name = os.path.join(state, f"report-{os.getpid()}.txt")
    with contextlib.suppress(OSError):  # gone: the replay that started us is over
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(message)



def start_replay_in_child() -> None:
    """Replay this process from the recording of the child it stands for (called by
    sitecustomize); problems go to stderr and to the replaying program."""
    config = json.loads(os.environ[REPLAY_ENV])
    trace, state = config["trace"], config["state"]
    stack = contextlib.ExitStack()
    me: int | None = None
    try:
        me = claim(trace, int(config["as"]), program_argv(), state)
    except ReplayError as exc:
        _report(state, str(exc))
        stack.enter_context(_refusing(trace, str(exc)))  # never the network instead
    else:
        os.environ[REPLAY_ENV] = json.dumps({**config, "as": me})  # for its own children
        # Its own pid: all its life is replayed; its parent's, if the parent gives its own.
        options = dict(config["options"])
        pids: bool | Literal["self"] = True if options.pop("pids", True) else "self"
        stack.enter_context(replay(trace, process=me, pids=pids, **options))
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
    cas = Cassette(iter([]), path=f"{trace} (no recorded process for this child: {why[:60]}...)")
    with replacing(ReplaySocket.bound_to(cas, stand_in=True)):
        yield
