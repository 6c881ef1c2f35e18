"""The DuckDB recipe (docs/trace-format.md, "Querying with SQL") runs as documented and
agrees with ``tracesock.load``.

The page's fenced ```sql blocks are taken in order and run on one DuckDB connection
against a small real trace (a socketpair, a loopback TCP connection and a UDP
exchange, recorded with ``tracesock.trace``), with the page's ``'trace.jsonl'``
replaced by its path. Each result is recognized by its column names (calls per socket
and op, the recv chunk distribution, the header and end lines) and compared with what
``tracesock.load()`` says. Skipped only where duckdb is missing outside CI.
"""

from __future__ import annotations

import os
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tracesock

try:
    import duckdb
except ImportError:  # pragma: no cover - depends on the environment
    duckdb = None

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The recipe is a section of the format's page.
PAGES = ("trace-format.md",)
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)

PER_OP = ("sock", "op", "calls", "ok_calls", "bytes")
CHUNKS = ("chunk", "recvs")
HEADER_END = ("type", "pid", "argv", "payload", "events", "lost")

pytestmark = pytest.mark.skipif(
    duckdb is None and not os.environ.get("CI"),
    reason="duckdb is not installed (pip install duckdb)",
)


def sql_blocks() -> list[str]:
    blocks = []
    for name in PAGES:
        page = DOCS / name
        if page.exists():
            blocks += [m.group(1) for m in SQL_BLOCK.finditer(page.read_text())]
    return blocks


def record(path: Path) -> None:
    """A small trace with sends, recvs of several sizes, a FIN, an error and datagrams."""
    with tracesock.trace(str(path)):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"hello, world")
            assert b.recv(5) == b"hello"
            assert b.recv(64) == b", world"
            b.setblocking(False)
            with pytest.raises(BlockingIOError):
                b.recv(16)  # recorded with an error: counted, moves no bytes
            b.setblocking(True)
            b.sendall(b"x" * 300)
            buf = bytearray(4096)
            got = 0
            while got < 300:
                got += a.recv_into(memoryview(buf)[got:])
            a.shutdown(socket.SHUT_WR)
            assert b.recv(16) == b""  # the peer's FIN: a 0-byte chunk

        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            with socket.create_connection(listener.getsockname(), timeout=10) as client:
                server, _ = listener.accept()
                with server:
                    for msg in (b"GET / HTTP/1.0\r\n", b"\r\n"):
                        client.sendall(msg)
                    client.shutdown(socket.SHUT_WR)
                    received = b""
                    while chunk := server.recv(7):
                        received += chunk
                    server.sendall(received.upper())
                    server.shutdown(socket.SHUT_WR)
                    while client.recv(4096):
                        pass

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            tx.sendto(b"datagram", rx.getsockname())
            assert rx.recvfrom(100)[0] == b"datagram"


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def run_recipe(path: Path, blocks: list[str]) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    """Every block, in order, on one connection: results keyed by their column names."""
    assert duckdb is not None, "duckdb is required in CI: add it to the dev extra"
    con = duckdb.connect()
    results: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for sql in blocks:
        assert "'trace.jsonl'" in sql or "FROM calls" in sql, sql
        cur = con.execute(sql.replace("'trace.jsonl'", _quoted(path)))
        if cur.description is not None:
            results[tuple(col[0] for col in cur.description)] = cur.fetchall()
    return results


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tracesock.Trace]:
    path = tmp_path_factory.mktemp("duckdb") / "trace.jsonl"
    record(path)
    trace = tracesock.load(str(path))
    assert trace.complete and not trace.warnings
    ops = {ev.op for ev in trace.events}
    assert {"recv", "recv_into", "recvfrom", "sendall", "sendto", "accept"} <= ops
    assert any(ev.error is not None for ev in trace.events)
    return path, trace


