"""Replay: real loopback exchanges recorded with known chunking, replayed byte for byte."""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

import tracesock
from tracesock import ReplayError, ReplayMismatch, TraceFormatError, TraceVersionError
from tracesock.record.recorder import Recorder
from tracesock.replay import ReplaySocket, replay

RealSocket = socket.socket  # taken before any trace or replay swaps it
PAUSE = 0.05
PIECES = [b"HTTP/1.0 200 OK\r\n", b"Content-Type: text/plain\r\nContent-Le",
          b"ngth: 11\r\n\r\nhel", b"lo world"]
REQUEST = b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n"


@contextmanager
def piece_server(pieces: list[bytes], *, pause: float = PAUSE, connections: int = 1,
                 end: Callable[[socket.socket], None] | None = None) -> Iterator[int]:
    """An untraced server on 127.0.0.1: reads a request, sends ``pieces`` with pauses
    between them (so each arrives as its own recv), then closes (or calls ``end``)."""
    srv = RealSocket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        for _ in range(connections):
            conn, _ = srv.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                req = b""
                while b"\r\n\r\n" not in req:
                    data = conn.recv(1024)
                    if not data:
                        break
                    req += data
                for piece in pieces:
                    time.sleep(pause)
                    conn.sendall(piece)
                if end is not None:
                    end(conn)
                else:
                    time.sleep(pause)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        t.join(5)
        srv.close()


def fetch(port: int, host: str = "127.0.0.1", bufsize: int = 4096) -> list[bytes]:
    """The lecture's loop: send the request, recv until b''."""
    s = socket.create_connection((host, port))
    try:
        s.sendall(REQUEST)
        chunks = []
        while True:
            data = s.recv(bufsize)
            chunks.append(data)
            if not data:
                return chunks
    finally:
        s.close()


def client_connection(path: Path) -> tracesock.Connection:
    # The untraced server's accepted socket is traced too (accept builds it through
    # socket.socket), so pick the client.
    (conn,) = [c for c in tracesock.load(str(path)).connections.values() if c.role == "client"]
    return conn


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, int, list[bytes]]:
    path = tmp_path / "pieces.jsonl"
    with piece_server(PIECES) as port, tracesock.trace(str(path)):
        chunks = fetch(port)
    return path, port, chunks


def test_recording_has_the_server_pieces(recorded: tuple[Path, int, list[bytes]]) -> None:
    path, _, chunks = recorded
    assert chunks == [*PIECES, b""]
    conn = client_connection(path)
    assert conn.recv_chunks == [len(p) for p in PIECES] + [0]


