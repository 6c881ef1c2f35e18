"""TracedSocket against real loopback peers: what is recorded, and that nothing changes."""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import threading
from pathlib import Path

import pytest

import tracesock
from tracesock import Recorder, TracedSocket, UsageError


def ops(trace: tracesock.Trace, sock: int) -> list[str]:
    return [e.op for e in trace.events if e.sock == sock]


def client_conn(trace: tracesock.Trace) -> tracesock.Connection:
    (conn,) = [c for c in trace.connections.values() if c.role == "client"]
    return conn


def test_echo_exchange_is_recorded_call_by_call(tmp_path: Path,
                                                echo_server: tuple[str, int]) -> None:
    out = tmp_path / "echo.jsonl"
    with tracesock.trace(str(out)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(echo_server)
        msg = "Hello, 대한민국!".encode()
        assert s.send(msg) == 20
        reply = b""
        while len(reply) < 20:
            reply += s.recv(1024)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1024) == b""
        s.close()
    assert reply == msg
    trace = tracesock.load(str(out))
    assert trace.complete and trace.warnings == []
    conn = client_conn(trace)
    names = [e.op for e in conn.events]
    assert names[:3] == ["socket", "connect", "send"]
    assert names[-3:] == ["shutdown", "recv", "close"]
    send = conn.events[2]
    assert send.nbytes == 20 and send.data == msg
    assert conn.laddr[0] == "127.0.0.1" and conn.raddr == echo_server
    assert conn.bytes_sent == 20 and conn.bytes_received == 20
    assert conn.recv_chunks[-1] == 0  # the peer's FIN
    shutdown = next(e for e in conn.events if e.op == "shutdown")
    assert shutdown.args == {"how": "SHUT_WR"}
    seqs = [e.seq for e in trace.events]
    assert seqs == sorted(set(seqs))
    assert all(e.dur >= 0 for e in trace.events)


def test_accept_gives_a_child_with_its_parent(tmp_path: Path) -> None:
    out = tmp_path / "srv.jsonl"
    with tracesock.trace(str(out)):
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        c = socket.create_connection(lsock.getsockname())
        conn, addr = lsock.accept()
        assert isinstance(conn, socket.socket)
        assert addr == c.getsockname()
        conn.sendall(b"x" * 10)
        assert c.recv(10) == b"x" * 10
        for s in (c, conn, lsock):
            s.close()
    trace = tracesock.load(str(out))
    conns = trace.connections
    accept = next(e for e in trace.events if e.op == "accept")
    child = conns[accept.extra["accepted"]]
    assert child.parent == accept.sock
    assert child.role == "server" and conns[accept.sock].role == "listener"
    assert child.raddr == accept.raddr
    assert child.bytes_sent == 10


def test_makefile_reads_are_the_recv_into_calls_they_make(tmp_path: Path,
                                                          echo_server: tuple[str, int]) -> None:
    out = tmp_path / "mf.jsonl"
    with tracesock.trace(str(out)):
        s = socket.create_connection(echo_server)
        f = s.makefile("rwb")
        f.write(b"line one\nline two\n")
        f.flush()
        assert f.readline() == b"line one\n"
        s.close()  # the makefile object still holds the descriptor
        assert f.readline() == b"line two\n"
        f.close()  # now the descriptor is really closed
    conn = client_conn(tracesock.load(str(out)))
    names = [e.op for e in conn.events]
    assert "makefile" in names and "recv_into" in names
    close = next(e for e in conn.events if e.op == "close")
    assert close.extra["fd_closed"] is False
    assert names[-1] == "close_fd"
    assert b"".join(e.data or b"" for e in conn.events if e.op == "recv_into") == \
        b"line one\nline two\n"


