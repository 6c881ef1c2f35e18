"""The compiled journal (tracesock/_journal.c) against the Python path it speeds up.

The journal is I/O-free: it writes into whatever writable buffers it is handed, so the
first tests drive it over bytearrays, with windows handed late or not at all. The others
trace the same real socket calls through both paths and compare the records.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import tracesock
from tracesock.record.compiled import compiled_available
from tracesock.record.recorder import Recorder

needs_compiled = pytest.mark.skipif(
    not compiled_available() and not os.environ.get("TRACESOCK_REQUIRE_COMPILED"),
    reason="the compiled journal was not built here (no C compiler)")


def test_the_compiled_journal_is_built_where_ci_requires_it(tmp_path: Path) -> None:
    if not os.environ.get("TRACESOCK_REQUIRE_COMPILED") and not compiled_available():
        pytest.skip("the compiled journal was not built here (no C compiler)")
    assert compiled_available()
    with Recorder.open(str(tmp_path / "t.jsonl"), compiled=True) as rec:
        assert rec.compiled
    with Recorder.open(str(tmp_path / "p.jsonl"), compiled=False) as rec:
        assert not rec.compiled


class Windows:
    """Bytearray windows for a Journal, handed over on request or held back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.given: list[bytearray] = []
        self.hold = False
        self.journal: Any = None

    def refill(self) -> None:
        if not self.hold:
            self.give()

    def give(self) -> None:
        window = bytearray(self.size)
        self.given.append(window)
        self.journal.add_window(window)

    def file(self, written: int, waiting: bytes) -> bytes:
        return b"".join(bytes(w) for w in self.given)[:written] + waiting


def _journal(windows: Windows, slow: Any = None) -> Any:
    from tracesock.record._journal import Journal

    calls: list[tuple[Any, ...]] = []
    journal = Journal(slow or (lambda *a: calls.append(a)), windows.refill, 100.0)
    windows.journal = journal
    windows.give()
    return journal


