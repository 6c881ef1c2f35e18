"""``tracesock replay``: run a script or module as ``python`` would, against its trace.

Theory of operation. ``run_replayed`` opens the trace with ``replay()`` (session.py) and
runs the program inside it with runpy, the way ``tracesock run`` records one: the same
``sys.argv``, ``sys.path[0]`` and ``__name__ == "__main__"``. No socket reaches the
network: each one the program makes is answered from the recording, so its output is the
recorded run's.

Exit status: the program's own when the replay went through (``sys.exit(3)`` exits 3);
1 with one line on stderr when the program did not do what was recorded (it sent other
bytes, made a connection the trace does not have, left recorded bytes unsent), or when
it raised (Python's traceback, without tracesock's frames); 2 when the trace cannot be
replayed at all (missing, malformed, recorded without payloads): the CLI's own errors.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import types

from ..errors import ReplayError, TraceFormatError, UsageError
from .session import replay

_HIDDEN = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
           os.path.abspath(runpy.__file__), "<frozen runpy>")
EXIT_MISMATCH = 1


def _program_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
            _HIDDEN):
        tb = tb.tb_next
    return tb


def _replay_error(exc: BaseException) -> ReplayError | None:
    """The ReplayError behind ``exc`` (raised, or the cause of what the program raised)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        if isinstance(cur, ReplayError):
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


def _mismatch(exc: ReplayError) -> int:
    text = " ".join(str(exc).split())
    print(f"tracesock: replay mismatch: {text}", file=sys.stderr)
    return EXIT_MISMATCH


def _run(script: str, module: str | None, prog_args: list[str]) -> None:
    sys.argv = [script, *prog_args]
    if module is None:
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    else:
        sys.path[0] = os.getcwd()
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def run_replayed(args: argparse.Namespace) -> int:
    if args.module is None and not args.target:
        raise UsageError("replay: name a script (tracesock replay TRACE [--check C] SCRIPT "
                         "[ARGS...]) or a module (-m MODULE)")
    if args.module is None:
        script, prog_args = args.target[0], list(args.target[1:])
        if not os.path.isfile(script):
            raise UsageError(f"replay: cannot open script {script!r}")
    else:
        script, prog_args = args.module, list(args.target)
    if not os.path.isfile(args.trace):
        raise UsageError(f"replay: cannot open trace {args.trace!r}")
    status, started = 0, False
    try:
        # pids=True: the whole script runs inside the replay, as it ran inside the trace
        with replay(args.trace, check=args.check, ignore=args.ignore, entropy=args.entropy,
                    realtime=args.realtime, follow_children=args.follow_children,
                    process=args.process, pids=True) as rp:
            started = True
            try:
                _run(script, args.module, prog_args)
            except SystemExit as exc:
                code = exc.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
            except (ReplayError, TraceFormatError):
                raise
            except BaseException as exc:
                if (err := _replay_error(exc)) is not None:
                    raise err from None
                rp.skip_final_checks()
                tb = _program_traceback(exc.__traceback__)
                sys.excepthook(type(exc), exc.with_traceback(tb), tb)
                status = 1
    except TraceFormatError:
        raise  # a bad trace: the CLI says so and exits 2
    except ReplayError as exc:
        if not started:
            raise  # the trace cannot be replayed at all: exit 2
        sys.stdout.flush()
        return _mismatch(exc)
    finally:
        sys.stdout.flush()
    return status


__all__ = ["run_replayed"]
