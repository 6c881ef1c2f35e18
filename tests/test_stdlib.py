"""Real stdlib clients and servers behave the same traced and untraced, and are traced."""

from __future__ import annotations

import asyncio
import ftplib
import http.client
import smtplib
import socket
import socketserver
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import tracesock
from tests.conftest import LECTURE_PAGE


def run_both(tmp_path: Path, fn: Callable[[], Any]) -> tuple[Any, Any, tracesock.Trace]:
    """fn() untraced, then traced: both results, and the trace."""
    plain = fn()
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        traced = fn()
    return plain, traced, tracesock.load(str(out))


def clients(trace: tracesock.Trace) -> list[tracesock.Connection]:
    return [c for c in trace.connections.values() if c.role == "client"]


def test_http_client_and_urllib(tmp_path: Path, http_server: str) -> None:
    def fetch() -> tuple[int, bytes, bytes]:
        host_port = http_server.split("/")[2]
        conn = http.client.HTTPConnection(host_port, timeout=5)
        conn.request("GET", "/test/index.html", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        with urllib.request.urlopen(http_server, timeout=5) as r:
            body2 = r.read()
        return resp.status, body, body2

    plain, traced, trace = run_both(tmp_path, fetch)
    assert plain == traced == (200, LECTURE_PAGE, LECTURE_PAGE)
    cs = clients(trace)
    assert len(cs) == 2
    for c in cs:
        assert c.bytes_received >= len(LECTURE_PAGE)
        received = b"".join(e.data or b"" for e in c.events if e.is_recv)
        assert received.endswith(LECTURE_PAGE)


class _Upper(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


def test_socketserver_built_inside_the_trace(tmp_path: Path) -> None:
    def serve_once() -> bytes:
        with socketserver.TCPServer(("127.0.0.1", 0), _Upper) as srv:
            t = threading.Thread(target=srv.handle_request)
            t.start()
            with socket.create_connection(srv.server_address) as c:
                c.sendall(b"hello\n")
                got = c.recv(100)
            t.join()
        return got

    plain, traced, trace = run_both(tmp_path, serve_once)
    assert plain == traced == b"HELLO\n"
    roles = sorted(c.role for c in trace.connections.values())
    assert roles == ["client", "listener", "server"]
    server = next(c for c in trace.connections.values() if c.role == "server")
    assert server.bytes_received == 6 and server.bytes_sent == 6


def test_asyncio_streams(tmp_path: Path) -> None:
    async def main() -> bytes:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write((await r.readline())[::-1])
            await w.drain()
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"abc\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    plain, traced, trace = run_both(tmp_path, lambda: asyncio.run(main()))
    assert plain == traced == b"\ncba"
    payload = b"".join(e.data or b"" for e in trace.events if e.is_send)
    assert b"abc\n" in payload and b"\ncba" in payload


class _LineServer(socketserver.StreamRequestHandler):
    """Just enough FTP/SMTP to greet, answer and say goodbye."""

    greeting = b""
    replies: ClassVar[dict[bytes, bytes]] = {}

    def handle(self) -> None:
        self.wfile.write(self.greeting)
        for line in self.rfile:
            verb = line.split()[0].upper() if line.split() else b""
            self.wfile.write(self.replies.get(verb, b"250 ok\r\n"))
            if verb == b"QUIT":
                return


class _Ftp(_LineServer):
    greeting = b"220 tracesock test ftp\r\n"
    replies: ClassVar[dict[bytes, bytes]] = {b"USER": b"331 password\r\n", b"PASS": b"230 in\r\n",
               b"PWD": b'257 "/lecture"\r\n', b"QUIT": b"221 bye\r\n"}


class _Smtp(_LineServer):
    greeting = b"220 tracesock test smtp\r\n"
    replies: ClassVar[dict[bytes, bytes]] = {
        b"EHLO": b"250-localhost\r\n250 8BITMIME\r\n",
        b"QUIT": b"221 bye\r\n",
    }


@pytest.fixture
def line_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    handler = request.param
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv.server_address[0], srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("line_server", [_Ftp], indirect=True)
def test_ftplib(tmp_path: Path, line_server: tuple[str, int]) -> None:
    def session() -> str:
        ftp = ftplib.FTP()
        ftp.connect(*line_server, timeout=5)
        ftp.login("student", "pw")
        cwd = ftp.pwd()
        ftp.quit()
        return cwd

    plain, traced, trace = run_both(tmp_path, session)
    assert plain == traced == "/lecture"
    (c,) = clients(trace)
    sent = b"".join(e.data or b"" for e in c.events if e.is_send)
    assert sent.startswith(b"USER student\r\nPASS pw\r\nPWD\r\nQUIT\r\n")


@pytest.mark.parametrize("line_server", [_Smtp], indirect=True)
def test_smtplib(tmp_path: Path, line_server: tuple[str, int]) -> None:
    def session() -> tuple[int, bytes]:
        with smtplib.SMTP(*line_server, timeout=5) as smtp:
            code, msg = smtp.ehlo("client.invalid")
        return code, msg

    plain, traced, trace = run_both(tmp_path, session)
    assert plain == traced == (250, b"localhost\n8BITMIME")
    (c,) = clients(trace)
    assert [e.op for e in c.events][:3] == ["socket", "settimeout", "connect"]
    assert any(e.data == b"ehlo client.invalid\r\n" for e in c.events if e.is_send)
