"""``tracesock demo``: the lecture's socket programs, run on 127.0.0.1, traced and captured.

Theory of operation. Each scenario starts its own server(s) in threads on 127.0.0.1
(no outside host), then runs the client exactly as the lecture notes write it, inside
``trace(NAME.jsonl, capture=NAME.pcapng)``. Only the demo's own connections end up in
the files:

* ``trace()`` replaces ``socket.socket`` for the whole process, and the stdlib's
  ``socket.accept()`` builds the accepted socket through that module attribute. A
  server that must stay untraced (the web server: in the notes it is someone else's
  machine) therefore builds its listener before the trace starts and wraps accepted
  descriptors in the real socket class itself (``_accept_untraced``).
* Servers that are part of the lesson (echo, half-close, chunking, utf8-split) create
  their listener inside the trace, so their ``accept()`` and their recvs are recorded.
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import TracesockError, UsageError
from .tracefile import Trace, load
from .tracing import trace

Warn = Callable[[str], None]

HOST = "127.0.0.1"
ATTEMPTS = 3  # runs of a scenario whose point depends on timing
JOIN_TIMEOUT = 10.0  # seconds a server thread may take after its client finished
ECHO_MESSAGE = "Hello, 대한민국!"  # 20 bytes in UTF-8, as in the notes
CHUNK_SEND = 1000  # the notes' question: does a 1,000-byte send arrive as one recv?
CHUNK_RECV = 256
UTF8_CUT = 8  # 'Hello, ' is 7 bytes; '대' is bytes 7..9, so the cut falls inside it
UTF8_PAUSE = 0.2

# The socket class as it was when tracesock.demo was imported (before any trace).
_REAL_SOCKET: type[socket.socket] = socket.socket

# The lecture's test page (the notes fetch it from a university host), shortened.
LECTURE_PAGE = (
    '<html>\n<head>\n<title>Test Page</title>\n<meta http-equiv="content-type" '
    'content="text/html; charset=UTF-8">\n</head>\n\n<body>\n'
    "<h1>Information and Communications Engineering</h1>\n"
    "<p>Welcome to Dept. of Information and Communications Engineering</p>\n<p></p>\n"
    "<p>한국외국어대학교 정보통신공학과</p>\n\n<h2>Blue Sky</h2>\n"
    + "".join(f'<h3>SKY {i}</h3>\n<p><img src="s3test{i}.jpg" border="0"></p>\n'
              for i in range(2, 6))
    + '<h3>TCP/IP Protocol Suits</h3>\n<p><img src="tcp_ip.png" height="300" width="500">'
    "</p>\n<h3>HTTP Protocol</h3>\n<p>HTTP Request/Response Messages</p>\n"
    '<p><img src="HTTP_RequestResponseMessages.png"></p>\n'
    "<h3>Web Server Architecture</h3>\n<p>Single Threaded Web Server</p>\n"
    '<p><img src="single_threaded_web_server.gif" height="400" width="500"></p>\n'
    "<p>Thread Pool Web Server</p>\n"
    '<p><img src="thread_pool_web_server.gif" height="400" width="500"></p>\n'
    "<h3>REST Service and JSON</h3>\n<p>Ajax application model architecture</p>\n"
    '<p><img src="ajax_model.jpg"></p>\n</body>\n</html>\n'
).encode("utf-8")


# -- the clients, as the lecture notes write them -----------------------------------------


def echo_client(host: str, port: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # create a TCP socket object
    s.connect((host, port))  # connect to echo server
    msg = ECHO_MESSAGE
    s.send(msg.encode("utf-8"))  # send in bytes or bytearray type
    reply = s.recv(1024)
    s.close()
    return reply.decode("utf-8")


def http_close_client(host: str, port: int, path: str = "/test/index.html") -> bytes:
    template = "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    request = template.format(path=path, host=host)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((host, port))
    sock.send(request.encode("utf-8"))

    chunks = []
    while True:
        chunk = sock.recv(4096)
        if chunk == b"":
            break  # server closes
        chunks.append(chunk)
    sock.close()

    response = b"".join(chunks)
    eoh = response.find(b"\r\n\r\n")
    return response[eoh + 4:]


def parse_headers(file: Any) -> dict[str, str]:
    headers = {}
    for line in file:
        if line == b"\r\n":  # end of headers
            break
        header = line.decode().strip()  # remove leading and trailing white spaces
        key, value = header.split(":", maxsplit=1)
        headers[key] = value.strip()
    return headers


def http_makefile_client(host: str, port: int, path: str = "/test/index.html") -> bytes:
    template = "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    request = template.format(path=path, host=host)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((host, port))
    infile = sock.makefile("rb")  # convert incoming socket to file-like object
    sock.sendall(request.encode())
    status = infile.readline().decode().split()[1]  # status line
    if status != "200":
        raise TracesockError(f"demo http-makefile: the server answered {status}")
    headers = parse_headers(infile)
    contents: bytes = infile.read(int(headers["Content-Length"]))  # Content-Length bytes
    sock.close()
    return contents


def half_close_client(host: str, port: int, lines: tuple[bytes, ...]) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((host, port))
    for line in lines:
        sock.sendall(line)
    sock.shutdown(socket.SHUT_WR)  # no more requests: FIN, but recv still works

    chunks = []
    while True:
        chunk = sock.recv(4096)
        if chunk == b"":
            break  # the peer's FIN: it has nothing more to send
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def refused_client(host: str, port: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect((host, port))  # no such server process: the SYN is answered by RST
    except ConnectionRefusedError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        s.close()  # a failed connect leaves the socket to close
    return "connected (unexpected)"


def chunking_client(host: str, port: int, msg: bytes) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((host, port))
    n_sent = s.send(msg)  # one send of 1,000 bytes...
    s.close()
    return n_sent


def utf8_client(host: str, port: int) -> tuple[list[bytes], list[str], str]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((host, port))
    chunks = []
    failures = []
    while True:
        chunk = s.recv(1024)
        if chunk == b"":
            break
        chunks.append(chunk)
        try:
            chunk.decode("utf-8")  # decoding each chunk on its own...
        except UnicodeDecodeError as exc:
            failures.append(f"{chunk!r}: {exc.reason}")
    s.close()
    return chunks, failures, b"".join(chunks).decode("utf-8")  # ...and after joining


# -- the servers ---------------------------------------------------------------------------


def _listen(cls: type[socket.socket]) -> socket.socket:
    listener = cls(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(5)
    return listener


def _accept_untraced(listener: socket.socket) -> socket.socket:
    """accept(), but the connected socket is a plain socket even while a trace runs."""
    fd, _ = listener._accept()  # type: ignore[attr-defined]
    conn = _REAL_SOCKET(listener.family, listener.type, listener.proto, fileno=fd)
    conn.settimeout(JOIN_TIMEOUT)
    return conn


class _Server:
    """A server thread; ``join()`` re-raises what it raised."""

    def __init__(self, listener: socket.socket, handle: Callable[[socket.socket], None],
                 *, traced: bool) -> None:
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        self._handle = handle
        self._traced = traced
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tracesock-demo-server",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._traced:
                conn, _ = self.listener.accept()
            else:
                conn = _accept_untraced(self.listener)
            with conn:
                self._handle(conn)
        except BaseException as exc:
            self._error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
            self._thread.join(JOIN_TIMEOUT)
            raise TracesockError("demo: the server thread did not finish in "
                                 f"{JOIN_TIMEOUT:.0f} s")
        if self._error is not None:
            raise TracesockError(f"demo: the server failed: {self._error!r}") from self._error


def _echo_handler(conn: socket.socket) -> None:
    while data := conn.recv(1024):
        conn.sendall(data)


def _http_response(body: bytes) -> bytes:
    head = ("HTTP/1.1 200 OK\r\nServer: tracesock-demo\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            "Content-Type: text/html\r\n\r\n")
    return head.encode("ascii") + body


def _http_handler(conn: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        data = conn.recv(4096)
        if not data:
            return
        request += data
    conn.sendall(_http_response(LECTURE_PAGE))  # then close: Connection: close


def _upper_after_eof_handler(conn: socket.socket) -> None:
    request = b""
    while data := conn.recv(4096):  # the whole request: until the client's FIN
        request += data
    conn.sendall(request.upper())


def _chunk_reader(conn: socket.socket) -> None:
    while conn.recv(CHUNK_RECV):  # ...read in 256-byte pieces
        pass


def _utf8_sender(conn: socket.socket) -> None:
    data = ECHO_MESSAGE.encode("utf-8")
    conn.sendall(data[:UTF8_CUT])
    time.sleep(UTF8_PAUSE)  # the client's recv returns the first part meanwhile
    conn.sendall(data[UTF8_CUT:])


# -- scenarios -----------------------------------------------------------------------------


TracedBlock = Callable[[], contextlib.AbstractContextManager[Any]]


def _with_server(block: TracedBlock, handle: Callable[[socket.socket], None], *,
                 traced: bool, client: Callable[[int], str]) -> str:
    if traced:
        with block():
            server = _Server(_listen(socket.socket), handle, traced=True)
            try:
                return client(server.port)
            finally:
                server.join()
    listener = _listen(_REAL_SOCKET)
    with block():
        server = _Server(listener, handle, traced=False)
        try:
            return client(server.port)
        finally:
            server.join()


def _run_echo(block: TracedBlock) -> str:
    return _with_server(block, _echo_handler, traced=True,
                        client=lambda port: f"reply {echo_client(HOST, port)!r}")


def _run_http_close(block: TracedBlock) -> str:
    return _with_server(block, _http_handler, traced=False, client=lambda port:
                        f"{len(http_close_client(HOST, port))} bytes of contents")


def _run_http_makefile(block: TracedBlock) -> str:
    return _with_server(block, _http_handler, traced=False, client=lambda port:
                        f"{len(http_makefile_client(HOST, port))} bytes of contents")


HALF_CLOSE_LINES = (b"first request line\r\n", b"second request line\r\n")


def _run_half_close(block: TracedBlock) -> str:
    return _with_server(block, _upper_after_eof_handler, traced=True, client=lambda port:
                        f"reply {half_close_client(HOST, port, HALF_CLOSE_LINES)!r}")


def _run_refused(block: TracedBlock) -> str:
    probe = _REAL_SOCKET(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()  # bound, never listened: nobody accepts on this port now
    with block():
        return refused_client(HOST, port)


CHUNK_MESSAGE = b"".join(b"%03d:" % i + b"x" * 45 + b"\n" for i in range(20))
assert len(CHUNK_MESSAGE) == CHUNK_SEND


def _run_chunking(block: TracedBlock) -> str:
    return _with_server(block, _chunk_reader, traced=True, client=lambda port:
                        f"sent {chunking_client(HOST, port, CHUNK_MESSAGE)} bytes in one send")


def _run_utf8_split(block: TracedBlock) -> str:
    def client(port: int) -> str:
        chunks, failures, text = utf8_client(HOST, port)
        return (f"chunks {[len(c) for c in chunks]}, per-chunk decode failed "
                f"{len(failures)}x, joined {text!r}")

    return _with_server(block, _utf8_sender, traced=True, client=client)


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
    options: dict[str, Any] = {"argv": ["tracesock", "demo", scenario.name], "warn": say}
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
    """``tracesock demo [NAME...] [--out DIR] [--no-capture] [--list]``."""
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
    return 0


__all__ = [
    "SCENARIOS",
    "DemoResult",
    "Scenario",
    "get_scenario",
    "run_scenario",
    "scenario_names",
]
