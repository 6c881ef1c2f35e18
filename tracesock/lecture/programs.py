"""The lecture's programs: the clients exactly as the notes write them, and the servers
the demo runs for them on 127.0.0.1 (demo.py runs each pair as a scenario).

A server that must stay untraced (the web server: in the notes it is someone else's
machine) builds its listener before the trace starts and wraps accepted descriptors in
the real socket class itself (``accept_untraced``): ``trace()`` replaces
``socket.socket`` for the whole process, and the stdlib's ``socket.accept()`` builds the
accepted socket through that module attribute.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import TracesockError

# A scenario's traced block: demo.py hands each scenario the trace (and capture) to run in.
TracedBlock = Callable[[], contextlib.AbstractContextManager[Any]]

HOST = "127.0.0.1"
ATTEMPTS = 3  # runs of a scenario whose point depends on timing
JOIN_TIMEOUT = 10.0  # seconds a server thread may take after its client finished
ECHO_MESSAGE = "Hello, 대한민국!"  # 20 bytes in UTF-8, as in the notes
CHUNK_SEND = 1000  # the notes' question: does a 1,000-byte send arrive as one recv?
CHUNK_RECV = 256
UTF8_CUT = 8  # 'Hello, ' is 7 bytes; '대' is bytes 7..9, so the cut falls inside it
UTF8_PAUSE = 0.2

# The socket class as it was when tracesock.demo was imported (before any trace).
REAL_SOCKET: type[socket.socket] = socket.socket

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


def listen_on_loopback(cls: type[socket.socket]) -> socket.socket:
    listener = cls(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(5)
    return listener


def accept_untraced(listener: socket.socket) -> socket.socket:
    """accept(), but the connected socket is a plain socket even while a trace runs."""
    fd, _ = listener._accept()  # type: ignore[attr-defined]
    conn = REAL_SOCKET(listener.family, listener.type, listener.proto, fileno=fd)
    conn.settimeout(JOIN_TIMEOUT)
    return conn


class Server:
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
                conn = accept_untraced(self.listener)
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


def echo_handler(conn: socket.socket) -> None:
    while data := conn.recv(1024):
        conn.sendall(data)


def http_response(body: bytes) -> bytes:
    head = ("HTTP/1.1 200 OK\r\nServer: tracesock-demo\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            "Content-Type: text/html\r\n\r\n")
    return head.encode("ascii") + body


def http_handler(conn: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        data = conn.recv(4096)
        if not data:
            return
        request += data
    conn.sendall(http_response(LECTURE_PAGE))  # then close: Connection: close


def upper_after_eof_handler(conn: socket.socket) -> None:
    request = b""
    while data := conn.recv(4096):  # the whole request: until the client's FIN
        request += data
    conn.sendall(request.upper())


def chunk_reader(conn: socket.socket) -> None:
    while conn.recv(CHUNK_RECV):  # ...read in 256-byte pieces
        pass


def utf8_sender(conn: socket.socket) -> None:
    data = ECHO_MESSAGE.encode("utf-8")
    conn.sendall(data[:UTF8_CUT])
    time.sleep(UTF8_PAUSE)  # the client's recv returns the first part meanwhile
    conn.sendall(data[UTF8_CUT:])
