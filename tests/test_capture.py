"""Capture with the real scapy sniffer on real loopback connections (no mocked packets).

These tests need CAP_NET_RAW. Without it they skip, unless TRACESOCK_REQUIRE_CAPTURE=1
(as in CI, which runs as root), where a missing capability is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracesock
from tracesock.capture.join import JoinedSegment, join, load_segments
from tracesock.capture.segments import Segment
from tracesock.capture.sniffer import CaptureSession, capture_filter, interface_for
from tracesock.errors import CaptureError
from tracesock.lecture.timeline import render_with_capture
from tracesock.trace.reader import Trace, load

REPO = Path(__file__).resolve().parent.parent


def _no_capture_reason() -> str | None:
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except PermissionError as exc:
        return f"no CAP_NET_RAW ({exc})"
    s.close()
    return None


@pytest.fixture
def can_capture() -> None:
    reason = _no_capture_reason()
    if reason is None:
        return
    if os.environ.get("TRACESOCK_REQUIRE_CAPTURE") == "1":
        pytest.fail(f"TRACESOCK_REQUIRE_CAPTURE=1 but capture is impossible: {reason}")
    pytest.skip(reason)


def _require_tshark() -> str:
    tshark = shutil.which("tshark")
    if tshark is None:
        if os.environ.get("TRACESOCK_REQUIRE_CAPTURE") == "1":
            pytest.fail("TRACESOCK_REQUIRE_CAPTURE=1 but tshark is not installed")
        pytest.skip("tshark is not installed")
    return tshark


# -- helpers: real loopback servers ------------------------------------------------------


def _serve(listener: socket.socket, count: int, handle: Callable[[socket.socket], None]
           ) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            conn, _ = listener.accept()
            handle(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _echo_once(conn: socket.socket) -> None:
    while data := conn.recv(1024):
        conn.sendall(data)
    conn.close()


def _echo_exchange(host: str = "127.0.0.1") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen()
    server = _serve(listener, 1, _echo_once)
    client = socket.create_connection(listener.getsockname()[:2])
    client.sendall(b"hello")
    assert client.recv(1024) == b"hello"
    client.shutdown(socket.SHUT_WR)
    assert client.recv(1024) == b""
    client.close()
    server.join(10)
    listener.close()


def _by_tuple(joined: list[JoinedSegment]) -> dict[tuple[object, ...], list[JoinedSegment]]:
    out: dict[tuple[object, ...], list[JoinedSegment]] = {}
    for js in joined:
        s = js.segment
        out.setdefault(tuple(sorted([s.src, s.dst])), []).append(js)
    return out


def _client_socks(trace: Trace) -> list[tracesock.Connection]:
    return [c for c in trace.connections.values() if c.role == "client"]


def _ep(addr: object) -> tuple[str, int]:
    assert isinstance(addr, tuple)
    return (str(addr[0]), int(addr[1]))


def _header(seg: Segment) -> tuple[object, ...]:
    return (seg.src, seg.dst, seg.flags, seg.seq, seg.ack, seg.length, seg.options)


def _assert_clean_close(segs: list[Segment], client: tuple[str, int],
                        server: tuple[str, int]) -> None:
    """SYN, SYN/ACK, handshake ACK, one FIN each way, each FIN acknowledged; each once."""
    assert len({_header(s) for s in segs}) == len(segs), "a segment was captured twice"
    kinds = Counter(s.flag_names for s in segs if s.flags & 0x07)
    assert kinds == {"SYN": 1, "SYN,ACK": 1, "FIN,ACK": 2}, kinds
    syn = next(s for s in segs if s.is_syn)
    assert (syn.src, syn.dst) == (client, server)
    synack = next(s for s in segs if s.is_synack)
    assert next(s for s in segs if s.is_pure_ack and s.src == client).ack == synack.seq + 1
    for fin in (s for s in segs if s.is_fin):
        later = [s for s in segs if s.src == fin.dst and s.time >= fin.time]
        assert any(s.ack == (fin.seq + fin.length + 1) & 0xFFFFFFFF for s in later), \
            f"the FIN from {fin.src} is never acknowledged in the capture"


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield str(tmp_path / "t.jsonl"), str(tmp_path / "t.pcapng")


# -- the scenarios -------------------------------------------------------------


@pytest.mark.usefixtures("can_capture")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_exchange_each_segment_once(paths: tuple[str, str], host: str) -> None:
    trace_path, cap = paths
    with tracesock.trace(trace_path, capture=cap, capture_required=True):
        _echo_exchange(host)
    trace = load(trace_path)
    (client,) = _client_socks(trace)
    local, remote = _ep(client.laddr), _ep(client.raddr)
    segs = [s for s in load_segments(cap) if {s.src, s.dst} == {local, remote}]
    _assert_clean_close(segs, local, remote)
    # By default, no data segment is kept.
    assert all(s.length == 0 for s in segs)


@pytest.mark.usefixtures("can_capture")
def test_segments_are_joined_with_their_calls(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    with tracesock.trace(trace_path, capture=cap, capture_required=True):
        _echo_exchange()
    trace = load(trace_path)
    joined = join(trace, load_segments(cap))
    (client,) = _client_socks(trace)
    port = _ep(client.raddr)[1]
    connect = f"sock {client.sock} connect(('127.0.0.1', {port}))"
    by_flags = {js.segment.flag_names + ("<" if not js.outbound else ">"): js for js in joined
                if js.segment.flags & 0x07}
    assert connect in by_flags["SYN>"].comment
    assert "accept()" in by_flags["SYN>"].comment
    assert connect in by_flags["SYN,ACK<"].comment
    client_fin, server_fin = by_flags["FIN,ACK>"], by_flags["FIN,ACK<"]
    assert f"sock {client.sock} shutdown(SHUT_WR)" in client_fin.comment
    assert "recv(1024) = 0" in client_fin.comment  # the server's recv that saw it
    assert "close()" in server_fin.comment
    assert f"sock {client.sock} recv(1024) = 0" in server_fin.comment


@pytest.mark.usefixtures("can_capture")
def test_refused_connect_gives_syn_and_rst(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # bound, never listening: connecting is refused
    with tracesock.trace(trace_path, capture=cap, capture_required=True):
        s = socket.socket()
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
        s.close()
    probe.close()
    trace = load(trace_path)
    joined = [js for js in join(trace, load_segments(cap)) if port in
              (js.segment.src[1], js.segment.dst[1])]
    assert [js.segment.flag_names for js in joined] == ["SYN", "RST,ACK"]
    for js in joined:
        assert js.comment == (f"sock 1 connect(('127.0.0.1', {port})) "
                              "-> ConnectionRefusedError")


@pytest.mark.usefixtures("can_capture")
def test_thousand_short_connections_lose_and_duplicate_nothing(
        paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    n = 1000
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)

    def close_after_eof(conn: socket.socket) -> None:
        conn.recv(16)
        conn.close()

    with tracesock.trace(trace_path, capture=cap, capture_required=True, payload=False):
        server = _serve(listener, n, close_after_eof)
        for _ in range(n):
            c = socket.create_connection(listener.getsockname())
            c.close()
        server.join(60)
    listener.close()
    trace = load(trace_path)
    clients = _client_socks(trace)
    assert len(clients) == n
    flows = _by_tuple(join(trace, load_segments(cap)))
    for conn in clients:
        local, remote = _ep(conn.laddr), _ep(conn.raddr)
        segs = [js.segment for js in flows.get(tuple(sorted([local, remote])), [])]
        # Lost: none. Each SYN, SYN/ACK and both FINs are there.
        firsts = {(s.src, s.flag_names) for s in segs if s.flags & 0x07}
        assert {(local, "SYN"), (remote, "SYN,ACK"), (local, "FIN,ACK"),
                (remote, "FIN,ACK")} <= firsts, (local, firsts)
        # Duplicated: none. A capture duplicate is byte-identical, TCP timestamp
        # included; a real retransmission (the kernel occasionally resends a FIN in
        # such a storm) carries a new timestamp and is kept, as it happened.
        headers = Counter(_header(s) for s in segs)
        assert max(headers.values()) == 1, (local, headers)


@pytest.mark.usefixtures("can_capture")
def test_other_processes_connections_are_not_kept(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    other = ("import socket\n"
             "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
             "c = socket.create_connection(l.getsockname()); a, _ = l.accept()\n"
             "print(c.getsockname()[1], l.getsockname()[1])\n"
             "c.close(); a.close(); l.close()\n")
    session = CaptureSession(cap)
    session.start()
    with tracesock.trace(trace_path):
        _echo_exchange()
        done = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True,
                              check=True, timeout=60)
    stats = session.stop(trace_path)
    other_ports = {int(p) for p in done.stdout.split()}
    segs = load_segments(cap)
    assert segs, "the traced connection's segments are missing"
    assert not [s for s in segs if {s.src[1], s.dst[1]} & other_ports]
    assert stats.seen > stats.kept  # the other process's segments were seen, then dropped
    assert stats.dropped == 0


@pytest.mark.usefixtures("can_capture")
def test_capture_all_keeps_data_and_names_the_send(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    with tracesock.trace(trace_path, capture=cap, capture_all=True, capture_required=True):
        _echo_exchange()
    trace = load(trace_path)
    joined = join(trace, load_segments(cap), keep_all=True)
    data = [js for js in joined if js.segment.length]
    assert [js.segment.length for js in data] == [5, 5]
    assert "sendall(data)" in data[0].comment and "recv(1024)" in data[0].comment
    assert data[0].segment.rel_seq == 1


@pytest.mark.usefixtures("can_capture")
def test_small_snaplen_truncates_in_the_kernel(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    session = CaptureSession(cap, capture_all=True, snaplen=96)
    session.start()
    with tracesock.trace(trace_path):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = _serve(listener, 1, _echo_once)
        c = socket.create_connection(listener.getsockname())
        c.sendall(b"x" * 1000)
        got = 0
        while got < 1000:
            got += len(c.recv(4096))
        c.close()
        server.join(10)
        listener.close()
    session.stop(trace_path)
    from tracesock.capture import pcapng

    frames = list(pcapng.read(cap))
    assert max(len(f.data) for f in frames) <= 96
    assert max(f.wire_len for f in frames) >= 1000
    assert sum(s.length for s in load_segments(cap)) == 2000


# -- the file: pcapng that tshark reads --------------------------------------------------


@pytest.mark.usefixtures("can_capture")
def test_tshark_reads_frames_and_comments(paths: tuple[str, str]) -> None:
    tshark = _require_tshark()
    trace_path, cap = paths
    with tracesock.trace(trace_path, capture=cap, capture_required=True):
        _echo_exchange()
    trace = load(trace_path)
    expected = join(trace, load_segments(cap))
    out = subprocess.run([tshark, "-r", cap, "-T", "fields", "-E", "separator=|",
                          "-e", "frame.number", "-e", "tcp.flags.syn", "-e", "tcp.flags.fin",
                          "-e", "tcp.srcport", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True, timeout=60)
    rows = [line.split("|") for line in out.stdout.splitlines()]
    assert len(rows) == len(expected) >= 6
    (client,) = _client_socks(trace)
    port = _ep(client.raddr)[1]
    syn = [r for r in rows if r[1] in ("1", "True") and r[3] == str(_ep(client.laddr)[1])]
    assert len(syn) == 1
    assert f"sock {client.sock} connect(('127.0.0.1', {port}))" in syn[0][4]
    assert [r[4] for r in rows] == [js.comment for js in expected]


# -- start, stop, permission -----------------------------------------------------------


@pytest.mark.usefixtures("can_capture")
def test_render_with_capture_interleaves_calls_and_segments(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    with tracesock.trace(trace_path, capture=cap, capture_required=True):
        _echo_exchange()
    lines = list(render_with_capture(load(trace_path), cap))
    text = "\n".join(lines)
    order = [next(i for i, line in enumerate(lines) if needle in line) for needle in (
        "connect(('127.0.0.1'", "SYN ->", "<- SYN,ACK", "ACK ->", "returned after",
        "shutdown(SHUT_WR)", "FIN,ACK ->")]
    assert order == sorted(order), text
    assert "recv(1024) = 0 bytes" in text


@pytest.mark.usefixtures("can_capture")
def test_trace_and_capture_written_when_the_block_raises(paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    with pytest.raises(RuntimeError), \
            tracesock.trace(trace_path, capture=cap, capture_required=True):
        _echo_exchange()
        raise RuntimeError("boom")
    assert load(trace_path).complete
    assert any(s.is_syn for s in load_segments(cap))


@pytest.mark.usefixtures("can_capture")
def test_start_blocks_until_the_sniffer_reads_and_stop_is_bounded(
        paths: tuple[str, str]) -> None:
    trace_path, cap = paths
    session = CaptureSession(cap)
    session.start()
    assert session._sniffer is not None and session._sniffer.running
    with pytest.raises(tracesock.UsageError):
        session.start()
    with tracesock.trace(trace_path):
        _echo_exchange()  # the very first connection after start() is complete
    session.stop(trace_path)
    trace = load(trace_path)
    (client,) = _client_socks(trace)
    local, remote = _ep(client.laddr), _ep(client.raddr)
    _assert_clean_close([s for s in load_segments(cap) if {s.src, s.dst} == {local, remote}],
                        local, remote)
    with pytest.raises(tracesock.UsageError):
        session.stop(trace_path)


def test_kernel_filter_compiles_with_libpcap() -> None:
    from scapy.arch.common import compile_filter

    for capture_all in (False, True):
        for inbound in (False, True):
            expr = capture_filter(capture_all=capture_all, inbound_only=inbound)
            assert expr.startswith("inbound") == inbound
            assert compile_filter(expr, linktype=1).bf_len > 0


def test_route_lookup_picks_loopback_for_loopback_addresses() -> None:
    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("::1") == "lo"
    with pytest.raises(tracesock.UsageError):
        interface_for("not-an-address")


def test_import_tracesock_does_not_import_scapy() -> None:
    code = ("import sys, tracesock, tracesock.record.tracing, tracesock.capture.sniffer, "
            "tracesock.capture.join, tracesock.lecture.timeline\n"
            "assert not [m for m in sys.modules if m.startswith('scapy')], 'scapy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


_NO_CAP = """
import os, sys, tracesock
from tracesock.capture.sniffer import CaptureSession
from tracesock.errors import CaptureError
d = sys.argv[1]
try:
    CaptureSession(os.path.join(d, "a.pcapng")).start()