def test_errors_are_recorded_and_reraised_unchanged(tmp_path: Path, free_port: int) -> None:
    out = tmp_path / "err.jsonl"
    with tracesock.trace(str(out)):
        s = socket.socket()
        with pytest.raises(ConnectionRefusedError) as info:
            s.connect(("127.0.0.1", free_port))
        assert info.value.errno == errno.ECONNREFUSED
        assert s.connect_ex(("127.0.0.1", free_port)) == errno.ECONNREFUSED
        s.close()
        a, b = socket.socketpair()
        a.settimeout(0.01)
        with pytest.raises(TimeoutError):
            a.recv(1)
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)
        a.close()
        b.close()
    trace = tracesock.load(str(out))
    refused = next(e for e in trace.events if e.op == "connect")
    assert refused.error is not None
    assert (refused.error.type, refused.error.errno) == ("ConnectionRefusedError",
                                                          errno.ECONNREFUSED)
    cex = next(e for e in trace.events if e.op == "connect_ex")
    assert cex.extra["result"] == errno.ECONNREFUSED
    recv_errors = [e.error.type for e in trace.events if e.op == "recv" and e.error]
    assert recv_errors == ["TimeoutError", "BlockingIOError"]


def test_udp_ipv6_unix_and_message_calls(tmp_path: Path) -> None:
    out = tmp_path / "misc.jsonl"
    with tracesock.trace(str(out)):
        u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u2.bind(("127.0.0.1", 0))
        assert u1.sendto(b"ping", u2.getsockname()) == 4
        data, addr = u2.recvfrom(100)
        assert data == b"ping" and addr[1] == u1.getsockname()[1]
        buf = bytearray(10)
        u1.sendto(b"pong", 0, u2.getsockname())
        n, _ = u2.recvfrom_into(buf)
        assert bytes(buf[:n]) == b"pong"
        for s in (u1, u2):
            s.close()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        assert a.sendmsg([b"ab", b"cd"]) == 4
        msg, anc, flags, _ = b.recvmsg(10)
        assert msg == b"abcd" and anc == [] and flags == 0
        a.sendall(memoryview(b"xyz"))
        assert b.recv_into(buf, 3) == 3
        fd = a.detach()
        os.close(fd)
        d = b.dup()
        d.close()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        b.close()
        if socket.has_ipv6:
            try:
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                v6.bind(("::1", 0))
            except OSError:
                pass  # no ::1 on this machine: the rest of the test still stands
            else:
                v6.sendto(b"six", v6.getsockname())
                assert v6.recv(10) == b"six"
                v6.close()
    trace = tracesock.load(str(out))
    by_op = {e.op: e for e in reversed(trace.events)}  # first of each op
    assert by_op["sendto"].args["address"][0] == "127.0.0.1"
    assert by_op["recvfrom"].data == b"ping"
    assert by_op["recvfrom_into"].data == b"pong"
    assert by_op["sendmsg"].data == b"abcd" and by_op["sendmsg"].nbytes == 4
    assert by_op["recvmsg"].data == b"abcd"
    assert by_op["sendall"].data == b"xyz"
    assert by_op["recv_into"].data == b"xyz"
    assert by_op["setsockopt"].args["option"] == "SO_SNDBUF"
    assert "detach" in by_op and "dup" in by_op
    assert {e.family for e in trace.events if e.op == "socket"} >= {"AF_INET", "AF_UNIX"}


def test_payload_policy_cap_and_redaction(tmp_path: Path) -> None:
    secret = b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cr3t-token\r\n\r\n"
    paths = {}
    for name, options in {
        "off": {"payload": False},
        "cap": {"max_payload": 5},
        "redact": {"redact": [r"Bearer \S+"]},
    }.items():
        paths[name] = out = tmp_path / f"{name}.jsonl"
        with tracesock.trace(str(out), **options):  # type: ignore[arg-type]
            a, b = socket.socketpair()
            a.sendall(secret)
            assert b.recv(1000) == secret  # the program still sees the real bytes
            a.close()
            b.close()
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    off = tracesock.load(str(paths["off"]))
    assert off.header.payload is False
    assert all(e.data is None for e in off.events)
    assert [e.nbytes for e in off.events if e.op == "sendall"] == [len(secret)]
    cap = tracesock.load(str(paths["cap"]))
    send = next(e for e in cap.events if e.op == "sendall")
    assert send.data == secret[:5] and send.truncated and send.nbytes == len(secret)
    red = tracesock.load(str(paths["redact"]))
    send = next(e for e in red.events if e.op == "sendall")
    assert send.data is not None and len(send.data) == len(secret)
    assert b"s3cr3t" not in paths["redact"].read_bytes()
    assert b"Authorization: " + b"*" * len(b"Bearer s3cr3t-token") in send.data


