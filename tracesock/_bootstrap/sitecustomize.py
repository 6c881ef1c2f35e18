"""Imported by Python at start-up in children of a followed trace (on PYTHONPATH).

Starts tracing this process (tracesock.children.start_in_child) when it is the same
Python version as the tracer, then imports the program's own ``sitecustomize``, if one
is further along the path. tracesock's folder is on sys.path only while it is imported:
the program's own imports see the path it would have had.
"""

import json
import os
import sys


def _start() -> None:
    config = json.loads(os.environ["TRACESOCK_FOLLOW"])
    if list(sys.version_info[:2]) != config["python"]:
        return  # another Python: run it untraced
    sys.path.insert(0, config["root"])
    try:
        from tracesock.children import start_in_child
    finally:
        sys.path.remove(config["root"])
    start_in_child()


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


if os.environ.get("TRACESOCK_FOLLOW"):
    try:
        _start()
    except Exception as exc:  # never stop the child: say so and run it untraced
        sys.stderr.write(f"tracesock: warning: cannot trace child process {os.getpid()} "
                         f"({exc})\n")
_chain()