except CaptureError as exc:
    print("start:", exc)
with tracesock.trace(os.path.join(d, "b.jsonl"), capture=os.path.join(d, "b.pcapng")):
    import socket
    socket.socket().close()
try:
    with tracesock.trace(os.path.join(d, "c.jsonl"), capture=os.path.join(d, "c.pcapng"),
                         capture_required=True):
        pass
except CaptureError as exc:
    print("required:", exc)
"""


def test_without_cap_net_raw_a_clear_message_and_the_trace_is_still_written(
        tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", _NO_CAP, str(tmp_path)]
    if _no_capture_reason() is None:  # we can capture: drop the capability for the child
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv is needed to drop CAP_NET_RAW for the child")
        cmd = [setpriv, "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    start, required = done.stdout.splitlines()
    assert start.startswith("start: packet capture needs root or the CAP_NET_RAW")
    assert "setcap cap_net_raw+ep" in start
    assert required.startswith("required: packet capture needs root")
    warnings = [line for line in done.stderr.splitlines() if line.startswith("tracesock:")]
    assert len(warnings) == 1 and "tracing without capture" in warnings[0]
    assert load(str(tmp_path / "b.jsonl")).complete
    assert not (tmp_path / "b.pcapng").exists()


@pytest.mark.usefixtures("can_capture")
def test_an_unwritable_capture_path_fails_at_start(tmp_path: Path) -> None:
    session = CaptureSession(str(tmp_path / "missing" / "x.pcapng"))
    with pytest.raises(CaptureError, match="cannot write the capture"):
        session.start()


def test_capture_error_is_a_tracesock_error() -> None:
    assert issubclass(CaptureError, tracesock.TracesockError)
    with pytest.raises(tracesock.UsageError):
        CaptureSession("x.pcapng", snaplen=10)
