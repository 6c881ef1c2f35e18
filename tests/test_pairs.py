"""Pairs: both ends of a connection in the replayed process (a connect to its own
listener), replayed gated on what the code sends on the other end (replay/pairs.py)."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest

import tracesock
from tracesock import ReplayError
from tracesock.errors import UsageError
from tracesock.replay import ends, pairs

pytestmark = pytest.mark.timeout(30)


def own_pair() -> tuple[socket.socket, socket.socket]:
    """paho-mqtt's _socketpair_compat: a loopback pair through a listener of our own."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    reader = socket.socket()
    reader.setblocking(False)
    reader.connect_ex(lst.getsockname())
    writer, _ = lst.accept()
    writer.setblocking(False)
    reader.setblocking(True)
    lst.close()
    return reader, writer


def readable(s: socket.socket, timeout: float = 0.0) -> bool:
    return bool(select.select([s], [], [], timeout)[0])


def wake_loop() -> list[object]:
    """A select loop woken through its own pair, as paho's loop is: readiness before
    and after each wake-up, what each recv got, and that the end is quiet."""
    reader, writer = own_pair()
    seen: list[object] = [readable(reader)]
    for word in (b"a", b"bc", b"d"):
        writer.send(word)
        seen.append(readable(reader, 2.0))
        seen.append(reader.recv(10000))
        seen.append(readable(reader))
    seen.append(readable(reader, 0.05))  # past the recording, the peer open: quiet
    writer.close()
    reader.close()
    return seen


def test_a_wake_up_pair_replays_gated_and_quiet_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "pair.jsonl"
    with tracesock.trace(path):
        recorded = wake_loop()
    assert recorded == [False, True, b"a", False, True, b"bc", False, True, b"d", False,
                        False]
    for _ in range(2):
        with tracesock.replay(path):
            assert wake_loop() == recorded


def test_a_blocking_recv_waits_for_the_other_thread(tmp_path: Path) -> None:
    path = tmp_path / "threads.jsonl"

    def run() -> list[bytes]:
        reader, writer = own_pair()
        writer.setblocking(True)

        def write() -> None:
            for word in (b"one", b"two"):
                time.sleep(0.05)
                writer.sendall(word)
            time.sleep(0.05)
            writer.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=write)
        t.start()
        got = [reader.recv(3), reader.recv(3), reader.recv(3)]
        t.join(5)
        writer.close()
        reader.close()
        return got

    with tracesock.trace(path):
        recorded = run()
    assert recorded == [b"one", b"two", b""]
    with tracesock.replay(path):
        assert run() == recorded


def test_reading_past_a_pair_raises_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "past.jsonl"
    with tracesock.trace(path):
        reader, writer = own_pair()
        writer.send(b"x")
        assert reader.recv(1) == b"x"
        writer.close()
        reader.close()
    with tracesock.replay(path) as rep:
        reader, writer = own_pair()
        writer.send(b"x")
        assert reader.recv(1) == b"x"
        with pytest.raises(ReplayError, match=r"connection #\d+ .* recv after the 1 recvs"):
            reader.recv(1)
        writer.close()
        reader.close()
        rep.skip_final_checks()


def test_a_recv_whose_bytes_never_come_raises_after_the_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "never.jsonl"
    with tracesock.trace(path):
        reader, writer = own_pair()
        writer.send(b"xy")
        assert reader.recv(2) == b"xy"
        writer.close()
        reader.close()
    monkeypatch.setattr(pairs, "PEER_WAIT", 0.2)
    with tracesock.replay(path) as rep:
        reader, writer = own_pair()
        writer.send(b"x")  # one byte of the two the recording sent
        assert not readable(reader, 0.05)
        with pytest.raises(ReplayError, match=r"waited 0.2 s for bytes from connection"):
            reader.recv(2)  # within the test's timeout: it does not wait forever
        rep.skip_final_checks()
        writer.close()
        reader.close()


