"""``tracesock run``: run a script or module exactly as ``python`` would, traced.

The program sees the same ``sys.argv``, ``sys.path[0]``, ``__name__ == "__main__"`` and
``__file__`` as under ``python``; its exit status is its own (``sys.exit(3)`` exits 3, an
uncaught exception prints Python's traceback without tracesock's frames and exits 1).

The trace is finished by an ``atexit`` hook registered before the program starts, so it
runs after the program's own ``atexit`` hooks and after its non-daemon threads ended:
sockets they close are still recorded.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import runpy
import signal
import sys
import types
from typing import Any

from ..errors import UsageError
from .tracing import trace

_HIDDEN = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # tracesock/
           os.path.abspath(runpy.__file__), "<frozen runpy>")


def _default_output(args: argparse.Namespace) -> str:
    name = args.module.rsplit(".", 1)[-1] if args.module else \
        os.path.splitext(os.path.basename(args.target[0]))[0]
    return f"{name or 'trace'}.jsonl"


def _program_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """Drop the leading frames of tracesock and runpy, as if Python ran the script."""
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_HIDDEN) or
                              os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_HIDDEN)):
        tb = tb.tb_next
    return tb


def _excepthook(exc: BaseException) -> None:
    tb = _program_traceback(exc.__traceback__)
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def _check_script(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"run: cannot open script {path!r}: {exc.strerror or exc}") from None
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "__main__.py")):
        raise UsageError(f"run: {path!r} is a folder without __main__.py")


def _check_module(name: str) -> None:
    import importlib.util

    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    finally:
        del sys.path[0]
    if spec is None:
        raise UsageError(f"run: no module named {name!r}")


def _start_trace(args: argparse.Namespace, out: str, argv: list[str]) -> contextlib.ExitStack:
    parent = os.path.dirname(out)
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"run: cannot create the folder of {out!r}: "
                             f"{exc.strerror or exc}") from None
    options: dict[str, Any] = {"payload": not args.no_payload,
                               "max_payload": args.max_payload, "redact": args.redact,
                               "argv": argv, "keylog": args.keylog,
                               "follow_children": args.follow_children,
                               "entropy": not args.no_entropy, "wall_clock": args.wall_clock}
    if args.capture:
        options.update(capture=args.capture, capture_all=args.capture_all,
                       capture_required=args.capture_required)
    for pattern in args.redact:
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"run: --redact {pattern!r} is not a valid regex: {exc}") from None
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(trace(out, **options))
    except OSError as exc:
        raise UsageError(f"run: cannot write the trace to {out!r}: "
                         f"{exc.strerror or exc}") from None
    return stack


def run_program(args: argparse.Namespace) -> int:
    if args.module is None:
        script, prog_args = args.target[0], args.target[1:]
        _check_script(script)
    else:
        script, prog_args = args.module, list(args.target)
        _check_module(args.module)
    out = args.output or _default_output(args)
    stack = _start_trace(args, out, [script, *prog_args])

    def finish() -> None:
        stack.close()
        if args.verbose:
            print(f"tracesock: trace written to {out}", file=sys.stderr)

    atexit.register(finish)

    sys.argv = [script, *prog_args]
    try:
        if args.module is None:
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            runpy.run_path(script, run_name="__main__")
        else:
            sys.path[0] = os.getcwd()
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    except SystemExit:
        raise
    except KeyboardInterrupt as exc:
        _excepthook(exc)
        atexit.unregister(finish)
        finish()
        sys.stdout.flush()
        # Die by SIGINT as Python does, so the parent sees the same status.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException as exc:
        _excepthook(exc)
        return 1
    return 0
