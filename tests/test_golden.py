"""The committed golden files in captures/ (``make golden``), checked structurally.

Ops, byte counts, recv chunking, TCP flags and their order; never timestamps or ports,
which change each time the files are regenerated. Each trace line must match the
trace format's JSON Schema, and each capture must open in tshark.
"""

from __future__ import annotations

import errno
import itertools
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
from tracesock.lecture.diagram import render_text
from tracesock.lecture.ladder import Ladder, ladder_for
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


# refused: no handshake at all; backlog: three clients, one of them never answered
# (its own test below)
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("refused", "backlog")])
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


def _walk(ladder: Ladder, col: int) -> list[str]:
    walk = [ladder.initial_states[col]]
    for row in ladder.rows:
        walk += [st for c, st in row.states if c == col and st != walk[-1]]
    return walk


def _ladder(name: str) -> Ladder:
    return ladder_for(_trace(name), str(CAPTURES / f"{name}.pcapng"))


def test_backlog() -> None:
    tr, segs = _trace("backlog"), _segments("backlog")
    listen = next(e for e in tr.events if e.op == "listen")
    assert listen.args.get("backlog") == 1
    connects = [e for e in tr.events if e.op == "connect"]
    assert [e.error.type if e.error else None for e in connects] == \
        [None, None, "TimeoutError"]
    ignored = connects[2].laddr
    syns = [s for s in segs if s.is_syn and (s.src[0], s.src[1]) == (ignored[0], ignored[1])]
    assert len(syns) >= 3  # the first SYN and at least two retransmissions, never answered
    assert len({s.seq for s in syns}) == 1  # the same SYN again: retransmitted
    assert all(a.time < b.time for a, b in itertools.pairwise(syns))
    assert not any(s.is_synack and (s.dst[0], s.dst[1]) == (ignored[0], ignored[1])
                   for s in segs)
    assert not any(s.is_rst for s in segs)  # dropped, not refused
    # the connect gave up (TimeoutError, above) after its retransmissions, not before
    epoch = float(tr.header.extra["epoch"])
    assert syns[-1].time - epoch < connects[2].t + connects[2].dur
    accepts = [e for e in tr.events if e.op == "accept"]
    assert len(accepts) == 2 and all(a.t > connects[2].t + connects[2].dur for a in accepts)
    ladder = _ladder("backlog")
    col = [c.key for c in ladder.columns].index(f"{ignored[0]}:{ignored[1]}")
    assert _walk(ladder, col) == ["CLOSED", "SYN_SENT"]  # never got further


def test_shared_close() -> None:
    tr, segs = _trace("shared-close"), _segments("shared-close")
    client = _one(tr, "client")
    closes = [e for e in client.events if e.op == "close"]
    assert len(closes) == 2 and closes[0].pid != closes[1].pid  # parent, then child
    c = segs[0].src
    fin = next(s for s in segs if s.is_fin and s.src == c)
    epoch = float(tr.header.extra["epoch"])
    # no FIN at the parent's close(): it leaves only when the child, the last holder, closes
    assert fin.time - epoch > closes[0].t + 0.2
    assert fin.time - epoch >= closes[1].t
    child_data = [s for s in segs if s.src == c and s.length][-1]
    assert child_data.time - epoch > closes[0].t  # the child still sends after that close()
    assert _one(tr, "server").recv_chunks[-1] == 0
    lines = list(render_text(_ladder("shared-close")))
    fin_line = next(ln for ln in lines if "FIN,ACK" in ln and "close()" in ln)
    assert f"pid {closes[1].pid} sock {client.sock} close()" in fin_line


def test_time_wait() -> None:
    tr, segs = _trace("time-wait"), _segments("time-wait")
    s = segs[0].dst
    assert _fin_senders(segs)[0] == s  # the server closes first: the active closer
    bind = [e for e in tr.events if e.op == "bind"][-1]
    assert bind.error is not None and bind.error.type == "OSError"
    assert bind.error.errno == errno.EADDRINUSE
    assert tuple(bind.args["address"])[1] == s[1]
    ladder = _ladder("time-wait")
    server_col = [c.key for c in ladder.columns].index(f"{s[0]}:{s[1]}")
    assert _walk(ladder, server_col)[-1] == "TIME_WAIT"
    assert _walk(ladder, 0)[-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSED"]
