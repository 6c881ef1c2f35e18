"""The committed golden files in captures/ (``make golden``), checked structurally.

Ops, byte counts, recv chunking, TCP flags and their order; never timestamps or ports,
which change each time the files are regenerated. Each trace line must match the
trace format's JSON Schema, and each capture must open in tshark.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tracesock.capture.join import load_segments
from tracesock.capture.segments import Segment
from tracesock.lecture import demo, programs
from tracesock.trace.reader import Connection, Trace, load

REPO = Path(__file__).resolve().parent.parent
CAPTURES = REPO / "captures"
SCHEMA = REPO / "tracesock" / "trace" / "schema.json"
NAMES = demo.scenario_names()


def _trace(name: str) -> Trace:
    return load(str(CAPTURES / f"{name}.jsonl"))


def _segments(name: str) -> list[Segment]:
    return load_segments(str(CAPTURES / f"{name}.pcapng"))


def _one(tr: Trace, role: str) -> Connection:
    (conn,) = [c for c in tr.connections.values() if c.role == role]
    return conn


def _client_ops(tr: Trace) -> list[str]:
    return [e.op for e in _one(tr, "client").events]


def _data_lengths(segs: list[Segment], src: Any) -> list[int]:
    return [s.length for s in segs if s.length and s.src == src]


def _fin_senders(segs: list[Segment]) -> list[Any]:
    return [s.src for s in segs if s.is_fin]


@pytest.mark.parametrize("name", NAMES)
def test_golden_files_exist_and_are_complete(name: str) -> None:
    assert (CAPTURES / f"{name}.jsonl").is_file()
    assert (CAPTURES / f"{name}.pcapng").is_file()
    assert _trace(name).complete


@pytest.mark.parametrize("name", NAMES)
def test_traces_match_the_schema(name: str) -> None:
    if not SCHEMA.exists():
        pytest.skip("tracesock/trace/schema.json is not there yet")
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    lines = (CAPTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        errors = list(validator.iter_errors(json.loads(line)))
        assert not errors, f"{name}.jsonl:{n}: {errors[0].message}"


@pytest.mark.parametrize("name", NAMES)
def test_captures_open_in_tshark(name: str) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        if os.environ.get("TRACESOCK_REQUIRE_CAPTURE") == "1":
            pytest.fail("TRACESOCK_REQUIRE_CAPTURE=1 but tshark is not installed")
        pytest.skip("tshark is not installed")
    proc = subprocess.run([tshark, "-n", "-r", str(CAPTURES / f"{name}.pcapng"), "-T",
                           "fields", "-e", "tcp.flags.str"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(_segments(name))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "refused"])
def test_every_connection_opens_with_a_handshake_and_closes_with_two_fins(name: str) -> None:
    segs = _segments(name)
    assert [s.flag_names for s in segs[:3]] == ["SYN", "SYN,ACK", "ACK"]
    client = segs[0].src
    fins = _fin_senders(segs)
    assert len(fins) == 2 and set(fins) == {client, segs[0].dst}
    assert not any(s.is_rst for s in segs)
    tr = _trace(name)
    local = _one(tr, "client").laddr
    assert client == (local[0], local[1])


def test_echo() -> None:
    tr, segs = _trace("echo"), _segments("echo")
    assert _client_ops(tr) == ["socket", "connect", "send", "recv", "close"]
    client, server = _one(tr, "client"), _one(tr, "server")
    assert (client.send_sizes, client.recv_chunks) == ([20], [20])
    assert server.recv_chunks == [20, 0]
    c = segs[0].src
    assert _data_lengths(segs, c) == [20] and _data_lengths(segs, segs[0].dst) == [20]
    assert _fin_senders(segs)[0] == c  # the client closes first


@pytest.mark.parametrize("name", ["http-close", "http-makefile"])
def test_http(name: str) -> None:
    tr, segs = _trace(name), _segments(name)
    assert [c.role for c in tr.connections.values()] == ["client"]
    client = _one(tr, "client")
    server_bytes = sum(_data_lengths(segs, segs[0].dst))
    assert server_bytes == client.bytes_received
    assert server_bytes > len(programs.LECTURE_PAGE)
    ops = _client_ops(tr)
    if name == "http-close":  # recv until b'': the server's FIN comes first
        assert _fin_senders(segs)[0] == segs[0].dst
        assert client.recv_chunks[-1] == 0 and ops[-1] == "close"
    else:
        assert "makefile" in ops and ops[-2:] == ["close", "close_fd"]


def test_half_close() -> None:
    tr, segs = _trace("half-close"), _segments("half-close")
    ops = _client_ops(tr)
    assert ops.index("shutdown") > max(i for i, op in enumerate(ops) if op == "sendall")
    c, s = segs[0].src, segs[0].dst
    first_fin = next(i for i, seg in enumerate(segs) if seg.is_fin)
    assert segs[first_fin].src == c
    # the reply comes after the client's FIN: the server waited for it
    assert [seg.length for seg in segs[first_fin:] if seg.src == s and seg.length] == [41]
    assert _one(tr, "client").recv_chunks == [41, 0]


def test_refused() -> None:
    tr, segs = _trace("refused"), _segments("refused")
    assert [s.flag_names for s in segs] == ["SYN", "RST,ACK"]
    connect = next(e for e in tr.events if e.op == "connect")
    assert connect.error is not None and connect.error.type == "ConnectionRefusedError"
    assert [e.op for e in tr.events] == ["socket", "connect", "close"]


def test_chunking() -> None:
    tr, segs = _trace("chunking"), _segments("chunking")
    assert _one(tr, "client").send_sizes == [1000]
    assert _one(tr, "server").recv_chunks == [256, 256, 256, 232, 0]
    assert _data_lengths(segs, segs[0].src) == [1000]  # one segment, four recvs


def test_utf8_split() -> None:
    tr, segs = _trace("utf8-split"), _segments("utf8-split")
    client = _one(tr, "client")
    assert client.recv_chunks == [8, 12, 0]
    data = [e.data or b"" for e in client.events if e.op == "recv" and e.nbytes]
    assert b"".join(data).decode("utf-8") == "Hello, 대한민국!"
    assert _data_lengths(segs, segs[0].dst) == [8, 12]
