"""``tracesock demo``: the lecture's socket programs, run on 127.0.0.1, traced and captured.

Theory of operation. Each scenario starts its own server(s) in threads on 127.0.0.1
(no outside host), then runs the client exactly as the lecture notes write it, inside
``trace(NAME.jsonl, capture=NAME.pcapng)``. Only the demo's own connections end up in
the files:

* ``trace()`` replaces ``socket.socket`` for the whole process, and the stdlib's
  ``socket.accept()`` builds the accepted socket through that module attribute. A
  server that must stay untraced (the web server: in the notes it is someone else's
  machine) therefore builds its listener before the trace starts and wraps accepted
  descriptors in the real socket class itself (``accept_untraced``).
* Servers that are part of the lesson (echo, half-close, chunking, utf8-split) create
  their listener inside the trace, so their ``accept()`` and their recvs are recorded.
* ``backlog``, ``shared-close`` and ``time-wait`` are in demo_states.py.
* Every server thread is joined before the traced block ends, and scenarios run one
  after the other: nothing of one scenario is still running when the next trace opens.
* The capture keeps only the traced connections' segments (capture.py joins them with
  the finished trace), so other loopback traffic never reaches the pcapng.

Where the lesson is a particular recv pattern, the peer makes it happen on purpose:
``chunking`` reads a single 1,000-byte send with ``recv(256)`` (so four recvs, always),
``utf8-split`` sends the first 8 bytes, pauses, then the rest, so that the client's
``recv(1024)`` returns the character '대' cut in two. A pause is a timing matter, so a
scenario may check its trace and run again (at most ``ATTEMPTS`` times).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..record.tracing import trace
from ..trace.reader import Trace, load
from .demo_states import run_backlog, run_shared_close, run_time_wait
from .programs import (
    ATTEMPTS,
    CHUNK_SEND,
    ECHO_MESSAGE,
    HOST,
    REAL_SOCKET,
    UTF8_CUT,
    Server,
    TracedBlock,
    chunk_reader,
    chunking_client,
    echo_client,
    echo_handler,
    half_close_client,
    http_close_client,
    http_handler,
    http_makefile_client,
    listen_on_loopback,
    refused_client,
    upper_after_eof_handler,
    utf8_client,
    utf8_sender,
)

Warn = Callable[[str], None]

# -- scenarios -----------------------------------------------------------------------------



def _with_server(block: TracedBlock, handle: Callable[[socket.socket], None], *,
                 traced: bool, client: Callable[[int], str]) -> str:
    if traced:
        with block():
            server = Server(listen_on_loopback(socket.socket), handle, traced=True)
            try:
                return client(server.port)
            finally:
                server.join()
    listener = listen_on_loopback(REAL_SOCKET)
    with block():
        server = Server(listener, handle, traced=False)
        try:
            return client(server.port)
        finally:
            server.join()


def _run_echo(block: TracedBlock) -> str:
    return _with_server(block, echo_handler, traced=True,
                        client=lambda port: f"reply {echo_client(HOST, port)!r}")


def _run_http_close(block: TracedBlock) -> str:
    return _with_server(block, http_handler, traced=False, client=lambda port:
                        f"{len(http_close_client(HOST, port))} bytes of contents")


def _run_http_makefile(block: TracedBlock) -> str:
    return _with_server(block, http_handler, traced=False, client=lambda port:
                        f"{len(http_makefile_client(HOST, port))} bytes of contents")


HALF_CLOSE_LINES = (b"first request line\r\n", b"second request line\r\n")


def _run_half_close(block: TracedBlock) -> str:
    return _with_server(block, upper_after_eof_handler, traced=True, client=lambda port:
                        f"reply {half_close_client(HOST, port, HALF_CLOSE_LINES)!r}")


def _run_refused(block: TracedBlock) -> str:
    probe = REAL_SOCKET(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()  # bound, never listened: nobody accepts on this port now
    with block():
        return refused_client(HOST, port)


CHUNK_MESSAGE = b"".join(b"%03d:" % i + b"x" * 45 + b"\n" for i in range(20))
assert len(CHUNK_MESSAGE) == CHUNK_SEND


def _run_chunking(block: TracedBlock) -> str:
    return _with_server(block, chunk_reader, traced=True, client=lambda port:
                        f"sent {chunking_client(HOST, port, CHUNK_MESSAGE)} bytes in one send")


def _run_utf8_split(block: TracedBlock) -> str:
    def client(port: int) -> str:
        chunks, failures, text = utf8_client(HOST, port)
        return (f"chunks {[len(c) for c in chunks]}, per-chunk decode failed "
                f"{len(failures)}x, joined {text!r}")

    return _with_server(block, utf8_sender, traced=True, client=client)


def _client_recv_sizes(tr: Trace) -> list[int]:
    return [n for c in tr.connections.values() if c.role == "client"
            for n in c.recv_chunks if n]


def _shows_utf8_split(tr: Trace) -> bool:
    return _client_recv_sizes(tr) == [UTF8_CUT, len(ECHO_MESSAGE.encode()) - UTF8_CUT]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A lecture example: ``run`` runs it inside the traced block it is given."""

    name: str
    summary: str
    run: Callable[[TracedBlock], str]
    shows: Callable[[Trace], bool] | None = None  # did this run show the point?
    follow_children: bool = False  # trace the processes it forks too


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("echo", "the notes' first client: send 'Hello, 대한민국!' (20 bytes), recv, close",
             _run_echo),
    Scenario("http-close", "GET with 'Connection: close', recv(4096) until b''",
             _run_http_close),
    Scenario("http-makefile", "the same GET through makefile('rb'): status line, headers, "
             "Content-Length bytes", _run_http_makefile),
    Scenario("half-close", "shutdown(SHUT_WR) after the last request, recv until the peer's "
             "FIN", _run_half_close),
    Scenario("refused", "connect to a port with no listener: SYN answered by RST",
             _run_refused),
    Scenario("chunking", "one 1,000-byte send read by the peer in several recvs",
             _run_chunking),
    Scenario("utf8-split", "a multi-byte character split across two recvs",
             _run_utf8_split, _shows_utf8_split),
    Scenario("backlog", "listen(1), no accept yet, 3 clients: the third SYN is ignored, "
             "retransmitted, and connect() times out", run_backlog),
    Scenario("shared-close", "close() while a forked child holds the descriptor: no FIN "
             "until the child closes it", run_shared_close, follow_children=True),
    Scenario("time-wait", "the server closes first and stays in TIME_WAIT; bind() to its "
             "port without SO_REUSEADDR: EADDRINUSE", run_time_wait),
)


