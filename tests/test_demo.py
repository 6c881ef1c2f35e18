"""The demo scenarios, run for real on 127.0.0.1 (traced; captured where CAP_NET_RAW allows)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tracesock.capture.join import load_segments
from tracesock.cli import main
from tracesock.lecture import demo, programs
from tracesock.trace.reader import Connection, Trace, load

REPO = Path(__file__).resolve().parent.parent


def _capture_or_skip() -> None:
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except PermissionError as exc:
        if os.environ.get("TRACESOCK_REQUIRE_CAPTURE") == "1":
            pytest.fail(f"TRACESOCK_REQUIRE_CAPTURE=1 but capture is impossible: {exc}")
        pytest.skip(f"no CAP_NET_RAW ({exc})")
    s.close()


def _by_role(tr: Trace, role: str) -> list[Connection]:
    return [c for c in tr.connections.values() if c.role == role]


def _ops(conn: Connection) -> list[str]:
    return [e.op for e in conn.events]


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    out = tmp_path_factory.mktemp("demo")
    results = [demo.run_scenario(s, str(out), capture=False) for s in demo.SCENARIOS]
    assert all(r.capture_path is None for r in results)
    return {r.name: load(r.trace_path) for r in results}


def test_every_scenario_has_a_trace(traces: dict[str, Trace]) -> None:
    assert set(traces) == set(demo.scenario_names())
    assert all(t.complete for t in traces.values())


def test_echo_is_the_notes_client_and_its_traced_server(traces: dict[str, Trace]) -> None:
    tr = traces["echo"]
    (client,) = _by_role(tr, "client")
    assert _ops(client) == ["socket", "connect", "send", "recv", "close"]
    assert client.send_sizes == [20] and client.recv_chunks == [20]
    assert [e.data for e in client.events if e.op == "send"] == ["Hello, 대한민국!".encode()]
    (server,) = _by_role(tr, "server")
    assert server.recv_chunks == [20, 0]
    assert len(_by_role(tr, "listener")) == 1


@pytest.mark.parametrize("name", ["http-close", "http-makefile"])
def test_only_the_client_is_traced_when_the_server_is_someone_elses(
        traces: dict[str, Trace], name: str) -> None:
    conns = list(traces[name].connections.values())
    assert [c.role for c in conns] == ["client"]


def test_http_close_reads_until_the_servers_fin(traces: dict[str, Trace]) -> None:
    (client,) = _by_role(traces["http-close"], "client")
    assert client.recv_chunks[-1] == 0
    assert all(e.args.get("bufsize") == 4096 for e in client.events if e.op == "recv")
    reply = b"".join(e.data or b"" for e in client.events if e.op == "recv")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(programs.LECTURE_PAGE)


def test_http_makefile_reads_through_the_file_object(traces: dict[str, Trace]) -> None:
    (client,) = _by_role(traces["http-makefile"], "client")
    ops = _ops(client)
    assert ops[:4] == ["socket", "connect", "makefile", "sendall"]
    assert "recv_into" in ops
    assert ops[-2:] == ["close", "close_fd"]  # the file object kept the descriptor open


def test_half_close_shuts_down_then_receives_until_fin(traces: dict[str, Trace]) -> None:
    (client,) = _by_role(traces["half-close"], "client")
    ops = _ops(client)
    shut = ops.index("shutdown")
    assert client.events[shut].args.get("how") == "SHUT_WR"
    assert ops[:shut].count("sendall") == 2 and "recv" in ops[shut:]
    assert client.recv_chunks[-1] == 0
    (server,) = _by_role(traces["half-close"], "server")
    assert server.bytes_received == sum(map(len, demo.HALF_CLOSE_LINES))


def test_refused_connect(traces: dict[str, Trace]) -> None:
    evs = traces["refused"].events
    connect = next(e for e in evs if e.op == "connect")
    assert connect.error is not None and connect.error.type == "ConnectionRefusedError"
    assert evs[-1].op == "close"


def test_chunking_one_send_four_recvs(traces: dict[str, Trace]) -> None:
    (client,) = _by_role(traces["chunking"], "client")
    assert client.send_sizes == [1000]
    (server,) = _by_role(traces["chunking"], "server")
    assert server.recv_chunks == [256, 256, 256, 232, 0]


def test_utf8_split_cuts_a_character(traces: dict[str, Trace]) -> None:
    (client,) = _by_role(traces["utf8-split"], "client")
    chunks = [e.data for e in client.events if e.op == "recv" and e.nbytes]
    assert [len(c or b"") for c in chunks] == [8, 12]
    for chunk in chunks:
        with pytest.raises(UnicodeDecodeError):
            (chunk or b"").decode("utf-8")
    assert b"".join(c or b"" for c in chunks).decode("utf-8") == "Hello, 대한민국!"


def test_list_and_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in demo.scenario_names())
    assert main(["demo", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no scenario 'nope'" in err and len(err.strip().splitlines()) == 1


def test_cli_prints_files_and_the_echo_ladder(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "echo", "refused", "--out", str(tmp_path), "--no-capture"]) == 0
    out = capsys.readouterr().out
    assert f"echo: {tmp_path / 'echo.jsonl'}" in out
    assert f"refused: {tmp_path / 'refused.jsonl'}" in out
    assert "echo ladder" in out and "connect()" in out
    assert not list(tmp_path.glob("*.pcapng"))
    page = tmp_path / "echo.html"
    assert f"echo report (open in a browser): {page}" in out
    assert "<svg" in page.read_text(encoding="utf-8")


def test_cli_in_a_subprocess(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "tracesock", "demo", "echo", "--out",
                           str(tmp_path), "--no-capture"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "sock 2 send() = 20" in proc.stdout


def test_captured_demo_has_both_sides_segments(tmp_path: Path) -> None:
    _capture_or_skip()
    result = demo.run_scenario(demo.get_scenario("echo"), str(tmp_path),
                               capture_required=True)
    assert result.capture_path == str(tmp_path / "echo.pcapng")
    segs = load_segments(result.capture_path)
    flags = [s.flag_names for s in segs]
    assert flags[:3] == ["SYN", "SYN,ACK", "ACK"]
    assert sorted(s.length for s in segs if s.length) == [20, 20]
    fins = [s for s in segs if s.is_fin]
    assert len(fins) == 2 and fins[0].src != fins[1].src


def test_capture_keeps_only_the_demos_connections(tmp_path: Path) -> None:
    _capture_or_skip()
    other = socket.create_server(("127.0.0.1", 0))  # traffic the demo did not make
    peer = socket.create_connection(other.getsockname())
    conn, _ = other.accept()
    stop = threading.Event()

    def chatter() -> None:
        for _ in range(500):  # bounded: about 5 s at most
            if stop.is_set():
                return
            peer.sendall(b"noise")
            conn.recv(16)
            time.sleep(0.01)

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    try:
        result = demo.run_scenario(demo.get_scenario("refused"), str(tmp_path),
                                   capture_required=True)
    finally:
        stop.set()
        thread.join(10)
        for s in (peer, conn, other):
            s.close()
    assert result.capture_path is not None
    segs = load_segments(result.capture_path)
    assert [s.flag_names for s in segs] == ["SYN", "RST,ACK"]
    assert load(result.trace_path).connections.keys() == {1}


def test_backlog_third_connect_times_out(traces: dict[str, Trace]) -> None:
    tr = traces["backlog"]
    connects = [e for e in tr.events if e.op == "connect"]
    assert [e.error.type if e.error else None for e in connects] == \
        [None, None, "TimeoutError"]
    assert sum(e.op == "accept" for e in tr.events) == 2


def test_shared_close_two_processes_close_one_socket(traces: dict[str, Trace]) -> None:
    tr = traces["shared-close"]
    client = next(c for c in tr.connections.values() if c.role == "client")
    closes = [e for e in client.events if e.op == "close"]
    assert len({e.pid for e in closes}) == 2
    server = next(c for c in tr.connections.values() if c.role == "server")
    assert server.bytes_received == client.bytes_sent and server.recv_chunks[-1] == 0


def test_time_wait_bind_fails_with_eaddrinuse(traces: dict[str, Trace]) -> None:
    bind = [e for e in traces["time-wait"].events if e.op == "bind"][-1]
    assert bind.error is not None and bind.error.errno == errno.EADDRINUSE


def test_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "echo", "--out", str(tmp_path), "--no-capture", "--no-report"]) == 0
    assert "echo report" not in capsys.readouterr().out
    assert not (tmp_path / "echo.html").exists()
