"""Imported by Python at start-up in children of a followed trace or of a replay that
follows children (on PYTHONPATH).

Starts tracing this process (tracesock.record.children.start_in_child) or replaying
it (tracesock.replay.child.start_replay_in_child) when it is the same Python version as
the parent, then imports the program's own ``sitecustomize``, if one is further along
the path. tracesock's folder is on sys.path only while it is imported: the program's
own imports see the path it would have had.
"""

import json
import os
import sys


def _start(variable: str, module: str, function: str) -> None:
    config = json.loads(os.environ[variable])
    if list(sys.version_info[:2]) != config["python"]:
        if variable == "TRACESOCK_REPLAY":
            sys.stderr.write(f"tracesock: warning: child process {os.getpid()} is not "
                             f"replayed (Python {sys.version_info[0]}.{sys.version_info[1]}, "
                             "not the replaying Python's version)\n")
        return  # another Python: run it as it is
    sys.path.insert(0, config["root"])
    try:
        import importlib

        start = getattr(importlib.import_module(module), function)
    finally:
        sys.path.remove(config["root"])
    start()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    module = sys.modules.pop("sitecustomize", None)
    try:
        import importlib.util

        if importlib.util.find_spec("sitecustomize") is not None:
            importlib.import_module("sitecustomize")  # the program's own
    except Exception as exc:
        sys.stderr.write(f"tracesock: warning: sitecustomize failed ({exc})\n")
    finally:
        sys.path[:] = saved
        if "sitecustomize" not in sys.modules and module is not None:
            sys.modules["sitecustomize"] = module


for _variable, _module, _function, _what in (
        ("TRACESOCK_FOLLOW", "tracesock.record.children", "start_in_child", "trace"),
        ("TRACESOCK_REPLAY", "tracesock.replay.child", "start_replay_in_child", "replay")):
    if os.environ.get(_variable):
        try:
            _start(_variable, _module, _function)
        except Exception as exc:  # never stop the child: say so and run it as it is
            sys.stderr.write(f"tracesock: warning: cannot {_what} child process "
                             f"{os.getpid()} ({exc})\n")
_chain()