def test_the_page_has_the_recipe() -> None:
    blocks = sql_blocks()
    assert any("CREATE OR REPLACE VIEW calls" in b for b in blocks), "no calls view"
    assert len(blocks) >= 4


def test_calls_and_bytes_per_socket_and_op(recorded: tuple[Path, tracesock.Trace]) -> None:
    path, trace = recorded
    results = run_recipe(path, sql_blocks())
    assert PER_OP in results, f"no query with columns {PER_OP}: {list(results)}"
    expected: dict[tuple[int, str], list[int]] = {}
    for ev in trace.events:
        row = expected.setdefault((ev.sock, ev.op), [0, 0, 0])
        row[0] += 1
        if ev.error is None:
            row[1] += 1
            row[2] += ev.nbytes or 0
    got = {(sock, op): [calls, ok, nbytes] for sock, op, calls, ok, nbytes in results[PER_OP]}
    assert got == expected
    # ... and per socket, the totals `tracesock stats` reports.
    sends = {ev.op for ev in trace.events if ev.is_send}
    recvs = {ev.op for ev in trace.events if ev.is_recv}
    for sock, conn in trace.connections.items():
        mine = [(op, ok, nbytes) for (s, op), (_, ok, nbytes) in got.items() if s == sock]
        assert sum(n for op, _, n in mine if op in sends) == conn.bytes_sent
        assert sum(n for op, _, n in mine if op in recvs) == conn.bytes_received
        assert sum(ok for op, ok, _ in mine if op in sends) == len(conn.send_sizes)
        assert sum(ok for op, ok, _ in mine if op in recvs) == len(conn.recv_chunks)
        assert sum(calls for (s, _), (calls, _, _) in got.items() if s == sock) == \
            len(conn.events)


def test_recv_chunk_distribution(recorded: tuple[Path, tracesock.Trace]) -> None:
    path, trace = recorded
    results = run_recipe(path, sql_blocks())
    assert CHUNKS in results, f"no query with columns {CHUNKS}: {list(results)}"
    expected: Counter[int] = Counter()
    for conn in trace.connections.values():
        expected.update(conn.recv_chunks)
    assert dict(results[CHUNKS]) == dict(expected)
    assert [chunk for chunk, _ in results[CHUNKS]] == sorted(expected)
    assert expected[0] >= 3  # the FINs are in it


def test_header_and_end_lines(recorded: tuple[Path, tracesock.Trace]) -> None:
    path, trace = recorded
    results = run_recipe(path, sql_blocks())
    assert HEADER_END in results, f"no query with columns {HEADER_END}: {list(results)}"
    rows = {row[0]: row for row in results[HEADER_END]}
    assert set(rows) == {"trace", "end"}
    _, pid, argv, payload, _, _ = rows["trace"]
    assert (pid, tuple(argv), payload) == (trace.header.pid, tuple(trace.header.argv),
                                           trace.header.payload)
    assert trace.end is not None
    assert rows["end"][4:] == (len(trace.events), trace.end["lost"])


def test_killed_trace_reads_with_ignore_errors(recorded: tuple[Path, tracesock.Trace],
                                               tmp_path: Path) -> None:
    """What the page says of a killed tracer's file: zero padding after the last line,
    no ``end``; with ``ignore_errors = true`` the calls are all there."""
    path, trace = recorded
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[-1].startswith(b'{"type":"end"')
    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(lines[:-1]) + b"\0" * 8192)
    assert tracesock.load(str(killed)).events == trace.events
    view = next(b for b in sql_blocks() if "CREATE OR REPLACE VIEW calls" in b)
    assert "format = 'newline_delimited', " in view
    view = view.replace("format = 'newline_delimited', ",
                        "format = 'newline_delimited', ignore_errors = true, ")
    results = run_recipe(killed, [view, "SELECT count(*) AS n, sum(nbytes) AS b FROM calls"])
    assert results[("n", "b")] == [(len(trace.events),
                                    sum(ev.nbytes or 0 for ev in trace.events))]
