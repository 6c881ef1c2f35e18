"""The ``tracesock`` command: run, replay, show, stats, demo, analyze, diagram, report.

Every error of tracesock's own is one line on stderr (``tracesock: error: ...``) and exit
status 2; the traced program's own exit status and traceback are passed through as
Python would show them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
                   help="replace matches in payloads with '*' before writing (repeatable; "
                        "not the recorded random bytes tokens may be made from: "
                        "--no-entropy)")
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
                   help="do not record os.urandom, pids and random's state for replay "
                        "(with them, the trace lets a reader rebuild secrets/uuid4 tokens "
                        "the program made)")
    p.add_argument("--wall-clock", action="store_true",
                   help="also record time.time()/time_ns() (and datetime.now()) for "
                        "replay to give back")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr where the trace went, when the program ends")


def _numbers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, "
                                         f"got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_filters(p: argparse.ArgumentParser, full: bool) -> None:
    p.add_argument("--sock", action="extend", type=_numbers, metavar="N[,M...]",
                   help="only these sockets (repeatable)")
    p.add_argument("--pid", action="extend", type=_numbers, metavar="P[,Q...]",
                   help="only the calls of these processes (repeatable)")
    if not full:
        return
    p.add_argument("--op", action="extend", type=_names, metavar="OP[,OP...]",
                   help="only these calls: recv,send,connect... (repeatable)")
    p.add_argument("--since", type=float, metavar="MS",
                   help="only calls started at or after MS milliseconds into the trace")
    p.add_argument("--until", type=float, metavar="MS",
                   help="only calls started at or before MS milliseconds into the trace")
    p.add_argument("--errors", action="store_true", help="only calls that raised")


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

    rp = sub.add_parser("replay", help="re-run a script against its trace, with no network",
                        description="Run a script unchanged, as 'python SCRIPT ARGS' would, "
                                    "with every socket answered from TRACE. A difference from "
                                    "the recording is one line on stderr and exit status 1; a "
                                    "trace that cannot be replayed, exit status 2.")
    rp.add_argument("trace", metavar="TRACE.jsonl")
    rp.add_argument("--check", choices=("concat", "strict", "off"), default="concat",
                    help="compare what is sent: the bytes (concat, default), each call too "
                         "(strict), or nothing (off)")
    rp.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                    help="leave what matches out of the comparison of sent bytes (request "
                         "ids, timestamps; repeatable)")
    rp.add_argument("--no-entropy", dest="entropy", action="store_false",
                    help="give the program fresh os.urandom, pids and random state instead "
                         "of the recorded ones")
    rp.add_argument("--realtime", action="store_true",
                    help="sleep the recorded gaps between calls")
    rp.add_argument("--follow-children", action="store_true",
                    help="replay the program's Python children too (each its recorded one)")
    rp.add_argument("--process", type=int, metavar="PID",
                    help="replay recorded process PID of a trace that followed children")
    rp.add_argument("-m", dest="module", metavar="MODULE",
                    help="run a module as 'python -m MODULE' would")
    # main() splits the program's words off first (_split_run), so argparse never sees them
    rp.add_argument("target", nargs="*", metavar="SCRIPT [ARGS...]",
                    help="the script and its arguments (or the module's arguments with -m)")

    show = sub.add_parser("show", help="print a trace as a readable timeline")
    show.add_argument("trace", metavar="TRACE.jsonl")
    show.add_argument("--capture", metavar="CAPTURE.pcapng",
                      help="interleave the captured segments with the calls")
    _add_filters(show, full=True)

    st = sub.add_parser("stats", help="per-connection summary of a trace")
    st.add_argument("trace", metavar="TRACE.jsonl")
    st.add_argument("--json", action="store_true", help="print JSON")
    _add_filters(st, full=False)

    demo = sub.add_parser("demo", help="run the lecture's examples on loopback, traced")
    demo.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                      help="scenario names, or 'all' (default)")
    demo.add_argument("--out", default="captures", metavar="DIR",
                      help="where NAME.jsonl and NAME.pcapng go (default: captures/)")
    demo.add_argument("--no-capture", action="store_true", help="traces only, no pcapng")
    demo.add_argument("--no-report", action="store_true",
                      help="do not write DIR/echo.html, the echo scenario's HTML report")
    demo.add_argument("--list", action="store_true", help="list the scenarios")

    an = sub.add_parser("analyze", help="TCP analysis of a capture with tshark/pyshark")
    an.add_argument("capture", metavar="CAPTURE.pcapng")
    an.add_argument("--json", action="store_true", help="print JSON")

    dg = sub.add_parser("diagram", help="ladder diagram of a trace (and its capture)")
    dg.add_argument("trace", metavar="TRACE.jsonl")
    dg.add_argument("--capture", metavar="CAPTURE.pcapng")
    dg.add_argument("--format", choices=("text", "mermaid", "svg"), default="text")
    dg.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    rep = sub.add_parser("report", help="one self-contained HTML page: timeline, ladder, charts",
                        description="Write one HTML file (inline CSS, JS and SVG; nothing "
                                    "fetched) with the call timeline filterable by socket and "
                                    "operation, the ladder with TCP states, per-connection "
                                    "stats and charts of recv() sizes and bytes over time.")
    rep.add_argument("trace", metavar="TRACE.jsonl")
    rep.add_argument("--capture", metavar="CAPTURE.pcapng")
    rep.add_argument("-o", "--output", metavar="REPORT.html", default="report.html",
                    help="where the page goes (default: report.html)")
    return parser


def _cmd_show(args: argparse.Namespace) -> int:
    from .lecture.show import EventFilter, in_start_order, timeline_lines
    from .trace.reader import TraceReader

    keep = EventFilter(socks=_set(args.sock), ops=_set(args.op), pids=_set(args.pid),
                       since_ms=args.since, until_ms=args.until, errors=args.errors)
    filtered = keep != EventFilter()
    if args.capture:
        from .lecture.timeline import stream_with_capture

        # Streamed too: the warnings come from the first of its passes, before any line.
        warnings, lines = stream_with_capture(args.trace, args.capture,
                                              keep if filtered else None)
        _print_warnings(warnings)
        for line in lines:
            print(line)
        return 0
    # Streamed: the first lines come at once; warnings about the file's end come last.
    reader = TraceReader(args.trace)
    try:
        _print_warnings(reader.warnings)
        shown = len(reader.warnings)
        processes = reader.header.extra.get("processes")
        many = isinstance(processes, list) and len(processes) > 1
        evs = filter(keep, reader) if filtered else iter(reader)
        for line in timeline_lines(in_start_order(evs), many):
            print(line)
        _print_warnings(reader.warnings[shown:])
    finally:
        reader.close()
    return 0


def _set(values: list[Any] | None) -> frozenset[Any] | None:
    return None if values is None else frozenset(values)


def _cmd_stats(args: argparse.Namespace) -> int:
    from .lecture.show import CHUNKS_SHOWN, format_stats
    from .lecture.stats import scan, write_json
    from .trace.progress import terminal_bar

    bar = terminal_bar(os.path.getsize(args.trace), "stats") \
        if os.path.isfile(args.trace) else None
    try:
        summary = scan(args.trace, socks=_set(args.sock), pids=_set(args.pid), progress=bar,
                       chunk_limit=0 if args.json else CHUNKS_SHOWN + 1, keep_sums=args.json)
    finally:
        if bar is not None:
            bar.finish()
    _print_warnings(summary.pop("warnings"))
    if args.json:
        write_json(summary, sys.stdout.write)
        print()
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


def _cmd_replay(args: argparse.Namespace) -> int:
    from .replay.program import run_replayed

    return run_replayed(args)


Command = Callable[[argparse.Namespace], int]


def _cmd_feature(module: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"tracesock.{module}")
        return int(mod.cli(args))

    return run


_COMMANDS: dict[str, Command] = {
    "run": _cmd_run,
    "replay": _cmd_replay,
    "show": _cmd_show,
    "stats": _cmd_stats,
    "demo": _cmd_feature("lecture.demo"),
    "analyze": _cmd_feature("capture.tshark"),
    "diagram": _cmd_feature("lecture.diagram"),
    "report": _cmd_feature("lecture.report"),
}


def _print_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"tracesock: warning: {w}", file=sys.stderr)


def _split_run(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run [OPTIONS] (SCRIPT | -m MODULE) ARGS...`` (and ``replay TRACE [OPTIONS]
    ...``) where Python would: every word after the script (or after ``-m MODULE``)
    belongs to the program, even ``-v``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = argv[0]
    run = sub.choices[command]
    takes_value = {opt for action in run._actions if action.nargs != 0
                   for opt in action.option_strings}
    i = 1
    if command == "replay":  # its TRACE comes first
        while i < len(argv) and argv[i].startswith("-") and argv[i] != "-m":
            i += 2 if argv[i] in takes_value else 1
        i += 1
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
    if words and words[0] in ("run", "replay"):
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
