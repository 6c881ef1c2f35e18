"""The ``tracesock`` command: run, show, stats, demo, analyze, diagram.

Every error of tracesock's own is one line on stderr (``tracesock: error: ...``) and exit
status 2; the traced program's own exit status and traceback are passed through as
Python would show them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .errors import TracesockError, UsageError

EXIT_ERROR = 2


def _add_trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="TRACE.jsonl",
                   help="where the trace goes (default: SCRIPT.jsonl in the current folder)")
    p.add_argument("--no-payload", action="store_true",
                   help="record byte counts only, not the bytes (replay then impossible)")
    p.add_argument("--max-payload", type=int, metavar="N",
                   help="keep at most N bytes of each call's payload (marked truncated)")
    p.add_argument("--redact", action="append", default=[], metavar="REGEX",
                   help="replace matches in payloads with '*' before writing (repeatable)")
    p.add_argument("--capture", metavar="CAPTURE.pcapng",
                   help="also capture the traced connections' SYN/FIN/RST segments (scapy)")
    p.add_argument("--capture-all", action="store_true",
                   help="with --capture: keep every segment, data and pure ACKs too")
    p.add_argument("--capture-required", action="store_true",
                   help="fail instead of warning when capture cannot start")
    p.add_argument("--keylog", metavar="KEYS.txt",
                   help="write TLS session secrets (NSS key log format) to decrypt a capture")
    p.add_argument("--follow-children", action="store_true",
                   help="trace the Python child processes too (fork, subprocess, "
                        "multiprocessing), merged into one trace with a pid on each call")
    p.add_argument("--no-entropy", action="store_true",
                   help="do not record os.urandom, pids and random's state for replay")
    p.add_argument("--wall-clock", action="store_true",
                   help="also record time.time()/time_ns() for replay to give back")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr where the trace went, when the program ends")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracesock",
        description="See and replay what a socket program does.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a Python script or module, tracing its sockets",
                         description="Run a script unchanged, as 'python SCRIPT ARGS' would, "
                                     "and record every socket call to a JSONL trace.")
    _add_trace_options(run)
    run.add_argument("-m", dest="module", metavar="MODULE",
                     help="run a module as 'python -m MODULE' would")
    run.add_argument("target", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS...]",
                     help="the script and its arguments (or the module's arguments with -m)")

    show = sub.add_parser("show", help="print a trace as a readable timeline")
    show.add_argument("trace", metavar="TRACE.jsonl")
    show.add_argument("--capture", metavar="CAPTURE.pcapng",
                      help="interleave the captured segments with the calls")

    st = sub.add_parser("stats", help="per-connection summary of a trace")
    st.add_argument("trace", metavar="TRACE.jsonl")
    st.add_argument("--json", action="store_true", help="print JSON")

    demo = sub.add_parser("demo", help="run the lecture's examples on loopback, traced")
    demo.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                      help="scenario names, or 'all' (default)")
    demo.add_argument("--out", default="captures", metavar="DIR",
                      help="where NAME.jsonl and NAME.pcapng go (default: captures/)")
    demo.add_argument("--no-capture", action="store_true", help="traces only, no pcapng")
    demo.add_argument("--list", action="store_true", help="list the scenarios")

    an = sub.add_parser("analyze", help="TCP analysis of a capture with tshark/pyshark")
    an.add_argument("capture", metavar="CAPTURE.pcapng")
    an.add_argument("--json", action="store_true", help="print JSON")

    dg = sub.add_parser("diagram", help="ladder diagram of a trace (and its capture)")
    dg.add_argument("trace", metavar="TRACE.jsonl")
    dg.add_argument("--capture", metavar="CAPTURE.pcapng")
    dg.add_argument("--format", choices=("text", "mermaid", "svg"), default="text")
    dg.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    return parser


def _cmd_show(args: argparse.Namespace) -> int:
    from .lecture.show import timeline
    from .trace.reader import load

    trace = load(args.trace)
    _print_warnings(trace.warnings)
    if args.capture:
        from .lecture.timeline import render_with_capture

        lines = render_with_capture(trace, args.capture)
    else:
        lines = timeline(trace)
    for line in lines:
        print(line)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .lecture.show import format_stats, stats
    from .trace.reader import load

    trace = load(args.trace)
    _print_warnings(trace.warnings)
    summary = stats(trace)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        for line in format_stats(summary):
            print(line)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .record.runner import run_program

    if args.module is None and not args.target:
        raise UsageError("run: name a script to run (tracesock run [options] SCRIPT [ARGS...]) "
                         "or a module (-m MODULE)")
    if args.max_payload is not None and args.max_payload < 0:
        raise UsageError(f"run: --max-payload must be >= 0, got {args.max_payload}")
    return run_program(args)


Command = Callable[[argparse.Namespace], int]


def _cmd_feature(module: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"tracesock.{module}")
        return int(mod.cli(args))

    return run


_COMMANDS: dict[str, Command] = {
    "run": _cmd_run,
    "show": _cmd_show,
    "stats": _cmd_stats,
    "demo": _cmd_feature("lecture.demo"),
    "analyze": _cmd_feature("capture.tshark"),
    "diagram": _cmd_feature("lecture.diagram"),
}


def _print_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"tracesock: warning: {w}", file=sys.stderr)


def _split_run(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run [OPTIONS] (SCRIPT | -m MODULE) ARGS...`` where Python would: every word
    after the script (or after ``-m MODULE``) belongs to the program, even ``-v``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    takes_value = {opt for action in run._actions if action.nargs != 0
                   for opt in action.option_strings}
    i = argv.index("run") + 1
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[:i], argv[i + 1:]
        if word == "-m":
            return argv[: i + 2], argv[i + 2:]
        if not word.startswith("-") or word == "-":
            return argv[:i], argv[i:]
        if word in takes_value:
            i += 1
        i += 1
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    program: list[str] | None = None
    if words and words[0] == "run":
        words, program = _split_run(parser, words)
    args = parser.parse_args(words)
    if program is not None:
        args.target = program
    try:
        return _COMMANDS[args.command](args)
    except TracesockError as exc:
        print(f"tracesock: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # `tracesock show big.jsonl | head`: stop quietly, as cat would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
