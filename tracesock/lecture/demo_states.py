"""The demo's scenarios about TCP states and the kernel's queues (demo.py registers them).

Theory of operation. Like the other scenarios, each runs on 127.0.0.1 only, inside the
traced block demo.py gives it, and every thread and process it starts has ended when the
block ends.

* ``backlog``: a listener with ``listen(1)`` that does not accept yet. Linux completes
  the handshake of backlog + 1 = 2 connections on its own (the accept queue); the third
  client's SYN is dropped, not refused, and its kernel sends it again (the capture shows
  the retransmissions: 1 s, then 2 s later on kernels before 6.5; newer ones retry the
  first SYNs every second, ``net.ipv4.tcp_syn_linear_timeouts``); its ``connect()``
  with a 3.5 s timeout fails with TimeoutError. Then the server accepts the two queued connections.
* ``shared-close``: the client forks after connecting; the parent's ``close()`` sends
  nothing because the child still holds the descriptor; the FIN leaves when the child,
  the last holder, closes it (after sending one more line).
* ``time-wait``: the server closes first (the active closer), so its end of the
  connection stays in TIME_WAIT (60 s on Linux); a new socket's ``bind()`` to the
  server's port, without SO_REUSEADDR, then fails with EADDRINUSE.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

from .programs import HOST, Server, TracedBlock, listen_on_loopback

BACKLOG = 1
BACKLOG_CLIENTS = 3
BACKLOG_TIMEOUT = 3.5  # seconds: time for two retransmissions, then connect() gives up
CHILD_PAUSE = 0.3
SERVER_LINE = b"bye from the server\r\n"


def run_backlog(block: TracedBlock) -> str:
    outcomes: list[str] = []
    with block():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        listener.listen(BACKLOG)
        port = listener.getsockname()[1]
        clients: list[socket.socket] = []
        try:
            for _ in range(BACKLOG_CLIENTS):
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                clients.append(c)
                c.settimeout(BACKLOG_TIMEOUT)
                started = time.monotonic()
                try:
                    c.connect((HOST, port))
                    outcomes.append("connected")
                except TimeoutError:
                    outcomes.append(f"TimeoutError after {time.monotonic() - started:.1f} s")
            for _ in range(sum(o == "connected" for o in outcomes)):
                conn, _ = listener.accept()  # now the queued connections are taken
                conn.close()
        finally:
            for c in clients:
                c.close()
            listener.close()
    return f"listen({BACKLOG}), {BACKLOG_CLIENTS} clients: " + ", ".join(outcomes)


def _read_all(received: list[bytes]) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        while data := conn.recv(1024):
            received.append(data)

    return handle


def run_shared_close(block: TracedBlock) -> str:
    received: list[bytes] = []
    with block():
        server = Server(listen_on_loopback(socket.socket), _read_all(received), traced=True)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.connect((HOST, server.port))
            s.sendall(b"from the parent\n")
            pid = os.fork()
            if pid == 0:  # the child: the last holder of the descriptor
                status = 0
                try:
                    time.sleep(CHILD_PAUSE)
                    s.sendall(b"from the child, after the parent's close()\n")
                    s.close()  # now the FIN goes
                except BaseException:
                    status = 1
                finally:
                    os._exit(status)
            s.close()  # the child still holds it: no FIN
            _, status = os.waitpid(pid, 0)
        finally:
            server.join()
    return (f"child exit {os.waitstatus_to_exitcode(status)}, server read "
            f"{b''.join(received)!r}")


def _close_first(conn: socket.socket) -> None:
    conn.sendall(SERVER_LINE)  # and the handler's end closes: the server is the active closer


def run_time_wait(block: TracedBlock) -> str:
    with block():
        server = Server(listen_on_loopback(socket.socket), _close_first, traced=True)
        port = server.port
        try:
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.connect((HOST, port))
            while c.recv(1024):  # until the server's FIN
                pass
            c.close()
        finally:
            server.join()
        again = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            again.bind((HOST, port))  # no SO_REUSEADDR: the port is still in TIME_WAIT
            result = "bind() succeeded (no TIME_WAIT left?)"
        except OSError as exc:
            result = f"bind() -> {errno.errorcode.get(exc.errno or 0, exc.errno)}"
        finally:
            again.close()
    return f"server port {port} in TIME_WAIT; {result}"


__all__ = ["run_backlog", "run_shared_close", "run_time_wait"]
