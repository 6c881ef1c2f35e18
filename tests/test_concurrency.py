"""Many threads tracing at once: 16 client threads x 1,000 connections to a loopback
echo server whose 16 worker threads are traced too (32,000 traced sockets).

Checked on the file itself, line by line: every line is valid JSON, ``seq`` strictly
increases, the event counts are exactly what the threads did, and every connection's
bytes are exactly what its peer sent. Bounded: a fixed number of connections, socket
timeouts on every call, and a join deadline.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

import tracesock

THREADS = 16
PER_THREAD = 1000
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _message(thread: int, i: int) -> bytes:
    # Unique per connection, 20..1,519 bytes, so that each connection's bytes can be
    # matched with the exact message its thread sent.
    head = f"t{thread:02d}c{i:04d}:".encode()
    return head + bytes([65 + (thread + i) % 26]) * ((thread * 7919 + i * 104729) % 1500 + 10)


def _serve(listener: socket.socket, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                head = conn.recv(2)  # the 2-byte length prefix, maybe in pieces
                while len(head) < 2:
                    head += conn.recv(2 - len(head))
                size = int.from_bytes(head, "big")
                got = b""
                while len(got) < size:
                    chunk = conn.recv(size - len(got))
                    if not chunk:
                        raise ConnectionError("peer closed early")
                    got += chunk
                conn.sendall(got)
    except BaseException as exc:
        errors.append(exc)


def _client(thread: int, port: int, errors: list[BaseException]) -> None:
    try:
        for i in range(PER_THREAD):
            msg = _message(thread, i)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(len(msg).to_bytes(2, "big") + msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("server closed early")
                    got += chunk
                if got != msg:
                    raise AssertionError(f"echo differs for thread {thread} connection {i}")
    except BaseException as exc:
        errors.append(exc)


def test_sixteen_threads_a_thousand_connections_each(tmp_path: Path) -> None:
    out = tmp_path / "many.jsonl"
    errors: list[BaseException] = []
    stop = threading.Event()
    with tracesock.trace(str(out)) as tr:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        servers = [threading.Thread(target=_serve, args=(listener, stop, errors))
                   for _ in range(THREADS)]
        clients = [threading.Thread(target=_client, args=(t, port, errors))
                   for t in range(THREADS)]
        for th in servers + clients:
            th.start()
        for th in clients:
            th.join(timeout=200)
        stop.set()
        for th in servers:
            th.join(timeout=10)
        listener.close()
        assert not any(th.is_alive() for th in servers + clients), "threads did not finish"
        assert errors == []
        written = tr.recorder.events_written
        assert tr.recorder.lost == 0

    conns = THREADS * PER_THREAD
    raw = out.read_bytes()
    assert raw.endswith(b"\n") and b"\0" not in raw
    records = [orjson.loads(line) for line in raw.splitlines()]  # every line is JSON
    assert records[0]["type"] == "trace" and records[-1]["type"] == "end"
    calls = records[1:-1]
    assert all(r["type"] == "call" for r in calls)
    seqs = [r["seq"] for r in calls]
    assert seqs == list(range(1, len(calls) + 1))  # strictly increasing, no gaps
    assert len(calls) == written == records[-1]["events"] and records[-1]["lost"] == 0

    # Exact counts of everything whose number does not depend on chunking.
    ops = Counter(r["op"] for r in calls if "error" not in r)
    timeouts = sum(1 for r in calls if r["op"] == "accept" and "error" in r)
    assert [r for r in calls if "error" in r and r["op"] != "accept"] == []
    assert ops["accept"] == conns
    assert ops["connect"] == conns
    assert ops["sendall"] == 2 * conns  # each client's request, each server's echo
    assert ops["socket"] == 2 * conns + 1  # clients, accepted sockets, the listener
    assert ops["close"] == 2 * conns + 1
    assert ops["settimeout"] == 2 * conns + 1
    assert ops["setblocking"] == conns  # accept() makes accepted sockets blocking
    assert ops["bind"] == ops["listen"] == 1
    assert sum(ops.values()) + timeouts == len(calls)

    # Bytes per connection: what each client sent is what its server side received,
    # and what the server sent back is what the client received.
    trace = tracesock.load(str(out))
    assert trace.complete and trace.warnings == []
    sent: dict[int, bytes] = defaultdict(bytes)
    received: dict[int, bytes] = defaultdict(bytes)
    for ev in trace.events:
        if ev.is_send:
            sent[ev.sock] += ev.data or b""
        elif ev.is_recv:
            received[ev.sock] += ev.data or b""
    # Ports are reused over 16,000 connections, so the two ends of a connection are
    # paired by the unique request they carry.
    clients = {sent[c.sock]: c for c in trace.connections.values() if c.role == "client"}
    servers = {received[c.sock]: c for c in trace.connections.values() if c.role == "server"}
    assert len(clients) == len(servers) == conns
    assert clients.keys() == servers.keys()
    expected = {_message(t, i) for t in range(THREADS) for i in range(PER_THREAD)}
    assert {request[2:] for request in clients} == expected
    for request, client in clients.items():
        msg = request[2:]
        assert int.from_bytes(request[:2], "big") == len(msg)
        server = servers[request]
        assert server.raddr == client.laddr and server.laddr == client.raddr
        assert sent[server.sock] == msg == received[client.sock]
        assert client.bytes_sent == server.bytes_received == len(request)
        assert server.bytes_sent == client.bytes_received == len(msg)