@needs_compiled
@pytest.mark.parametrize("size", [37, 64, 4096])
def test_lines_cross_windows_in_order_even_when_windows_come_late(size: int) -> None:
    windows = Windows(size)
    journal = _journal(windows)
    journal.append_raw(b'{"type":"trace"}\n')
    payloads = [bytes(range(n % 256)) * (n // 50 + 1) for n in range(300)]
    for i, data in enumerate(payloads):
        windows.hold = 100 <= i < 200  # a stretch with no window: lines wait in memory
        if i == 200:
            windows.give()
        journal.transfer(i % 3, "recv", 100.0 + i, len(data), data, {"bufsize": 4096})
        if i % 7 == 0:
            journal.append_call(orjson.dumps({"type": "call", "seq": 0, "t": float(i),
                                              "op": "close"}) + b"\n")
    written, waiting = journal.detach()
    lines = windows.file(written, waiting).splitlines()
    assert orjson.loads(lines[0]) == {"type": "trace"}
    records = [orjson.loads(line) for line in lines[1:]]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    recvs = [r for r in records if r["op"] == "recv"]
    assert [base64.b64decode(r["data"]) for r in recvs] == payloads
    assert [r["nbytes"] for r in recvs] == [len(p) for p in payloads]
    assert [r["t"] for r in recvs] == [float(i) for i in range(300)]
    assert all(r["args"] == {"bufsize": 4096} and r["sock"] == i % 3
               for i, r in enumerate(recvs))
    assert journal.seq == len(records) and journal.closed


@needs_compiled
def test_what_the_journal_does_not_take_goes_to_the_python_path_unwritten() -> None:
    windows = Windows(4096)
    slow: list[tuple[Any, ...]] = []
    journal = _journal(windows, slow=lambda *a: slow.append(a))
    odd = [
        (1, "sendto", 0.5, 3, b"abc", {"address": ("127.0.0.1", 9)}),  # a tuple in args
        (1, "recv", 0.5, 3, b"abc", {"bufsize": 3}, {"tls": True}),  # extra fields
        (1, "recv", 0.5, 4, b"abc", {"bufsize": 3}),  # more bytes than the buffer
        (1, "recv", 1, 3, b"abc", {"bufsize": 3}),  # an int start
        (1, "r\u00e9cv", 0.5, 3, b"abc", {}),  # a name to escape
    ]
    for args in odd:
        journal.transfer(*args)
    journal.held = True  # a would-block event is held back: everything goes slow
    journal.transfer(2, "recv", 0.5, 3, b"abc", {"bufsize": 3})
    assert slow == [*odd, (2, "recv", 0.5, 3, b"abc", {"bufsize": 3})]
    assert journal.seq == 0 and journal.detach() == (0, b"")


@needs_compiled
def test_a_stopped_journal_hands_every_transfer_to_the_python_path() -> None:
    windows = Windows(4096)
    slow: list[tuple[Any, ...]] = []
    journal = _journal(windows, slow=lambda *a: slow.append(a))
    journal.transfer(1, "send", 100.5, 2, b"hi", {})
    journal.stop()  # what Recorder.close does first, so the end record counts right
    journal.transfer(1, "send", 100.6, 2, b"hi", {})
    assert journal.append_call(orjson.dumps({"type": "call", "seq": 0, "op": "x"})
                               + b"\n") == 2
    written, waiting = journal.detach()
    with pytest.raises(ValueError, match="closed"):
        journal.append_raw(b"{}\n")
    lines = [orjson.loads(x) for x in windows.file(written, waiting).splitlines()]
    assert [x["seq"] for x in lines] == [1, 2] and lines[0]["t"] == 0.5
    assert slow == [(1, "send", 100.6, 2, b"hi", {})]


# -- the same calls through both paths --------------------------------------------------


def _exchange() -> None:
    """Real calls on a real socketpair: every hot method, in every argument form, and
    the failures they can raise."""
    a, b = socket.socketpair()
    with a, b:
        a.send(b"one")
        a.send(memoryview(b"two-and-more")[:3], 0)
        a.sendall(b"three")
        a.sendall(bytearray(b"four"), 0)
        assert b.recv(3) == b"one"
        assert b.recv(3, socket.MSG_PEEK) == b"two"
        buf = bytearray(10)
        assert b.recv_into(buf, 3) == 3 and buf[:3] == b"two"
        assert b.recv_into(memoryview(buf)[2:], 5, 0) == 5
        assert b.recv_into(buf) == 4
        b.setblocking(False)
        for _ in range(3):
            with pytest.raises(BlockingIOError):
                b.recv(100)
        b.setblocking(True)
        with pytest.raises(TypeError):
            b.recv("ten")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            a.send(b"x", flags=0)  # type: ignore[call-arg]
        b.shutdown(socket.SHUT_RD)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(OSError) as broken:
            a.send(b"late")
        assert broken.value.errno == errno.EPIPE
        assert b.recv(10) == b""


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec["type"] != "call":
            continue
        for key in ("t", "dur", "thread", "fd"):
            rec.pop(key, None)
        if "error" in rec:
            rec["error"].pop("message")  # the same exception, worded by its raiser
        out.append(rec)
    return out


@needs_compiled
def test_both_paths_record_the_same_calls(tmp_path: Path) -> None:
    for name, compiled in (("compiled", True), ("python", False)):
        with tracesock.trace(str(tmp_path / f"{name}.jsonl"), compiled=compiled) as tr:
            assert tr.recorder.compiled is compiled
            _exchange()
    compiled_records = _records(tmp_path / "compiled.jsonl")
    python_records = _records(tmp_path / "python.jsonl")
    assert compiled_records == python_records
    ops = [r["op"] for r in compiled_records]
    assert ops.count("recv_into") == 3 and ops.count("sendall") == 2
    folded = [r for r in compiled_records if r.get("count")]
    assert folded and folded[0]["count"] == 3


@needs_compiled
def test_timestamps_have_the_clock_resolution(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    start = time.perf_counter()
    with tracesock.trace(str(path), compiled=True) as tr:
        assert tr.recorder.compiled
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"x")
            b.recv(1)
    elapsed = time.perf_counter() - start
    calls = [r for r in map(orjson.loads, path.read_bytes().splitlines())
             if r.get("op") in ("sendall", "recv")]
    for r in calls:
        assert isinstance(r["t"], float) and isinstance(r["dur"], float)
        assert 0 <= r["t"] <= elapsed and 0 <= r["dur"] <= elapsed
        assert round(r["t"], 9) == r["t"]
    assert calls[0]["t"] + calls[0]["dur"] <= calls[1]["t"] + 1e-9


@needs_compiled
def test_a_window_not_ready_to_the_page_is_refused() -> None:
    windows = Windows(4096)
    journal = _journal(windows)
    journal.detach()
    from tracesock.record._journal import Journal

    fresh = Journal(lambda *a: None, lambda: None, 0.0)
    with pytest.raises(ValueError, match="ready"):
        fresh.add_window(bytearray(3 * 4096), 0, 100)


@needs_compiled
def test_a_journal_is_initialized_once_and_needs_no_descriptor() -> None:
    from tracesock.record._journal import Journal

    windows = Windows(64 << 10)
    # No descriptor of its own to be had (here: a bad one): long lines go through the
    # windows like the others.
    journal = Journal(lambda *a: None, windows.refill, 100.0, True, 1 << 30)
    windows.journal = journal
    windows.give()
    with pytest.raises(RuntimeError, match="once"):
        journal.__init__(lambda *a: None, windows.refill, 0.0)  # type: ignore[misc]
    journal.transfer(1, "sendall", 100.5, 9000, b"L" * 9000, {})
    written, waiting = journal.detach()
    line = orjson.loads(windows.file(written, waiting))
    assert line["seq"] == 1 and base64.b64decode(line["data"]) == b"L" * 9000


def _allocated_and_written(path: Path) -> tuple[int, int]:
    """Bytes the file system holds for ``path``, and bytes of lines in it so far (a
    trace being written ends in zeros)."""
    data = path.read_bytes()
    end = data.find(b"\0")
    return os.stat(path).st_blocks * 512, len(data) if end < 0 else end


@needs_compiled
@pytest.mark.parametrize(("block", "rounds"), [(2048, 700), (20000, 300)])
def test_pages_are_made_ready_just_ahead_of_the_writer(tmp_path: Path, block: int,
                                                       rounds: int) -> None:
    # Each page made ready costs ~2 us whether a line lands there or not: a trace being
    # written holds little more than its lines (windows made ready whole, growing to
    # 32 MiB, held 7 MiB for the first case). 2 KiB payloads make lines that are copied
    # into the mapping; 20,000 bytes make lines long enough to go in with pwrite(), here
    # mixed with short ones (the receiver takes odd sizes) and across the 8 MiB windows.
    path = tmp_path / "t.jsonl"
    payload = bytes(range(256)) * (block // 256) + b"!" * (block % 256)
    with tracesock.trace(str(path), compiled=True) as tr:
        assert tr.recorder.compiled
        a, b = socket.socketpair()
        with a, b:
            for i in range(rounds):
                a.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += b.recv(min(len(payload) - len(got), 100 + 997 * (i % 30)))
                assert got == payload
            allocated, written = _allocated_and_written(path)
    assert written > 3 << 20
    assert allocated <= written + (3 << 19), (allocated, written)
    trace = tracesock.load(str(path))
    assert trace.complete and trace.warnings == []
    assert [e.seq for e in trace.events] == list(range(1, len(trace.events) + 1))
    sent = [e for e in trace.events if e.op == "sendall"]
    assert len(sent) == rounds and all(e.data == payload for e in sent)
    received = b"".join(e.data or b"" for e in trace.events if e.op == "recv")
    assert received == payload * rounds


@needs_compiled
def test_a_header_longer_than_the_first_window_leaves_the_file_in_order(
        tmp_path: Path) -> None:
    # The header (here a 1.2 MB argv) spills into a second window before the journal
    # takes over: its file offsets count from where that window starts.
    path = tmp_path / "t.jsonl"
    with tracesock.trace(str(path), compiled=True, argv=["a" * 1_200_000]) as tr:
        assert tr.recorder.compiled
        a, b = socket.socketpair()
        with a, b:
            for _ in range(3):
                a.sendall(b"y" * 10000)  # a line long enough for pwrite()
                assert b.recv(10000) == b"y" * 10000
            a.sendall(b"short")
            assert b.recv(5) == b"short"
    trace = tracesock.load(str(path))
    assert trace.complete and trace.warnings == []
    assert [e.op for e in trace.events if e.op in ("sendall", "recv")] == \
        ["sendall", "recv"] * 4
    assert [e.data for e in trace.events if e.op == "recv"][-1] == b"short"


@needs_compiled
def test_each_record_names_the_thread_that_made_the_call(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    idents: dict[int, int] = {}  # socket id -> threading.get_ident() of its user
    together = threading.Barrier(5)  # all alive at once: no ident is reused

    def talk() -> None:
        a, b = socket.socketpair()
        with a, b:
            together.wait(timeout=30)
            for _ in range(50):
                a.sendall(b"ping")
                b.recv(4)
            idents[a.trace_id] = idents[b.trace_id] = threading.get_ident()
            together.wait(timeout=30)

    with tracesock.trace(str(path), compiled=True):
        workers = [threading.Thread(target=talk) for _ in range(4)]
        for w in workers:
            w.start()
        talk()
        for w in workers:
            w.join()
    calls = [r for r in map(orjson.loads, path.read_bytes().splitlines())
             if r.get("op") in ("sendall", "recv")]
    assert len(calls) == 5 * 100 and len(set(idents.values())) == 5
    assert all(r["thread"] == idents[r["sock"]] for r in calls)


@needs_compiled
def test_a_socket_that_outlives_its_trace_goes_on_untraced(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with tracesock.trace(str(path), compiled=True):
        a, b = socket.socketpair()
        a.sendall(b"one")
        assert b.recv(3) == b"one"
    size = path.stat().st_size
    with a, b:
        a.sendall(b"two")
        assert b.recv(3) == b"two"
    assert path.stat().st_size == size
    ops = [e.op for e in tracesock.load(str(path)).events]
    assert ops.count("sendall") == 1 and ops.count("recv") == 1