def scenario_names() -> list[str]:
    return [s.name for s in SCENARIOS]


def get_scenario(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise UsageError(f"demo: no scenario {name!r} (scenarios: {', '.join(scenario_names())}, "
                     "or 'all')")


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one scenario wrote: the trace, the capture (None if not captured), a summary."""

    name: str
    trace_path: str
    capture_path: str | None
    outcome: str


def run_scenario(scenario: Scenario, out_dir: str, *, capture: bool = True,
                 capture_required: bool = False, warn: Warn | None = None) -> DemoResult:
    """Run one scenario into ``out_dir/NAME.jsonl`` (and ``NAME.pcapng`` with ``capture``)."""
    os.makedirs(out_dir, exist_ok=True)
    trace_path = os.path.join(out_dir, f"{scenario.name}.jsonl")
    cap_path = os.path.join(out_dir, f"{scenario.name}.pcapng") if capture else None
    say: Warn = warn if warn is not None else _stderr
    options: dict[str, Any] = {"argv": ["tracesock", "demo", scenario.name], "warn": say,
                               "follow_children": scenario.follow_children}
    if cap_path is not None:
        options.update(capture=cap_path, capture_all=True, capture_required=capture_required)

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        with trace(trace_path, **options):
            yield

    outcome = ""
    for attempt in range(1, ATTEMPTS + 1):
        for stale in (trace_path, cap_path):
            if stale is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)  # an old capture must not pass for a new one
        outcome = scenario.run(block)
        if scenario.shows is None or scenario.shows(load(trace_path)):
            break
        if attempt == ATTEMPTS:
            say(f"demo {scenario.name}: the run did not show what it is meant to show "
                f"({outcome}); the files are written anyway")
    captured = cap_path if cap_path is not None and os.path.exists(cap_path) else None
    return DemoResult(scenario.name, trace_path, captured, outcome)


def _stderr(message: str) -> None:
    print(f"tracesock: warning: {message}", file=sys.stderr)


def _selected(names: list[str]) -> list[Scenario]:
    if not names or "all" in names:
        return list(SCENARIOS)
    return [get_scenario(n) for n in dict.fromkeys(names)]


def cli(args: argparse.Namespace) -> int:
    """``tracesock demo [NAME...] [--out DIR] [--no-capture] [--no-report] [--list]``."""
    if args.list:
        width = max(len(n) for n in scenario_names())
        for s in SCENARIOS:
            print(f"{s.name:<{width}}  {s.summary}")
        return 0
    scenarios = _selected(list(args.names))
    capture = not args.no_capture
    results: list[DemoResult] = []
    for scenario in scenarios:
        result = run_scenario(scenario, args.out, capture=capture)
        if capture and result.capture_path is None:
            capture = False  # said once by trace(); the others would fail the same way
            print("tracesock: warning: demo: no capture; the remaining scenarios are traced "
                  "only", file=sys.stderr)
        results.append(result)
        files = result.trace_path + (f", {result.capture_path}" if result.capture_path else "")
        print(f"{result.name}: {files}  ({result.outcome})")
    echo = next((r for r in results if r.name == "echo"), None)
    if echo is not None:
        from .diagram import ladder_for, render_text

        print()
        print(f"echo ladder ({echo.trace_path}"
              + (f" + {echo.capture_path}" if echo.capture_path else "") + "):")
        for line in render_text(ladder_for(load(echo.trace_path), echo.capture_path)):
            print(line)
        if not args.no_report:
            from .report import write_report

            page = os.path.join(args.out, "echo.html")
            write_report(echo.trace_path, echo.capture_path, page)
            print(f"\necho report (open in a browser): {os.path.abspath(page)}")
    return 0


__all__ = [
    "SCENARIOS",
    "DemoResult",
    "Scenario",
    "get_scenario",
    "run_scenario",
    "scenario_names",
]