def test_socket_class_is_restored_even_when_the_block_raises(tmp_path: Path) -> None:
    original = socket.socket
    with pytest.raises(RuntimeError), tracesock.trace(str(tmp_path / "t.jsonl")):
        assert socket.socket is not original
        raise RuntimeError("boom")
    assert socket.socket is original
    assert tracesock.load(str(tmp_path / "t.jsonl")).complete


def test_traced_socket_stays_a_socket(tmp_path: Path) -> None:
    plain = socket.socket()
    with tracesock.trace(str(tmp_path / "t.jsonl")):
        s = socket.socket()
        assert isinstance(s, socket.socket) and isinstance(plain, socket.socket)
        assert issubclass(type(s), socket.socket)
        assert repr(s).startswith("<socket.socket fd=")
        s.close()
        assert "[closed]" in repr(s)
    assert isinstance(s, socket.socket)
    plain.close()


def test_traced_socket_needs_a_recorder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a recorder"):
        TracedSocket()
    with Recorder.open(str(tmp_path / "direct.jsonl")) as rec:
        s = TracedSocket(socket.AF_INET, socket.SOCK_STREAM, recorder=rec)
        s.close()
    assert [e.op for e in tracesock.load(str(tmp_path / "direct.jsonl")).events] == \
        ["socket", "close"]


def test_blocking_and_select_semantics_unchanged(tmp_path: Path) -> None:
    with tracesock.trace(str(tmp_path / "t.jsonl")):
        a, b = socket.socketpair()
        assert a.gettimeout() is None and a.getblocking()
        a.settimeout(0.5)
        assert a.gettimeout() == 0.5
        r, _, _ = select.select([a], [], [], 0)
        assert r == []
        b.send(b"!")
        r, _, _ = select.select([a], [], [], 1)
        assert r == [a]
        a.close()
        b.close()


def test_many_threads_many_sockets(tmp_path: Path, echo_server: tuple[str, int]) -> None:
    out = tmp_path / "threads.jsonl"
    per_thread, threads = 50, 8

    def worker(i: int) -> None:
        for j in range(per_thread):
            with socket.create_connection(echo_server) as s:
                msg = f"{i}:{j}".encode()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += s.recv(100)

    with tracesock.trace(str(out)):
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    trace = tracesock.load(str(out))
    clients = [c for c in trace.connections.values() if c.role == "client"]
    assert len(clients) == per_thread * threads
    assert all(c.bytes_sent == c.bytes_received for c in clients)
    assert sum(1 for e in trace.events if e.op == "sendall" and e.sock in
               {c.sock for c in clients}) == per_thread * threads
    assert trace.end is not None and trace.end["events"] == len(trace.events)


def test_forked_child_does_not_write_into_the_parents_trace(tmp_path: Path) -> None:
    out = tmp_path / "fork.jsonl"
    with tracesock.trace(str(out)):
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # child: its sockets must not scribble into the parent's file
            try:
                a.send(b"from child")
                a.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert b.recv(100) == b"from child"
        a.close()
        b.close()
    trace = tracesock.load(str(out))
    assert trace.warnings == []
    assert not any(e.op == "send" for e in trace.events)


def test_socket_options_are_named_as_the_program_wrote_them(tmp_path: Path) -> None:
    out = tmp_path / "opts.jsonl"
    with tracesock.trace(str(out)):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.close()
    opts = [e.args for e in tracesock.load(str(out)).events if e.op == "setsockopt"]
    assert [(a["level"], a["option"], a["value"]) for a in opts] == [
        ("SOL_SOCKET", "SO_REUSEADDR", 1), ("IPPROTO_TCP", "TCP_NODELAY", 1)]