def test_replay_gives_identical_chunks_every_time(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, chunks = recorded
    for _ in range(25):
        with replay(path):
            assert fetch(port) == chunks


def test_replay_needs_no_server(recorded: tuple[Path, int, list[bytes]]) -> None:
    path, _, chunks = recorded
    with replay(path):
        assert fetch(1) == chunks  # nothing listens on port 1: loopback ports are not matched


def test_smaller_bufsize_gets_the_head_then_the_rest(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, _ = recorded
    with replay(path):
        got = fetch(port, bufsize=10)
    expected = [p[i:i + 10] for p in PIECES for i in range(0, len(p), 10)]
    assert got == [*expected, b""]


def test_recv_into_recvfrom_and_peek(recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, _ = recorded
    with replay(path):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(REQUEST)
        assert s.recv(4, socket.MSG_PEEK) == b"HTTP"
        buf = bytearray(100)
        n = s.recv_into(buf, 4)
        assert bytes(buf[:n]) == b"HTTP"
        data, _ = s.recvfrom(4096)
        assert data == PIECES[0][4:]
        assert s.recv(4096) == PIECES[1]
        s.close()


def test_concat_and_strict_send_checks(recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, chunks = recorded

    def piecewise() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            for i in range(0, len(REQUEST), 7):
                assert s.send(REQUEST[i:i + 7]) == len(REQUEST[i:i + 7])
            return [s.recv(4096) for _ in chunks]

    with replay(path):  # concat: sendall recorded, several sends replayed
        assert piecewise() == chunks
    with pytest.raises(ReplayMismatch, match=r"strict.*send call #1 was send of 7 bytes; "
                                             r"the recording has sendall of 37 bytes"), \
            replay(path, check="strict"):
        piecewise()


def test_mismatch_names_connection_offset_seq_and_bytes(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, _ = recorded
    with pytest.raises(ReplayMismatch) as info, replay(path), \
            socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUEST[:4])
        s.sendall(b"/x" + REQUEST[5:])
    msg = str(info.value)
    assert "connection #1" in msg and "at byte 5 of the outgoing stream" in msg
    seq = next(e.seq for e in tracesock.load(str(path)).events if e.op == "sendall")
    assert f"sendall seq {seq}, byte 5 of it" in msg
    assert "expected: b'GET / HTTP/1.0" in msg and "actual:   b'GET /x HTTP" in msg
    lines = msg.splitlines()
    assert lines[-1].index("^") == lines[-2].index("x HTTP")


def test_unsent_recorded_bytes_fail_at_the_end(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, _ = recorded
    with pytest.raises(ReplayMismatch, match=r"sent 10 bytes but the recording sent 37"), \
            replay(path):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(REQUEST[:10])
        s.close()
    with replay(path, check="off"):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"anything at all")
        assert s.recv(4096) == PIECES[0]
        s.close()


def test_socket_matching_no_recording_fails_clearly(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, _, _ = recorded
    # IPv6 loopback against a recorded IPv4 connection: nothing matches, and nothing
    # would leave the machine even if replay let it through.
    with pytest.raises(ReplayError, match=r"no recorded connection matches connect to "
                                          r"\[?::1\]?:80 .*#1 connect"), replay(path):
        socket.create_connection(("::1", 80))


def test_a_caught_replay_error_still_fails_the_replay(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, _, _ = recorded
    with pytest.raises(ReplayError, match="caught by the code"), replay(path, check="off"), \
            suppress(Exception):
        socket.create_connection(("::1", 80))


def test_hostname_resolves_through_the_recording(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, chunks = recorded
    with replay(path):
        assert fetch(port, host="no-such-host.invalid") == chunks
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("other.invalid", 443)
    assert socket.getaddrinfo is not None  # restored


def test_replayed_socket_is_a_socket_and_select_works(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, _ = recorded
    with replay(path) as rp:
        s = socket.create_connection(("127.0.0.1", port))
        assert isinstance(s, socket.socket) and isinstance(s, rp.socket_class)
        assert s.family == socket.AF_INET and s.type == socket.SOCK_STREAM
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
            assert [ev for _, ev in sel.select(0)] == [selectors.EVENT_WRITE]
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(4096)  # the server answers only once the request is sent
            s.sendall(REQUEST)
            got = []
            while True:
                (_, ev), = sel.select(1)
                if ev & selectors.EVENT_READ:
                    data = s.recv(4096)
                    got.append(data)
                    if not data:
                        break
        assert got == [*PIECES, b""]
        a, b = socket.socketpair()  # local pairs stay real
        assert type(a) is RealSocket
        a.close()
        b.close()
        s.close()
    assert socket.socket is RealSocket


def test_settimeout_and_makefile_readline(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    pieces = [b"line one\r\nline t", b"wo\r\n", b"\r\nbody"]

    def read_lines(port: int) -> list[bytes]:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.settimeout(2.0)
        s.sendall(REQUEST)
        f = s.makefile("rb")
        lines = [f.readline() for _ in range(3)]
        lines.append(f.read())
        f.close()
        s.close()
        return lines

    with piece_server(pieces) as port, tracesock.trace(str(path)):
        recorded = read_lines(port)
    assert recorded == [b"line one\r\n", b"line two\r\n", b"\r\n", b"body"]
    for _ in range(5):
        with replay(path):
            assert read_lines(port) == recorded


class _LecturePage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = ("<html>\n<head>\n<title>Test Page</title>\n</head>\n<body>\n"
            "<p>한국외국어대학교 정보통신공학과</p>\n" + "<p>TCP/IP Protocol Suits</p>\n" * 300
            + "</body>\n</html>\n").encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(self.body[:1000])
        self.wfile.flush()
        time.sleep(PAUSE)
        self.wfile.write(self.body[1000:])

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_lecture_http_fetch_with_connection_close(tmp_path: Path) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _LecturePage)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    port = srv.server_address[1]
    path = tmp_path / "lecture.jsonl"

    def get() -> list[bytes]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /test/index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Connection: close\r\n\r\n")
        chunks = []
        while data := s.recv(4096):
            chunks.append(data)
        s.close()
        return chunks

    try:
        with tracesock.trace(str(path)):
            chunks = get()
    finally:
        srv.shutdown()
        srv.server_close()
    assert b"".join(chunks).endswith(_LecturePage.body)
    conn = client_connection(path)
    assert [len(c) for c in chunks] + [0] == conn.recv_chunks
    for _ in range(10):
        with replay(path):
            assert get() == chunks


def test_server_under_test_accepts_recorded_connections(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"

    def server(ready: threading.Event, port: list[int]) -> list[bytes]:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port.append(srv.getsockname()[1])
        ready.set()
        got = []
        for _ in range(2):
            conn, _ = srv.accept()
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(3)
            got.append(data)
            conn.sendall(b"you said " + data)
            conn.close()
        srv.close()
        return got

    def client(port: int, text: bytes) -> bytes:
        c = RealSocket()  # untraced: only the server is under test
        c.connect(("127.0.0.1", port))
        for i in range(0, len(text), 4):
            c.sendall(text[i:i + 4])
            time.sleep(0.01)
        reply = b""
        while data := c.recv(100):
            reply += data
        c.close()
        return reply

    ready, port = threading.Event(), []
    with tracesock.trace(str(path)):
        result: list[list[bytes]] = []
        t = threading.Thread(target=lambda: result.append(server(ready, port)))
        t.start()
        ready.wait(5)
        assert client(port[0], b"hello there\n") == b"you said hello there\n"
        assert client(port[0], b"second\n") == b"you said second\n"
        t.join(5)
    for _ in range(5):
        with replay(path):
            assert server(threading.Event(), []) == result[0]


def test_both_sides_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "both.jsonl"

    def run() -> bytes:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def serve() -> None:
            conn, _ = srv.accept()
            conn.sendall(conn.recv(100).upper())
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        c = socket.create_connection(srv.getsockname())
        c.sendall(b"ping")
        reply = c.recv(100)
        c.close()
        t.join(5)
        srv.close()
        return reply

    with tracesock.trace(str(path)):
        assert run() == b"PING"
    with replay(path):
        assert run() == b"PING"


def test_listener_is_readable_when_an_accept_waits(tmp_path: Path) -> None:
    path = tmp_path / "sel.jsonl"
    with piece_server([b"x"]) as port, tracesock.trace(str(path)):
        fetch(port)
    # A recorded listener: build one by hand-recording a server that accepted once.
    srv_path = tmp_path / "srv.jsonl"
    with tracesock.trace(str(srv_path)):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        c = RealSocket()
        c.connect(srv.getsockname())
        conn, _ = srv.accept()
        conn.close()
        c.close()
        srv.close()
    with replay(srv_path):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with selectors.DefaultSelector() as sel:
            sel.register(srv, selectors.EVENT_READ)
            assert len(sel.select(0)) == 1
            conn, _ = srv.accept()
            assert sel.select(0) == []
            srv.settimeout(0.01)
            with pytest.raises(TimeoutError):
                srv.accept()  # nothing more recorded: blocks like a kernel, then times out
        conn.close()
        srv.close()


def test_refused_connect_is_reproduced(tmp_path: Path) -> None:
    port_sock = RealSocket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    path = tmp_path / "refused.jsonl"
    with tracesock.trace(str(path)), pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port))
    with replay(path), pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection(("127.0.0.1", port))
    assert info.value.errno == errno.ECONNREFUSED


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_reset_is_reproduced_at_the_same_point(tmp_path: Path) -> None:
    path = tmp_path / "reset.jsonl"

    def until_error(port: int) -> tuple[list[bytes], str]:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(REQUEST)
        got = []
        try:
            while data := s.recv(4096):
                got.append(data)
            return got, "eof"
        except ConnectionResetError as exc:
            return got, type(exc).__name__
        finally:
            s.close()

    with piece_server([b"partial ", b"answer"], end=_reset) as port, \
            tracesock.trace(str(path)):
        recorded = until_error(port)
    assert recorded == ([b"partial ", b"answer"], "ConnectionResetError")
    for _ in range(3):
        with replay(path):
            assert until_error(port) == recorded


def test_timeout_is_reproduced_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "timeout.jsonl"

    def slow(port: int) -> list[object]:
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(0.2)
        s.sendall(REQUEST)
        out: list[object] = []
        for _ in range(3):
            try:
                out.append(s.recv(4096))
            except TimeoutError:
                out.append("timeout")
        s.close()
        return out

    with piece_server([b"first", b"second"], pause=0.3) as port, tracesock.trace(str(path)):
        recorded = slow(port)
    assert recorded == ["timeout", b"first", "timeout"]
    start = time.monotonic()
    with replay(path):
        assert slow(port) == recorded
    assert time.monotonic() - start < 0.1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_realtime_sleeps_the_recorded_gaps_on_an_injected_clock(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, chunks = recorded
    with replay(path) as rp:
        assert fetch(port) == chunks
    fake = FakeClock()
    with replay(path, realtime=True, clock=fake.clock, sleep=fake.sleep):
        assert fetch(port) == chunks
    assert len(fake.sleeps) >= len(PIECES)
    assert sum(fake.sleeps) == pytest.approx(PAUSE * (len(PIECES) + 1), abs=0.04)
    fast = FakeClock()
    with replay(path, realtime=4.0, clock=fast.clock, sleep=fast.sleep):
        fetch(port)
    assert sum(fast.sleeps) == pytest.approx(sum(fake.sleeps) / 4, rel=0.01)
    assert rp.errors == []


def test_replay_socket_from_a_loaded_connection(
        recorded: tuple[Path, int, list[bytes]]) -> None:
    path, _, chunks = recorded
    s = ReplaySocket.from_connection(client_connection(path))
    assert isinstance(s, socket.socket)
    s.sendall(REQUEST)
    assert [s.recv(4096) for _ in chunks] == chunks
    assert s.recv(4096) == b""  # after FIN, b'' again
    s.close()
    s = ReplaySocket.from_chunks([b"ab", b"c"])
    assert [s.recv(10), s.recv(10), s.recv(10)] == [b"ab", b"c", b""]
    s.close()


def test_recv_after_close_fails_as_on_a_closed_socket() -> None:
    # Recorded chunks are still queued: close() must drop them, not let recv hand them out.
    s = ReplaySocket.from_chunks([b"ab", b"cd", b"ef"])
    assert s.recv(10) == b"ab"
    s.close()
    with pytest.raises(OSError) as exc:
        s.recv(10)
    assert exc.value.errno == errno.EBADF


def test_short_send_is_reproduced(tmp_path: Path) -> None:
    path = tmp_path / "short.jsonl"
    with Recorder.open(str(path)) as rec:  # the real recorder, fed the facts of a short send
        rec.event(1, "socket", rec.now(), {"family": "AF_INET", "kind": "SOCK_STREAM"})
        rec.event(1, "connect", rec.now(), {"args": {"address": ["127.0.0.1", 7]},
                                            "raddr": ["127.0.0.1", 7]})
        rec.transfer(1, "send", rec.now(), 4, b"0123456789", {})
        rec.transfer(1, "send", rec.now(), 6, b"456789", {})
    with replay(path, check="strict"):
        s = socket.create_connection(("127.0.0.1", 7))
        assert s.send(b"0123456789") == 4
        assert s.send(b"456789") == 6
        s.close()


# -- bad input -------------------------------------------------------------------------


def test_trace_from_a_newer_format_version(recorded: tuple[Path, int, list[bytes]]) -> None:
    path, _, _ = recorded
    lines = path.read_bytes().splitlines(keepends=True)
    head = orjson.loads(lines[0])
    head["version"] = 99
    path.write_bytes(orjson.dumps(head) + b"\n" + b"".join(lines[1:]))
    with pytest.raises(TraceVersionError, match="version 99 is not supported"), replay(path):
        pass


def test_truncated_trace(recorded: tuple[Path, int, list[bytes]]) -> None:
    path, port, _ = recorded
    data = path.read_bytes()
    cut = data.index(b'"op":"recv"')
    path.write_bytes(data[:cut + 40])  # killed mid-line, in the first recv
    with pytest.raises(ReplayError, match=r"trace is incomplete.*killed"), replay(path):
        fetch(port)
    path.write_bytes(data[:cut] + b"\x00garbage\n" + data[cut:])
    with pytest.raises(TraceFormatError, match=r":\d+: not valid JSON"), replay(path):
        fetch(port)


def test_trace_recorded_without_payload(tmp_path: Path) -> None:
    path = tmp_path / "nopayload.jsonl"
    with piece_server(PIECES) as port, tracesock.trace(str(path), payload=False):
        fetch(port)
    with pytest.raises(ReplayError, match=r"payload=False.*cannot be replayed"), replay(path):
        pass


def test_bad_options() -> None:
    with pytest.raises(tracesock.UsageError):
        ReplaySocket()
    with pytest.raises(tracesock.UsageError):
        ReplaySocket.from_chunks([b"a", b"", b"b"])
