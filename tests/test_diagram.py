"""Ladder diagrams from the golden echo/refused traces and captures: text, Mermaid, SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tracesock.cli import main
from tracesock.lecture.diagram import render_mermaid, render_svg, render_text
from tracesock.lecture.ladder import Arrow, Ladder, Note, build_ladder, ladder_for
from tracesock.trace.reader import load

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def _echo(capture: bool = True):  # type: ignore[no-untyped-def]
    trace = load(str(CAPTURES / "echo.jsonl"))
    return ladder_for(trace, str(CAPTURES / "echo.pcapng") if capture else None)


def _line(lines: list[str], *needles: str) -> str:
    found = [ln for ln in lines if all(n in ln for n in needles)]
    assert found, f"no line with {needles}"
    return found[0]


def test_loopback_connection_has_two_columns_keyed_by_port() -> None:
    ladder = _echo()
    keys = [c.key for c in ladder.columns]
    assert len(keys) == 2 and all(k.startswith("127.0.0.1:") for k in keys)
    trace = load(str(CAPTURES / "echo.jsonl"))
    client = next(c for c in trace.connections.values() if c.role == "client")
    assert keys == [f"127.0.0.1:{client.laddr[1]}", f"127.0.0.1:{client.raddr[1]}"]
    assert "client" in ladder.columns[0].subtitle and "listening" in ladder.columns[1].subtitle


def test_calls_sit_beside_their_segments() -> None:
    lines = list(render_text(_echo()))
    assert "connect() ..." in _line(lines, "SYN seq=0 ack=0 len=0")
    assert "connect() returns" in _line(lines, "SYN,ACK")
    assert "accept() returns sock 3" in _line(lines, "ACK seq=1 ack=1 len=0")
    fin = _line(lines, "FIN,ACK seq=21 ack=21")
    assert "sock 2 close()" in fin and "recv(1024) = 0 (EOF)" in fin
    assert "sock 3 close()" in _line(lines, "FIN,ACK seq=21 ack=22")
    assert "send() = 20" in _line(lines, "PSH,ACK seq=1 ack=1 len=20")


def test_arrows_point_the_way_the_segment_went() -> None:
    arrows = [r for r in _echo().rows if isinstance(r, Arrow)]
    assert [(a.label.split()[0], a.src, a.dst) for a in arrows[:3]] == \
        [("SYN", 0, 1), ("SYN,ACK", 1, 0), ("ACK", 0, 1)]
    lines = list(render_text(_echo()))
    assert "|<" in _line(lines, "SYN,ACK") and ">|" in _line(lines, "SYN seq=0")


def test_without_capture_calls_are_drawn_with_byte_counts() -> None:
    ladder = _echo(capture=False)
    assert not ladder.captured
    arrows = [r for r in ladder.rows if isinstance(r, Arrow)]
    assert [a.label for a in arrows] == ["connect", "20 bytes", "20 bytes"]
    assert [(a.src, a.dst) for a in arrows] == [(0, 1), (0, 1), (1, 0)]
    notes = [r.text for r in ladder.rows if isinstance(r, Note)]
    assert "sock 3 recv(1024) = 0 (EOF)" in notes


def test_refused_client_column_comes_from_its_syn() -> None:
    trace = load(str(CAPTURES / "refused.jsonl"))
    ladder = ladder_for(trace, str(CAPTURES / "refused.pcapng"))
    assert all(c.key.startswith("127.0.0.1:") and not c.key.endswith(":0")
               for c in ladder.columns)
    rst = [r for r in ladder.rows if isinstance(r, Arrow) and r.role == "rst"]
    assert len(rst) == 1 and "raises ConnectionRefusedError" in rst[0].dst_notes[0]


def test_untraced_peer_gets_its_column_and_recv_arrows() -> None:
    trace = load(str(CAPTURES / "http-close.jsonl"))
    ladder = build_ladder(trace)
    assert ladder.columns[1].subtitle == "not traced"
    labels = [r.label for r in ladder.rows if isinstance(r, Arrow)]
    assert labels[-1] == "EOF" and any(lb.endswith("bytes") for lb in labels[2:])


def test_mermaid() -> None:
    text = render_mermaid(_echo())
    lines = text.splitlines()
    assert lines[0] == "sequenceDiagram"
    assert sum(ln.strip().startswith("participant") for ln in lines) == 2
    assert any("P0->>P1: SYN seq=0 ack=0 len=0" in ln for ln in lines)
    assert ";" not in text.replace("#59;", "")


def test_svg_is_standalone_and_well_formed() -> None:
    svg = render_svg(_echo())
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "<script" not in svg and "http://" not in svg.replace(
        'xmlns="http://www.w3.org/2000/svg"', "") and "@import" not in svg
    texts = "".join(el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "SYN,ACK seq=0 ack=1 len=0" in texts and "accept() returns sock 3" in texts


@pytest.mark.parametrize("fmt", ["text", "mermaid", "svg"])
def test_cli_writes_each_format(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"echo.{fmt}"
    assert main(["diagram", str(CAPTURES / "echo.jsonl"), "--capture",
                 str(CAPTURES / "echo.pcapng"), "--format", fmt, "-o", str(out)]) == 0
    assert "SYN" in out.read_text(encoding="utf-8")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["diagram", str(CAPTURES / "echo.jsonl"), "-o",
                 str(tmp_path / "no" / "such" / "dir.svg")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("tracesock: error:") for e in err)


def test_trace_without_tcp_says_so(tmp_path: Path) -> None:
    import socket

    import tracesock

    path = str(tmp_path / "udp.jsonl")
    with tracesock.trace(path):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.close()
    lines = list(render_text(build_ladder(load(path))))
    assert "no TCP connection" in lines[0]


def _state_walk(ladder, col: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The states a column goes through, repeats removed, the initial one first."""
    walk = [ladder.initial_states[col]]
    for row in ladder.rows:
        for c, st in row.states:
            if c == col and st != walk[-1]:
                walk.append(st)
    return walk