def test_a_recv_waits_as_long_as_the_recorded_peer_worked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded, the server thread worked 1 s before it answered; replayed, it works
    # longer than PEER_WAIT: the client's recv allows for the recorded pause (here
    # 0.25 + 2 x 1 s) rather than give up after PEER_WAIT.
    path = tmp_path / "slow.jsonl"

    def run(work: float) -> bytes:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def serve() -> None:
            conn, _ = srv.accept()
            conn.recv(100)
            time.sleep(work)
            conn.sendall(b"done")
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        c = socket.create_connection(srv.getsockname(), timeout=10)
        c.sendall(b"go")
        try:
            return c.recv(100)
        finally:
            c.close()
            t.join(10)
            srv.close()

    with tracesock.trace(path):
        assert run(1.0) == b"done"
    monkeypatch.setattr(pairs, "PEER_WAIT", 0.25)
    with tracesock.replay(path):
        assert run(0.5) == b"done"


def test_the_wait_starts_afresh_whenever_the_peer_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded, one recv took four sends the server had made before it (no pause);
    # replayed, the server sends them slowly: each within PEER_WAIT, all four not.
    path = tmp_path / "pieces.jsonl"

    def run(step: float, sent: threading.Event | None) -> bytes:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def serve() -> None:
            conn, _ = srv.accept()
            for piece in (b"a", b"b", b"c", b"d"):
                time.sleep(step)
                conn.sendall(piece)
            if sent is not None:
                sent.set()
            conn.recv(100)
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        c = socket.create_connection(srv.getsockname(), timeout=10)
        if sent is not None:
            assert sent.wait(10)
        try:
            return c.recv(100)
        finally:
            c.sendall(b"ok")
            c.close()
            t.join(10)
            srv.close()

    with tracesock.trace(path):
        recorded = run(0.0, threading.Event())
    if recorded != b"abcd":
        pytest.skip(f"the kernel split the recorded bytes: {recorded!r}")
    monkeypatch.setattr(pairs, "PEER_WAIT", 0.5)
    with tracesock.replay(path):
        assert run(0.2, None) == b"abcd"


def test_the_waits_can_be_set_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACESOCK_PEER_WAIT", "12.5")
    assert ends.seconds_from_env("TRACESOCK_PEER_WAIT", 5.0) == 12.5
    monkeypatch.delenv("TRACESOCK_PEER_WAIT")
    assert ends.seconds_from_env("TRACESOCK_PEER_WAIT", 5.0) == 5.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("TRACESOCK_END_WAIT", bad)
        with pytest.raises(UsageError, match="TRACESOCK_END_WAIT"):
            ends.seconds_from_env("TRACESOCK_END_WAIT", 5.0)


def test_a_pair_made_with_connect_in_progress(tmp_path: Path) -> None:
    # paho-mqtt's connect() on a non-blocking socket raises BlockingIOError: recorded
    # with no raddr, its end is found by the address it was given.
    path = tmp_path / "inprogress.jsonl"

    def run() -> list[object]:
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        reader = socket.socket()
        reader.setblocking(False)
        with pytest.raises(BlockingIOError):
            reader.connect(lst.getsockname())
        writer, _ = lst.accept()
        lst.close()
        seen: list[object] = [readable(reader)]
        writer.send(b"w")
        seen += [readable(reader, 2.0), reader.recv(100), readable(reader)]
        writer.close()
        reader.close()
        return seen

    with tracesock.trace(path):
        recorded = run()
    with tracesock.replay(path):
        assert run() == recorded == [False, True, b"w", False]


def test_a_threaded_server_in_process_replays_its_chunks(tmp_path: Path) -> None:
    # Client and server in one process: the client's recvs get the recorded chunks, in
    # step with what the server thread sends, however the threads are scheduled. The
    # server sends a piece only once the client acknowledged the last, so the recorded
    # chunks are the pieces on a machine however loaded.
    path = tmp_path / "both.jsonl"

    def run() -> list[bytes]:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def serve() -> None:
            conn, _ = srv.accept()
            conn.recv(100)
            for piece in (b"one ", b"two ", b"three"):
                conn.sendall(piece)
                conn.recv(1)  # the client's acknowledgement
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        c = socket.create_connection(srv.getsockname(), timeout=5)
        c.sendall(b"go")
        got = []
        for _ in range(10):
            got.append(c.recv(100))
            if not got[-1]:
                break
            c.sendall(b"k")
        c.close()
        t.join(5)
        srv.close()
        return got

    with tracesock.trace(path):
        recorded = run()
    assert recorded == [b"one ", b"two ", b"three", b""]
    for _ in range(3):
        with tracesock.replay(path):
            assert run() == recorded
