"""asyncio: streams, loop.sock_* and selector transports traced like blocking code;
would-block results folded; streams replayed with the recorded chunking."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import tracesock
from tracesock.replay import replay

_ORIGINAL_SOCKET = socket.socket
PARTS = [b"alpha-", b"beta-", b"gamma"]


def calls(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "call"]


@pytest.fixture
def chunk_server() -> Iterator[int]:
    """Untraced (even inside a trace), for one connection: reads a request, answers
    PARTS one by one, then closes its listener."""
    lst = _ORIGINAL_SOCKET()
    lst.bind(("127.0.0.1", 0))
    lst.listen()

    def serve() -> None:
        try:
            fd, _ = lst._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        lst.close()
        with _ORIGINAL_SOCKET(fileno=fd) as c:
            c.recv(100)
            for part in PARTS:
                c.sendall(part)
                threading.Event().wait(0.03)

    threading.Thread(target=serve, daemon=True).start()
    yield lst.getsockname()[1]
    lst.close()


async def stream_client(port: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")
    await writer.drain()
    chunks = []
    while data := await reader.read(100):
        chunks.append(data)
    writer.close()
    await writer.wait_closed()
    return chunks


async def upper_server_roundtrip() -> list[bytes]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(100):
            w.write(data.upper())
            await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = []
    for msg in (b"one", b"two", b"three"):
        writer.write(msg)
        await writer.drain()
        got.append(await reader.read(100))
    writer.close()
    await writer.wait_closed()
    srv.close()
    await srv.wait_closed()
    return got


def test_streams_client_and_server_are_traced_like_blocking_code(tmp_path: Path) -> None:
    plain = asyncio.run(upper_server_roundtrip())
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        traced = asyncio.run(upper_server_roundtrip())
    assert plain == traced == [b"ONE", b"TWO", b"THREE"]
    evs = calls(out)
    connect = next(e for e in evs if e["op"] == "connect")
    assert connect["error"]["type"] == "BlockingIOError"  # EINPROGRESS, as the kernel said
    client = connect["sock"]
    sent = [base64.b64decode(e["data"]) for e in evs if e["sock"] == client and e["op"] == "send"]
    got = [base64.b64decode(e["data"]) for e in evs if e["sock"] == client and e["op"] == "recv"
           and "data" in e]
    assert sent == [b"one", b"two", b"three"] and got == [b"ONE", b"TWO", b"THREE"]
    accept = next(e for e in evs if e["op"] == "accept" and "accepted" in e)
    served = [base64.b64decode(e["data"]) for e in evs
              if e["sock"] == accept["accepted"] and e["op"] == "recv" and "data" in e]
    assert served == [b"one", b"two", b"three", b""]  # and the client's FIN


def test_loop_sock_methods_are_traced(tmp_path: Path, chunk_server: int) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", chunk_server))
        await loop.sock_sendall(s, b"hi")
        data = b""
        while chunk := await loop.sock_recv(s, 100):
            data += chunk
        s.close()
        return data

    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        assert asyncio.run(main()) == b"".join(PARTS)
    evs = [e for e in calls(out) if e.get("family") != "AF_UNIX"]
    sid = next(e["sock"] for e in evs if e["op"] == "connect")
    mine = [e for e in calls(out) if e["sock"] == sid]
    ops = [e["op"] for e in mine]
    assert ops[:3] == ["socket", "setblocking", "connect"] and ops[-1] == "close"
    received = [base64.b64decode(e["data"]) for e in mine if e["op"] == "recv" and "data" in e]
    assert received == [*PARTS, b""]


def test_would_block_runs_are_folded_into_one_event_with_a_count(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        a, b = socket.socketpair()
        a.setblocking(False)
        for _ in range(1000):
            with pytest.raises(BlockingIOError):
                a.recv(10)
        b.send(b"x")
        assert a.recv(10) == b"x"
        for _ in range(3):
            with pytest.raises(BlockingIOError):
                a.recv(10)
        with pytest.raises(BlockingIOError):
            a.recv_into(bytearray(4))  # another op: another run
        a.close()
        b.close()
    evs = [e for e in calls(out) if e["sock"] == 1]
    assert [(e["op"], e.get("count"), "error" in e) for e in evs] == [
        ("socket", None, False), ("setblocking", None, False),
        ("recv", 1000, True), ("recv", None, False), ("recv", 3, True),
        ("recv_into", None, True), ("close", None, False)]
    first = evs[2]
    assert first["error"]["type"] == "BlockingIOError" and first["dur"] > 0
    seqs = [e["seq"] for e in calls(out)]
    assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))
    text = resources.files("tracesock.trace").joinpath("schema.json").read_text()
    validator = jsonschema.Draft202012Validator(json.loads(text))
    for line in out.read_text().splitlines():
        validator.validate(json.loads(line))


def test_a_held_would_block_is_written_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        a, b = socket.socketpair()
        a.setblocking(False)
        for _ in range(2):
            with pytest.raises(BlockingIOError):
                a.recv(1)
    held = [e for e in calls(out) if e["op"] == "recv"]
    assert len(held) == 1 and held[0]["count"] == 2
    a.close()
    b.close()


def test_streams_replay_with_the_recorded_chunking(tmp_path: Path, chunk_server: int) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        recorded = asyncio.run(stream_client(chunk_server))
    assert recorded == PARTS
    with _ORIGINAL_SOCKET() as probe:  # the server served its one connection and left
        assert probe.connect_ex(("127.0.0.1", chunk_server)) != 0
    with replay(str(out)):
        replayed = asyncio.run(stream_client(chunk_server))
    assert replayed == recorded  # StreamReader.read(100) saw each recorded chunk
