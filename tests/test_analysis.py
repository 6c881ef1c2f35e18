"""analyze: the I/O-free core on hand-made rows, and real tshark on real captures."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from tracesock.capture import tshark as tshark_mod
from tracesock.capture.analysis import (
    ACK,
    FIELDS,
    FIN,
    PSH,
    RST,
    SYN,
    PacketRow,
    TsharkMissing,
    analyze,
    parse_row,
    to_json,
)
from tracesock.capture.tshark import ProgressBar, analyze_file, format_analysis
from tracesock.cli import main
from tracesock.trace.reader import load

REPO = Path(__file__).resolve().parent.parent
CAPTURES = REPO / "captures"
C, S = ("127.0.0.1", 40000), ("127.0.0.1", 7)


def _row(n: int, t: float, src: tuple[str, int], flags: int, seq: int = 0, ack: int = 0,
         length: int = 0, **kw: object) -> PacketRow:
    dst = S if src == C else C
    return PacketRow(n, t, src, dst, 0, flags, seq, ack, length, **kw)  # type: ignore[arg-type]


def _echo_rows() -> list[PacketRow]:
    return [
        _row(1, 0.0, C, SYN, mss=65495, wscale=7),
        _row(2, 0.001, S, SYN | ACK, 0, 1, mss=1460, wscale=9),
        _row(3, 0.0015, C, ACK, 1, 1),
        _row(4, 0.002, C, PSH | ACK, 1, 1, 20),
        _row(5, 0.003, S, PSH | ACK, 1, 21, 20),
        _row(6, 0.004, C, FIN | ACK, 21, 21),
        _row(7, 0.005, S, FIN | ACK, 21, 22),
        _row(8, 0.006, C, ACK, 22, 22),
    ]


# -- the core, no tshark -------------------------------------------------------------------


def test_handshake_options_rtt_data_and_active_close() -> None:
    (s,) = analyze(_echo_rows()).streams
    hs = s.handshake
    assert hs is not None and hs.complete
    assert (hs.opener, hs.listener) == (C, S)
    assert hs.rtt == pytest.approx(0.001) and hs.initial_rtt == pytest.approx(0.0015)
    assert (hs.opener_mss, hs.listener_mss, hs.opener_wscale, hs.listener_wscale) == \
        (65495, 1460, 7, 9)
    assert [(d.src, d.bytes, d.data_segments) for d in s.directions] == [(C, 20, 1), (S, 20, 1)]
    t = s.teardown
    assert (t.kind, t.active_closer, t.passive_closer, t.time_wait) == ("fin", C, S, (C,))
    assert not t.simultaneous and t.fin_frames == (6, 7)


def test_passive_side_closing_first_ends_in_time_wait_itself() -> None:
    rows = [*_echo_rows()[:5], _row(6, 0.004, S, FIN | ACK, 21, 21),
            _row(7, 0.005, C, FIN | ACK, 21, 22)]
    t = analyze(rows).streams[0].teardown
    assert (t.active_closer, t.time_wait) == (S, (S,))


def test_crossing_fins_put_both_sides_in_time_wait() -> None:
    rows = [*_echo_rows()[:5], _row(6, 0.004, C, FIN | ACK, 21, 21),
            _row(7, 0.0041, S, FIN | ACK, 21, 21)]
    t = analyze(rows).streams[0].teardown
    assert t.simultaneous and set(t.time_wait) == {C, S}


def test_refused_is_a_syn_answered_by_rst() -> None:
    rows = [_row(1, 0.0, C, SYN), _row(2, 0.0001, S, RST | ACK, 1, 1)]
    (s,) = analyze(rows).streams
    assert s.refused and s.teardown.reset_by == S
    assert s.handshake is not None and not s.handshake.complete
    assert any("refused" in line for line in format_analysis(analyze(rows)))


def test_reset_after_data_is_not_a_refusal() -> None:
    rows = [*_echo_rows()[:5], _row(6, 0.004, S, RST | ACK, 21, 21)]
    (s,) = analyze(rows).streams
    assert s.teardown.kind == "rst" and not s.refused


def test_retransmitted_bytes_counted_once_and_flags_counted() -> None:
    rows = _echo_rows()
    rows.insert(4, _row(9, 0.0021, C, PSH | ACK, 1, 1, 20, analysis=("retransmission",)))
    rows.insert(5, _row(10, 0.0022, S, ACK, 1, 21, analysis=("duplicate_ack",)))
    (s,) = analyze(rows).streams
    assert s.directions[0].bytes == 20 and s.directions[0].retransmitted_bytes == 20
    assert s.analysis_flags == {"duplicate_ack": 1, "retransmission": 1}


def test_streams_are_kept_apart_and_non_tcp_frames_counted() -> None:
    other = [PacketRow(r.frame + 100, r.time, r.src, r.dst, 1, r.flags, r.seq, r.ack, r.length)
             for r in _echo_rows()]
    result = analyze([*_echo_rows(), None, *other])
    assert result.packets == 17 and result.tcp_packets == 16
    assert [s.stream for s in result.streams] == [0, 1]


def test_parse_row_reads_tshark_fields() -> None:
    fields = ["7", "1700000000.5", "74", "127.0.0.1", "", "127.0.0.1", "", "40000", "7", "3",
              "0x0012", "0", "1", "0", "65483", "65495", "7"]
    fields += ["1" if f.endswith(".window_update") else "" for f in FIELDS[len(fields):]]
    row = parse_row([*fields, "sock 1 connect(('127.0.0.1', 7))"])
    assert row is not None
    assert (row.frame, row.stream, row.flags, row.ack, row.mss, row.wscale) == \
        (7, 3, SYN | ACK, 1, 65495, 7)
    assert row.src == ("127.0.0.1", 40000) and row.analysis == ("window_update",)
    assert row.comment.startswith("sock 1 connect")
    not_tcp = ["8", "1.0", "60"] + [""] * (len(FIELDS) - 3)
    assert parse_row(not_tcp) is None


def test_json_shape() -> None:
    data = to_json(analyze(_echo_rows(), "x.pcapng"))
    s = data["streams"][0]
    assert s["client"] == "127.0.0.1:40000" and s["handshake"]["complete"] is True
    assert s["teardown"]["time_wait"] == ["127.0.0.1:40000"]
    assert [seg["flag_names"] for seg in s["segments"]][:2] == ["SYN", "SYN,ACK"]
    json.dumps(data)


def test_progress_bar_draws_and_clears() -> None:
    out = io.StringIO()
    bar = ProgressBar(1000, out, width=10)
    bar(500)
    bar(2000)
    bar.finish()
    text = out.getvalue()
    assert "#####....." in text and "100%" in text and text.endswith("\r")


def test_missing_tshark_is_one_line_naming_the_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TsharkMissing, match="apt-get install tshark"):
        tshark_mod.find_tshark(lambda name: None, lambda: None)
    monkeypatch.setattr(tshark_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(tshark_mod, "_pyshark_discovery", lambda: None)
    assert main(["analyze", str(CAPTURES / "echo.pcapng")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install tshark" in err


# -- real tshark ---------------------------------------------------------------------------


@pytest.fixture
def tshark() -> str:
    found = shutil.which("tshark")
    if found is None:
        if os.environ.get("TRACESOCK_REQUIRE_CAPTURE") == "1":
            pytest.fail("TRACESOCK_REQUIRE_CAPTURE=1 but tshark is not installed")
        pytest.skip("tshark is not installed")
    return found


def _client_endpoint(name: str) -> tuple[str, int]:
    tr = load(str(CAPTURES / f"{name}.jsonl"))
    client = next(c for c in tr.connections.values() if c.role == "client")
    return tuple(client.laddr)  # type: ignore[return-value]


@pytest.mark.usefixtures("tshark")
def test_echo_capture() -> None:
    result = analyze_file(str(CAPTURES / "echo.pcapng"))
    (s,) = result.streams
    client = _client_endpoint("echo")
    assert s.client == client
    assert s.handshake is not None and s.handshake.complete
    assert s.handshake.rtt is not None and s.handshake.rtt > 0
    assert s.handshake.opener_mss == 65495 and s.handshake.opener_wscale is not None
    assert [d.bytes for d in s.directions] == [20, 20]
    assert s.teardown.active_closer == client and s.teardown.time_wait == (client,)
    assert s.rows[0].comment.startswith("sock 2 connect")
    assert s.analysis_flags == {}


@pytest.mark.usefixtures("tshark")
def test_refused_capture() -> None:
    (s,) = analyze_file(str(CAPTURES / "refused.pcapng")).streams
    assert s.refused and s.packets == 2


@pytest.mark.usefixtures("tshark")
def test_half_close_and_http_captures() -> None:
    (half,) = analyze_file(str(CAPTURES / "half-close.pcapng")).streams
    assert half.teardown.active_closer == _client_endpoint("half-close")
    (http,) = analyze_file(str(CAPTURES / "http-close.pcapng")).streams
    assert http.teardown.active_closer == http.server  # Connection: close: server first
    assert http.teardown.time_wait == (http.server,)


@pytest.mark.usefixtures("tshark")
def test_cli_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(CAPTURES / "chunking.pcapng")]) == 0
    out = capsys.readouterr().out
    assert "handshake: complete" in out and "1000 bytes in 1 data segments" in out
    assert main(["analyze", str(CAPTURES / "chunking.pcapng"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["streams"][0]["directions"][0]["bytes"] == 1000


@pytest.mark.usefixtures("tshark")
def test_unreadable_captures_are_one_line_errors(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"not a capture at all")
    for path in (bad, tmp_path / "missing.pcapng"):
        assert main(["analyze", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tracesock: error: analyze:") and err.count("\n") == 1


@pytest.mark.usefixtures("tshark")
def test_progress_is_reported_while_reading() -> None:
    seen: list[int] = []
    analyze_file(str(CAPTURES / "echo.pcapng"), progress=seen.append)
    assert seen and seen[0] > 0


def test_cli_shows_no_bar_when_stderr_is_not_a_terminal(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tshark_mod, "analyze_file",
                        lambda path, progress=None: analyze(_echo_rows(), path))
    assert tshark_mod.cli(argparse.Namespace(capture=str(CAPTURES / "echo.pcapng"),
                                         json=False)) == 0
    assert capsys.readouterr().err == ""
