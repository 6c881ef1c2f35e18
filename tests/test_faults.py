"""Faults: the traced process dies, or its trace cannot be written any more.

A real program (``PROGRAM``: an echo client and its server thread on loopback, printing
each hundredth round it finished) runs under ``tracesock run`` in a subprocess:

- SIGKILL mid-transfer leaves a trace that loads (with a warning) and lacks at most the
  line being written: every round the program had printed is in it.
- SIGTERM (default action, or a handler that exits) and an uncaught exception lose
  nothing; the exit status is what plain ``python`` gives.
- A full disk (a small tmpfs mounted here; skipped only where mount is not permitted)
  or an output that stops taking data makes tracing stop with one warning while the
  program runs on with the same output and exit status.

Every wait is bounded (subprocess timeouts, a round limit in the program).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import tracesock

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)

PROGRAM = r"""
import signal, socket, sys, threading, time
mode, rounds = sys.argv[1], int(sys.argv[2])
size = int(sys.argv[3]) if len(sys.argv) > 3 else 64
if mode == "handled":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
listener = socket.create_server(("127.0.0.1", 0))

def serve():
    conn, _ = listener.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)

threading.Thread(target=serve, daemon=True).start()
client = socket.create_connection(listener.getsockname())
for i in range(rounds):
    msg = f"{i:08d}".encode().ljust(size, b".")
    client.sendall(msg)
    got = b""
    while len(got) < size:
        got += client.recv(size - len(got))
    assert got == msg
    if i % 100 == 99 or i == rounds - 1:
        print(i, flush=True)
if mode == "raise":
    raise RuntimeError("boom after the last round")
if mode in ("term", "handled"):
    print("ready", flush=True)
    time.sleep(60)
print("done", flush=True)
sys.exit(3 if mode == "exit3" else 0)
"""

WARNING = "tracesock: warning: cannot write the trace any more"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


def _plain(program: Path, *args: str) -> list[str]:
    return [sys.executable, str(program), *args]


def _traced(out: Path, program: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tracesock", "run", "-o", str(out), str(program), *args]


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _client_rounds(trace: tracesock.Trace) -> list[int]:
    """The round numbers the client's sendall calls carried, in order."""
    client = next(c for c in trace.connections.values() if c.role == "client")
    return [int(ev.data[:8]) for ev in client.events
            if ev.op == "sendall" and ev.data is not None]


def _check_lines(raw: bytes) -> int:
    """Every complete line is JSON; after them only NUL padding, maybe after one
    partial line. Returns the number of complete lines."""
    body, _, rest = raw.rpartition(b"\n")
    lines = body.split(b"\n") if body else []
    for line in lines:
        orjson.loads(line)
    partial = rest.rstrip(b"\0")
    assert b"\0" not in partial, "NUL bytes inside the last line"
    return len(lines)


