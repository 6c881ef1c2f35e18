"""Shared fixtures: real servers on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# Private instances of redis, MariaDB, PostgreSQL and mosquitto (tests/realservers.py).
pytest_plugins = ["realservers"]

# The lecture's test page, served locally (the notes fetch it from a university host).
LECTURE_PAGE = (
    "<html>\n<head>\n<title>Test Page</title>\n</head>\n\n<body>\n"
    "<h1>Information and Communications Engineering</h1>\n"
    "<p>한국외국어대학교 정보통신공학과</p>\n" + "<p>TCP/IP Protocol Suits</p>\n" * 40 + "</html>\n"
).encode()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """An echo server on 127.0.0.1 (created untraced, before any trace starts)."""
    with _Server(("127.0.0.1", 0), _EchoHandler) as srv:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
        t.start()
        yield srv.server_address[0], srv.server_address[1]
        srv.shutdown()


class _PageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = LECTURE_PAGE if self.path.startswith("/test/") else b"not found\n"
        self.send_response(200 if self.path.startswith("/test/") else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        if self.headers.get("Connection", "").lower() == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        # A fixed Date header: two runs of a client that prints the headers must print
        # the same bytes, even across a second boundary.
        return "Fri, 10 May 2019 05:23:49 GMT"


@pytest.fixture
def http_server() -> Iterator[str]:
    """An HTTP/1.1 server on 127.0.0.1 serving the lecture page at /test/index.html."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/test/index.html"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def free_port() -> int:
    """A loopback port with no listener (for refused connects)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port
