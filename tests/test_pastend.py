"""Reading past the end of a recorded connection raises ReplayError, and never hangs:
blocking recv, selectors and asyncio, each under a timeout so a regression fails."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import ClassVar

import pytest

import tracesock
from tracesock import ReplayError
from tracesock.replay import ends

RealSocket = socket.socket  # taken before any trace or replay swaps it
REPLY = b"hello"
PAST = r"connection #\d+ .*recv after the 1 recvs the recording has for it"
pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def quiet_server() -> Iterator[tuple[str, int]]:
    """Untraced: answers one request with REPLY, then keeps the connection open (no FIN:
    the recording ends with the reply) until the client closes it."""
    lst = RealSocket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()

    def serve() -> None:
        try:
            fd, _ = lst._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        with RealSocket(fileno=fd) as c, suppress(OSError):
            c.settimeout(10)
            c.recv(100)
            c.sendall(REPLY)
            while c.recv(100):  # until the client's close
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield lst.getsockname()
    lst.close()
    t.join(5)


def record(path: Path, address: tuple[str, int]) -> None:
    with tracesock.trace(path):
        s = socket.create_connection(address, timeout=10)
        s.sendall(b"ask")
        assert s.recv(100) == REPLY
        s.close()


def test_blocking_recv_past_the_end(tmp_path: Path, quiet_server: tuple[str, int]) -> None:
    path = tmp_path / "t.jsonl"
    record(path, quiet_server)
    with tracesock.replay(path) as rep:
        s = socket.create_connection(quiet_server)  # blocking, no timeout
        s.sendall(b"ask")
        assert s.recv(100) == REPLY
        with pytest.raises(ReplayError, match=PAST):
            s.recv(100)
        s.close()
        rep.skip_final_checks()


def test_a_selectors_loop_past_the_end(tmp_path: Path, quiet_server: tuple[str, int]) -> None:
    path = tmp_path / "t.jsonl"
    record(path, quiet_server)
    with tracesock.replay(path) as rep:
        s = socket.create_connection(quiet_server)
        s.setblocking(False)
        got: list[bytes] = []
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ)
            assert sel.select(0) == []  # nothing is due before the request
            s.sendall(b"ask")
            with pytest.raises(ReplayError, match=PAST):
                for _ in range(10):  # bounded: the second round reads past the end
                    for _key, _ in sel.select(None):  # no timeout: must not hang
                        got.append(s.recv(100))
        assert got == [REPLY]
        s.close()
        rep.skip_final_checks()


async def streams_reading_past(address: tuple[str, int]) -> list[bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"ask")
    await writer.drain()
    got = [await reader.read(100)]
    try:
        got.append(await reader.read(100))  # past the end: raises, no hang
    finally:
        writer.close()
    return got


async def sock_recv_past(address: tuple[str, int]) -> list[bytes]:
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    await loop.sock_connect(s, address)
    await loop.sock_sendall(s, b"ask")
    got = [await loop.sock_recv(s, 100)]
    try:
        got.append(await loop.sock_recv(s, 100))
    finally:
        s.close()
    return got


async def streams_client(address: tuple[str, int]) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"ask")
    await writer.drain()
    data = await reader.read(100)
    writer.close()
    return data


@pytest.mark.parametrize("client", [streams_reading_past, sock_recv_past])
def test_asyncio_past_the_end(tmp_path: Path, quiet_server: tuple[str, int],
                              client: object) -> None:
    path = tmp_path / "t.jsonl"
    with tracesock.trace(path):
        assert asyncio.run(streams_client(quiet_server)) == REPLY
    with tracesock.replay(path) as rep:
        with pytest.raises(ReplayError, match=PAST):
            asyncio.run(client(quiet_server))  # type: ignore[operator]
        rep.skip_final_checks()


class HeldTimer(threading.Timer):
    """A stall timer that never starts: the test fires it by hand, at no wall time."""

    made: ClassVar[list[HeldTimer]] = []

    def start(self) -> None:
        HeldTimer.made.append(self)

    def fire(self) -> None:
        self.function(*self.args, **self.kwargs)


def record_ask_reply_bye(path: Path, address: tuple[str, int]) -> None:
    with tracesock.trace(path):
        s = socket.create_connection(address, timeout=10)
        s.sendall(b"ask")
        assert s.recv(100) == REPLY
        s.sendall(b"bye")
        s.close()


def test_a_select_loop_that_owes_bytes_stalls_instead_of_hanging(
        tmp_path: Path, quiet_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded: ask, the reply, then "bye". Replayed, the code waits for more before its
    # "bye": not readable at first (the recorded program was still sending), then the
    # stall timer makes it readable and recv raises.
    path = tmp_path / "t.jsonl"
    record_ask_reply_bye(path, quiet_server)
    monkeypatch.setattr(ends, "Timer", HeldTimer)
    monkeypatch.setattr(HeldTimer, "made", [])
    with tracesock.replay(path) as rep:
        s = socket.create_connection(quiet_server)
        s.sendall(b"ask")
        assert s.recv(100) == REPLY
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ)
            assert sel.select(0) == []
            [timer] = HeldTimer.made
            assert sel.select(0) == []  # however long it takes: only the timer stalls it
            timer.fire()
            assert len(sel.select(10)) == 1
        with pytest.raises(ReplayError, match=PAST + r" \(and has yet to send 3 bytes"):
            s.recv(100)
        s.close()
        rep.skip_final_checks()


def test_no_stall_timer_outlives_the_replay(
        tmp_path: Path, quiet_server: tuple[str, int]) -> None:
    # A socket the code leaves open past the block: its stall timer (END_WAIT, seconds
    # away) is stopped when the block ends, not left running.
    path = tmp_path / "t.jsonl"
    record_ask_reply_bye(path, quiet_server)
    with tracesock.replay(path) as rep:
        s = socket.create_connection(quiet_server)
        s.sendall(b"ask")
        assert s.recv(100) == REPLY
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ)
            assert sel.select(0) == []  # arms the stall timer
        assert any(isinstance(t, threading.Timer) for t in threading.enumerate())
        rep.skip_final_checks()
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    s.close()


def test_asyncio_that_owes_bytes_stalls_instead_of_hanging(
        tmp_path: Path, quiet_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"

    async def polite(address: tuple[str, int]) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"ask")
        data = await reader.read(100)
        writer.write(b"bye")
        await writer.drain()
        writer.close()
        return data

    async def waits_first(address: tuple[str, int]) -> None:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"ask")
        assert await reader.read(100) == REPLY
        try:
            await reader.read(100)  # diverges: waits for an answer before its "bye"
        finally:
            writer.close()

    with tracesock.trace(path):
        assert asyncio.run(polite(quiet_server)) == REPLY
    monkeypatch.setattr(ends, "END_WAIT", 0.3)
    with tracesock.replay(path) as rep:
        with pytest.raises(ReplayError, match=PAST + r" \(and has yet to send 3 bytes"):
            asyncio.run(waits_first(quiet_server))
        rep.skip_final_checks()