def test_states_from_the_echo_capture() -> None:
    ladder = _echo()
    assert not ladder.states_inferred
    assert _state_walk(ladder, 0) == ["CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1",
                                      "TIME_WAIT"]
    assert _state_walk(ladder, 1) == ["LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT",
                                      "LAST_ACK", "CLOSED"]
    lines = list(render_text(ladder))
    after_synack = lines[lines.index(_line(lines, "SYN,ACK")) + 1]
    assert "[ESTABLISHED]" in after_synack
    assert "[TIME_WAIT]" in lines[lines.index(_line(lines, "FIN,ACK seq=21 ack=22")) + 1]
    assert "?" not in "".join(ln for ln in lines if "[" in ln and "]" in ln and "(" not in ln)
    mermaid = render_mermaid(ladder)
    assert "Note over P0: [TIME_WAIT]" in mermaid and "Note over P1: [LAST_ACK]" in mermaid
    svg = render_svg(ladder)
    ET.fromstring(svg)
    assert ">FIN_WAIT_1<" in svg and ">CLOSE_WAIT<" in svg


def test_states_from_the_half_close_capture() -> None:
    trace = load(str(CAPTURES / "half-close.jsonl"))
    ladder = ladder_for(trace, str(CAPTURES / "half-close.pcapng"))
    # the client shuts down its sending side first: FIN_WAIT_2 while it still receives
    assert _state_walk(ladder, 0) == ["CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1",
                                      "FIN_WAIT_2", "TIME_WAIT"]
    assert _state_walk(ladder, 1) == ["LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT",
                                      "LAST_ACK", "CLOSED"]
    data_back = [r for r in ladder.rows if isinstance(r, Arrow) and r.src == 1
                 and "len=41" in r.label]
    assert data_back  # the server's reply travels while the client is in FIN_WAIT_2
    before = [r for r in ladder.rows if r.t <= data_back[0].t]
    assert _state_walk(Ladder(ladder.title, ladder.columns, tuple(before), True,
                              ladder.initial_states), 0)[-1] == "FIN_WAIT_2"


def test_states_inferred_from_calls_are_marked() -> None:
    trace = load(str(CAPTURES / "half-close.jsonl"))
    ladder = ladder_for(trace)
    assert ladder.states_inferred
    assert _state_walk(ladder, 0) == ["CLOSED", "ESTABLISHED", "FIN_WAIT_2", "TIME_WAIT"]
    assert _state_walk(ladder, 1) == ["LISTEN", "ESTABLISHED", "CLOSE_WAIT", "CLOSED"]
    text = "\n".join(render_text(ladder))
    assert "[FIN_WAIT_2?]" in text and "[CLOSE_WAIT?]" in text and "inferred" in text
    assert "[TIME_WAIT?]" in render_mermaid(ladder)


def test_refused_states() -> None:
    trace = load(str(CAPTURES / "refused.jsonl"))
    ladder = ladder_for(trace, str(CAPTURES / "refused.pcapng"))
    assert _state_walk(ladder, 0) == ["CLOSED", "SYN_SENT", "CLOSED"]


def test_inferred_states_of_a_shared_descriptor_and_a_timed_out_connect() -> None:
    shared = ladder_for(load(str(CAPTURES / "shared-close.jsonl")))
    client_closes = [r for r in shared.rows if isinstance(r, Note) and r.col == 0
                     and r.text.endswith("sock 2 close()")]
    assert len(client_closes) == 2
    # the parent's close() sends nothing: the child still holds the descriptor
    assert dict(client_closes[0].states) == {0: "ESTABLISHED", 1: "ESTABLISHED"}
    assert dict(client_closes[1].states)[0] == "FIN_WAIT_2"
    backlog = ladder_for(load(str(CAPTURES / "backlog.jsonl")))
    timed_out = next(c for c, col in enumerate(backlog.columns) if "sock 4" in col.subtitle)
    assert _state_walk(backlog, timed_out) == [""]  # not guessed: the calls cannot tell
    assert "LISTEN" in _state_walk(backlog, 1)
