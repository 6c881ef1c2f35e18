"""The re-chunking fuzzer, shown on a header parser written the naive way and the right way."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings

import tracesock
from tracesock.replay import ReplaySocket, rechunk, replay

RealSocket = socket.socket
HEAD = ["HTTP/1.1 200 OK\r\n", "Content-Type: text/html; charset=utf-8\r\n",
        "X-Title: 정보통신공학과\r\n", "Content-Length: 2\r\n", "\r\n"]
RESPONSE = "".join(HEAD).encode() + b"ok"
EXPECTED = ("HTTP/1.1 200 OK", {"content-type": "text/html; charset=utf-8",
                                "x-title": "정보통신공학과", "content-length": "2"})


def naive_headers(sock: socket.socket) -> tuple[str, dict[str, str]]:
    """The naive way: one recv is one line."""
    status = sock.recv(4096).decode().strip()
    headers = {}
    while (line := sock.recv(4096).decode()) != "\r\n":
        name, value = line.strip().split(":", 1)
        headers[name.lower()] = value.strip()
    return status, headers


def correct_headers(sock: socket.socket) -> tuple[str, dict[str, str]]:
    """The right way: buffer bytes until the blank line, decode once, whole."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("connection closed inside the header")
        buf += data
    status, *lines = buf.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    return status, {n.lower(): v.strip() for n, v in (ln.split(":", 1) for ln in lines)}


def parse(parser: object, chunks: list[bytes]) -> object:
    with ReplaySocket.from_chunks(chunks) as sock:
        try:
            return parser(sock)  # type: ignore[operator]
        except (ValueError, UnicodeDecodeError) as exc:
            return exc


# -- the helpers -----------------------------------------------------------------------


def test_every_chunking_joins_back_to_the_data() -> None:
    cases = list(rechunk.chunkings(RESPONSE, seed=3))
    assert all(b"".join(c.chunks) == RESPONSE for c in cases)
    names = [c.name for c in cases]
    assert names[:2] == ["whole", "bytewise"]
    assert len(set(names)) == len(names)
    assert {c.chunks for c in rechunk.single_splits(RESPONSE)} <= {c.chunks for c in cases}
    assert rechunk.byte_by_byte(b"abc").chunks == (b"a", b"b", b"c")
    assert [c.chunks for c in rechunk.single_splits(b"abc")] == [(b"a", b"bc"), (b"ab", b"c")]
    assert rechunk.split_at(b"", (1,)) == ()


def test_utf8_splits_cut_inside_characters() -> None:
    data = "a정b".encode()  # 정 is 3 bytes
    cuts = [c.chunks for c in rechunk.utf8_splits(data)]
    assert cuts == [(b"a\xec", b"\xa0\x95b"), (b"a\xec\xa0", b"\x95b")]
    for first, _ in cuts:
        with pytest.raises(UnicodeDecodeError):
            first.decode()


def test_random_splits_are_seeded() -> None:
    a = [c.chunks for c in rechunk.random_splits(RESPONSE, seed=7, count=10)]
    b = [c.chunks for c in rechunk.random_splits(RESPONSE, seed=7, count=10)]
    c = [c.chunks for c in rechunk.random_splits(RESPONSE, seed=8, count=10)]
    assert a == b != c
    assert all(2 <= len(x) <= 8 for x in a)


# -- a recorded exchange, re-chunked ---------------------------------------------------


@pytest.fixture
def recorded_headers(tmp_path: Path) -> Path:
    """A real loopback exchange where the server sends one header line per segment,
    with pauses: the chunking under which the naive parser happens to work."""
    srv = RealSocket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.recv(1024)
            for line in [*HEAD, "ok"]:
                conn.sendall(line.encode())
                time.sleep(0.03)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    path = tmp_path / "headers.jsonl"
    with tracesock.trace(str(path)):
        sock = socket.create_connection(srv.getsockname())
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert naive_headers(sock) == EXPECTED
        assert sock.recv(4096) == b"ok"
        sock.close()
    t.join(5)
    srv.close()
    return path


def test_naive_parser_passes_on_the_recording_and_fails_rechunked(
        recorded_headers: Path) -> None:
    with replay(recorded_headers, check="off"):
        sock = socket.create_connection(("127.0.0.1", 80))
        assert naive_headers(sock) == EXPECTED  # the recording's chunking, replayed
        assert sock.recv(4096) == b"ok"
        sock.close()
    conns = tracesock.load(str(recorded_headers)).connections.values()
    (client,) = [c for c in conns if c.role == "client"]
    data = rechunk.incoming(client)
    assert data == RESPONSE
    failures = [c.name for c in rechunk.chunkings(data) if parse(naive_headers,
                                                                 list(c.chunks)) != EXPECTED]
    assert "whole" in failures and "bytewise" in failures
    assert any(name.startswith("utf8@") for name in failures)
    for c in rechunk.chunkings(data):
        assert parse(correct_headers, list(c.chunks)) == EXPECTED, c.name


@rechunk.parametrize(RESPONSE, random_count=10)
def test_correct_parser_under_every_chunking(chunks: list[bytes]) -> None:
    assert parse(correct_headers, chunks) == EXPECTED


@settings(max_examples=60, deadline=None)
@given(rechunk.strategy(RESPONSE))
def test_correct_parser_under_hypothesis_chunkings(chunks: list[bytes]) -> None:
    assert b"".join(chunks) == RESPONSE
    assert parse(correct_headers, chunks) == EXPECTED


def test_importing_tracesock_loads_neither_hypothesis_nor_pytest() -> None:
    code = ("import sys, tracesock, tracesock.replay.rechunk, tracesock.replay\n"
            "bad = [m for m in ('hypothesis', 'scapy') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