def _signalled(cmd: list[str], sig: int, ready: str) -> tuple[int, list[str], str]:
    """Run ``cmd``, read its lines until ``ready`` is one, then send ``sig``.
    Returns (exit status, the lines it printed, its stderr)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env()) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 60
            for line in proc.stdout:
                seen.append(line.strip())
                if seen[-1] == ready or time.monotonic() > deadline:
                    break
            proc.send_signal(sig)
            seen += [ln.strip() for ln in proc.stdout.read().splitlines()]
            status = proc.wait(timeout=30)
            return status, seen, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sigkill_mid_transfer_loses_at_most_the_last_line(tmp_path: Path,
                                                          program: Path) -> None:
    out = tmp_path / "killed.jsonl"
    status, printed, _ = _signalled(_traced(out, program, "kill", "1000000"),
                                    signal.SIGKILL, "2999")
    assert status == -signal.SIGKILL
    last_printed = max(int(x) for x in printed if x.isdigit())
    assert last_printed >= 2999

    raw = out.read_bytes()
    complete = _check_lines(raw)
    trace = tracesock.load(str(out))
    assert not trace.complete and trace.warnings  # a warning says it was cut short
    assert len(trace.events) == complete - 1  # all complete lines but the header
    assert [e.seq for e in trace.events] == list(range(1, len(trace.events) + 1))
    rounds = _client_rounds(trace)
    # Every round the program finished (and printed) is there, in order, no gap.
    assert rounds == list(range(len(rounds))) and len(rounds) > last_printed


@pytest.mark.parametrize("mode", ["term", "handled"])
def test_sigterm_loses_nothing(tmp_path: Path, program: Path, mode: str) -> None:
    results = {}
    for name, cmd in {"plain": _plain(program, mode, "500"),
                      "traced": _traced(tmp_path / "t.jsonl", program, mode, "500")}.items():
        results[name] = _signalled(cmd, signal.SIGTERM, "ready")
    assert results["traced"] == results["plain"]
    assert results["plain"][0] == (143 if mode == "handled" else -signal.SIGTERM)

    trace = tracesock.load(str(tmp_path / "t.jsonl"))
    assert _client_rounds(trace) == list(range(500))
    client = next(c for c in trace.connections.values() if c.role == "client")
    assert client.bytes_sent == client.bytes_received == 500 * 64
    if mode == "handled":  # sys.exit in the handler: atexit finishes the trace
        assert trace.complete and trace.warnings == []
        assert trace.end is not None and trace.end["lost"] == 0
    else:  # killed by the signal: every line is kept, the end record cannot be
        assert not trace.complete


def test_uncaught_exception_loses_nothing(tmp_path: Path, program: Path) -> None:
    out = tmp_path / "raised.jsonl"
    plain = _run(_plain(program, "raise", "300"))
    traced = _run(_traced(out, program, "raise", "300"))
    assert (traced.returncode, traced.stdout, traced.stderr) == \
        (plain.returncode, plain.stdout, plain.stderr)
    assert plain.returncode == 1 and "RuntimeError: boom" in plain.stderr
    trace = tracesock.load(str(out))
    assert trace.complete and trace.warnings == []
    assert _client_rounds(trace) == list(range(300))


@contextlib.contextmanager
def _mounted(where: Path, *mount_args: str) -> Iterator[Path]:
    """``mount *mount_args where`` for the block (skipped where mounting is refused)."""
    where.mkdir()
    try:
        done = subprocess.run(["mount", *mount_args, str(where)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount {mount_args[-1]}: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount {mount_args[-1]}: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _small_tmpfs(where: Path, size: str) -> contextlib.AbstractContextManager[Path]:
    return _mounted(where, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")


def test_disk_full_stops_tracing_with_one_warning(tmp_path: Path, program: Path) -> None:
    # 4096-byte rounds: ~22 KB of trace each, 66 MB for 3,000: far more than 8 MB.
    args = ("exit3", "3000", "4096")
    plain = _run(_plain(program, *args))
    with _small_tmpfs(tmp_path / "small", "8M") as disk:
        out = disk / "full.jsonl"
        traced = _run(_traced(out, program, *args))
        assert (traced.returncode, traced.stdout) == (plain.returncode, plain.stdout)
        assert plain.returncode == 3 and plain.stdout.endswith("2999\ndone\n")
        warnings = traced.stderr.splitlines()
        assert len(warnings) == 1 and warnings[0].startswith(WARNING), traced.stderr
        trace = tracesock.load(str(out))
        assert not trace.complete
        assert [e.seq for e in trace.events] == list(range(1, len(trace.events) + 1))
        rounds = _client_rounds(trace)
        assert 0 < len(rounds) < 3000 and rounds == list(range(len(rounds)))


@contextlib.contextmanager
def _small_ext4_with_1k_blocks(where: Path) -> Iterator[Path]:
    """An 8 MB ext4 with 1 KiB blocks (a page spans four), loop-mounted at ``where``."""
    image = where.with_suffix(".img")
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    try:
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", str(image)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot make an ext4 file system: {exc}")
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 file system: {made.stderr.strip()}")
    with _mounted(where, "-o", "loop", str(image)) as mounted:
        yield mounted


# A long line (written with pwrite()) ends part-way into a page; the disk then fills up;
# then short lines go into the rest of that page through the mapping. With blocks smaller
# than a page, that rest had no block yet: a store there was a SIGBUS on a full disk.
FILL_AFTER_LONG_LINE = r'''
import os, socket, sys
where = sys.argv[1]
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # one thread: all fits
b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
a.sendall(b"z" * 800_000)
got = 0
while got < 800_000:
    got += len(b.recv(1 << 20))
with open(os.path.join(where, "filler"), "wb", buffering=0) as f:
    for chunk in (1 << 20, 1 << 16, 4096, 1024, 1):
        try:
            while True:
                f.write(b"\1" * chunk)
        except OSError:
            pass
for i in range(50):
    a.sendall(b"s" * 100)
    b.recv(100)
print("survived")
'''


def test_full_disk_after_a_long_line_is_no_sigbus(tmp_path: Path) -> None:
    script = tmp_path / "fill.py"
    script.write_text(FILL_AFTER_LONG_LINE)
    with _small_ext4_with_1k_blocks(tmp_path / "disk") as disk:
        out = disk / "t.jsonl"
        traced = _run([sys.executable, "-m", "tracesock", "run", "-o", str(out),
                       str(script), str(disk)])
        assert traced.returncode == 0, traced.stderr
        assert traced.stdout == "survived\n"
        trace = tracesock.load(str(out))
        assert [e.seq for e in trace.events] == list(range(1, len(trace.events) + 1))
        sent = [e for e in trace.events if e.op == "sendall"]
        assert sent[0].nbytes == 800_000 and sent[0].data == b"z" * 800_000


def test_nearly_full_disk_still_traces_a_small_program(tmp_path: Path,
                                                      program: Path) -> None:
    args = ("exit3", "200")
    plain = _run(_plain(program, *args))
    with _small_tmpfs(tmp_path / "tiny", "2M") as disk:
        out = disk / "small.jsonl"
        traced = _run(_traced(out, program, *args))
        assert (traced.returncode, traced.stdout, traced.stderr) == \
            (plain.returncode, plain.stdout, plain.stderr)
        trace = tracesock.load(str(out))
        assert trace.complete and _client_rounds(trace) == list(range(200))


def test_output_pipe_closed_by_its_reader_stops_tracing(tmp_path: Path,
                                                       program: Path) -> None:
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:  # reads the header and a little more, then goes away
        with open(fifo, "rb") as f:
            got.append(f.read(2000))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    args = ("exit3", "3000")
    plain = _run(_plain(program, *args))
    try:
        traced = _run(_traced(fifo, program, *args), timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the traced program hung once the trace's reader had gone")
    finally:
        th.join(timeout=5)
    assert got and got[0].startswith(b'{"type":"trace"')
    assert (traced.returncode, traced.stdout) == (plain.returncode, plain.stdout)
    warnings = traced.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(WARNING), traced.stderr


@pytest.mark.parametrize("size", [1000, 20000])  # lines copied into the map; pwrite()
def test_payload_survives_kill_byte_for_byte(tmp_path: Path, program: Path,
                                             size: int) -> None:
    # What SIGKILL leaves is not only parseable: each recorded payload is the bytes sent.
    out = tmp_path / "k.jsonl"
    _signalled(_traced(out, program, "kill", "1000000", str(size)), signal.SIGKILL, "999")
    trace = tracesock.load(str(out))
    sent = 0
    for ev in trace.events:
        if ev.op == "sendall" and ev.data_b64 is not None:
            data = base64.b64decode(ev.data_b64)
            assert len(data) == ev.nbytes == size
            assert data == f"{int(data[:8]):08d}".encode().ljust(size, b".")
            sent += 1
    assert sent >= 1000
