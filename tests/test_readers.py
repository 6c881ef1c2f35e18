"""Readers of traces of any size (issue 14): streamed stats and show, their filters, the
socket names, iter_events. No timings here (bench/bench_readers.py measures)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracesock
from tracesock.capture import pcapng
from tracesock.capture.join import join, join_file, load_segments
from tracesock.cli import main
from tracesock.lecture.show import (
    EventFilter,
    format_stats,
    in_start_order,
    socket_type,
    stats,
    timeline,
    timeline_lines,
)
from tracesock.lecture.stats import SocketSums, scan, write_json
from tracesock.lecture.timeline import render_with_capture, stream_with_capture
from tracesock.trace.events import CallEvent
from tracesock.trace.progress import ProgressBar

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = sorted((ROOT / "captures").glob("*.jsonl"))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def pingpong(tmp_path: Path) -> Path:
    """A socketpair ping-pong, traced: two AF_UNIX stream sockets."""
    path = tmp_path / "pingpong.jsonl"
    with tracesock.trace(str(path)):
        a, b = socket.socketpair()
        for _ in range(50):
            a.sendall(b"ping")
            b.recv(64)
            b.sendall(b"pong")
            a.recv(64)
        a.close()
        b.close()
    return path


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_streamed_stats_equal_the_loaded_trace_s(path: Path) -> None:
    summary = scan(str(path))
    assert summary.pop("warnings") == []
    assert summary == stats(tracesock.load(str(path)))


def test_streamed_stats_of_a_big_socketpair_trace(pingpong: Path) -> None:
    summary = scan(str(pingpong))
    summary.pop("warnings")
    assert summary == stats(tracesock.load(str(pingpong)))
    assert [c["recv_chunks"] for c in summary["connections"]] == [[4] * 50, [4] * 50]


def test_stats_name_sockets_by_family_and_type(pingpong: Path) -> None:
    code, out, _ = cli("stats", str(pingpong))
    assert code == 0
    assert out.count(" unix stream ") == 2 and " tcp " not in out


@pytest.mark.parametrize(("family", "kind", "name"), [
    ("AF_INET", "SOCK_STREAM", "tcp"), ("AF_INET6", "SOCK_STREAM", "tcp6"),
    ("AF_INET", "SOCK_DGRAM", "udp"), ("AF_INET6", "SOCK_DGRAM", "udp6"),
    ("AF_UNIX", "SOCK_STREAM", "unix stream"), ("AF_UNIX", "SOCK_DGRAM", "unix dgram"),
    ("AF_UNIX", "SOCK_SEQPACKET", "unix seqpacket"), (None, "SOCK_STREAM", "tcp"),
    (None, None, "?"), ("AF_PACKET", "SOCK_RAW", "packet raw"),
])
def test_socket_type(family: str | None, kind: str | None, name: str) -> None:
    assert socket_type(family, kind) == name


def test_stats_filters(pingpong: Path) -> None:
    code, out, _ = cli("stats", "--json", "--sock", "2", str(pingpong))
    assert code == 0
    summary = json.loads(out)
    assert [c["sock"] for c in summary["connections"]] == [2]
    assert summary["events"] == summary["connections"][0]["calls"]
    code, out, _ = cli("stats", "--json", "--pid", "1", str(pingpong))
    assert json.loads(out)["connections"] == []


def test_show_filters_compose(pingpong: Path) -> None:
    code, out, _ = cli("show", "--sock", "1", "--op", "recv", str(pingpong))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 50
    assert all("sock 1 " in ln and "recv(64)" in ln for ln in lines)
    _, out, _ = cli("show", "--sock", "1,2", "--op", "sendall,close", str(pingpong))
    assert len(out.splitlines()) == 102
    _, out, _ = cli("show", "--errors", str(pingpong))
    assert out == ""
    everything = cli("show", str(pingpong))[1].splitlines()
    ms = [float(line.split()[0]) for line in everything]
    first = next(i for i in range(10, 40) if ms[i - 1] < ms[i])
    last = next(i for i in range(first + 10, 80) if ms[i] < ms[i + 1])
    since, until = (ms[first - 1] + ms[first]) / 2, (ms[last] + ms[last + 1]) / 2
    _, out, _ = cli("show", "--since", str(since), "--until", str(until), str(pingpong))
    assert out.splitlines() == everything[first:last + 1]


def test_show_errors_keeps_the_calls_that_raised() -> None:
    _, out, _ = cli("show", "--errors", str(ROOT / "captures" / "refused.jsonl"))
    assert out and all("->" in ln and "Error" in ln for ln in out.splitlines())


def test_bad_filter_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        main(["show", "--sock", "x", "t.jsonl"])
    assert exc.value.code == 2


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_streamed_show_equals_the_loaded_trace_s(path: Path) -> None:
    assert cli("show", str(path))[1].splitlines() == list(timeline(tracesock.load(str(path))))


def _ev(seq: int, t: float, dur: float, thread: int) -> CallEvent:
    return CallEvent(seq=seq, t=t, dur=dur, sock=1, op="recv", thread=thread)


def test_start_order_across_threads() -> None:
    # Thread 2's recv blocked from t=0.1 to t=0.9 while thread 1 made calls: the file
    # has it after them (by seq), the timeline where it started.
    evs = [_ev(1, 0, 0.05, 1), _ev(2, 0.2, 0.1, 1), _ev(3, 0.4, 0.1, 1),
           _ev(4, 0.1, 0.8, 2), _ev(5, 0.6, 0.1, 1), _ev(6, 0.95, 0.1, 2),
           _ev(7, 3, 0.1, 1)]
    expected = sorted(evs, key=lambda e: (e.t, e.seq))
    assert list(in_start_order(evs)) == expected
    assert list(in_start_order(evs, window=1)) != expected  # bounded: order gives way
    assert list(in_start_order(evs, delay=0.1)) != expected  # a new thread blocked longer
    assert sorted(in_start_order(evs, window=1), key=lambda e: e.seq) == evs


def test_start_order_yields_before_the_end() -> None:
    def endless() -> Iterator[CallEvent]:
        seq = 0
        while True:
            seq += 1
            yield _ev(seq, seq, 0.5, 1)

    lines = timeline_lines(in_start_order(endless()), many=False)
    assert next(lines).split()[0] == "1000.000"
    assert next(lines).split()[0] == "2000.000"


def test_event_filter_defaults_keep_everything() -> None:
    assert EventFilter()(_ev(1, 0, 0, 1))


def test_iter_events_streams_what_load_reads(pingpong: Path) -> None:
    assert list(tracesock.iter_events(str(pingpong))) == tracesock.load(str(pingpong)).events
    assert "iter_events" in tracesock.__all__


def test_loaded_events_share_repeated_values(pingpong: Path) -> None:
    recvs = [e for e in tracesock.load(str(pingpong)).events if e.op == "recv"]
    assert all(e.args is recvs[0].args and e.op is recvs[0].op for e in recvs)
    assert recvs[0].data == b"ping" and recvs[0].data_b64 is not None


def test_stats_error_names_the_line_as_load_does(tmp_path: Path) -> None:
    golden = (ROOT / "captures" / "echo.jsonl").read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join([*golden[:3], b'{"type": "call", "seq": \n', *golden[3:]]))
    code, _, err = cli("stats", str(bad))
    assert code == 2 and f"{bad}:4: not valid JSON" in err
    with pytest.raises(tracesock.TraceFormatError, match=":4: not valid JSON"):
        tracesock.load(str(bad))


def test_progress_bar_waits_before_drawing() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar(100, out, label="stats", after_s=2.0, clock=lambda: now[0])
    bar(10)
    now[0] = 1.9
    bar(50)
    assert out.getvalue() == ""  # a read that ends within 2 s shows no bar
    now[0] = 2.5
    bar(60)
    bar(70)  # within 0.1 s of the last drawing: skipped
    assert out.getvalue().count("\r") == 1 and "stats" in out.getvalue()
    bar.finish()
    assert out.getvalue().endswith("\r")


def test_no_bar_when_stderr_is_not_a_terminal(pingpong: Path) -> None:
    code, _, err = cli("stats", str(pingpong))
    assert code == 0 and err == ""


@pytest.mark.parametrize("sizes", [[], [5], [5, 5, 5], [1, 2, 2, 3, 3, 3, 0], [7] * 30 + [1]])
def test_recv_chunks_run_length_encoded(sizes: list[int]) -> None:
    sums = SocketSums(1)
    for n in sizes:
        sums.add_chunk(n)
    assert sums.chunks() == sizes and sums.recvs == len(sizes)
    for limit in range(len(sizes) + 2):
        assert sums.chunks(limit) == sizes[:limit]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_stats_text_from_the_stream_equals_the_loaded_trace_s(path: Path) -> None:
    assert cli("stats", str(path))[1].splitlines() == \
        [*format_stats(stats(tracesock.load(str(path))))]


def test_show_filters_compose_with_capture() -> None:
    trace, capture = (str(ROOT / "captures" / f"echo.{ext}") for ext in ("jsonl", "pcapng"))
    code, out, _ = cli("show", trace, "--capture", capture, "--op", "close", "--sock", "2,3")
    lines = out.splitlines()
    calls = [ln for ln in lines if " sock " in ln.split("[")[0]]
    assert code == 0 and calls and all("close()" in ln for ln in calls)
    assert any("FIN" in ln for ln in lines) and not any("SYN" in ln for ln in lines)


@pytest.mark.parametrize("path", [*GOLDEN, None], ids=lambda p: p.name if p else "pingpong")
def test_stats_json_written_in_pieces_is_json_dumps(path: Path | None, pingpong: Path) -> None:
    path = path or pingpong
    full = scan(str(path))
    full.pop("warnings")
    pieces = scan(str(path), chunk_limit=0, keep_sums=True)
    pieces.pop("warnings")
    out = io.StringIO()
    write_json(pieces, out.write)
    assert out.getvalue() == json.dumps(full, indent=2, ensure_ascii=False)


def test_last_line_without_its_newline_is_read_as_load_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "nonl.jsonl"
    path.write_bytes((ROOT / "captures" / "echo.jsonl").read_bytes().rstrip(b"\n"))
    summary = scan(str(path))
    assert summary.pop("warnings") == [] and summary["complete"]
    assert summary == stats(tracesock.load(str(path)))


# -- show --capture on many connections ----------------------------------------------------

LISTENER = ("127.0.0.1", 7)


def _frame(src: tuple[str, int], dst: tuple[str, int], flags: int, seq: int, ack: int,
           length: int = 0) -> bytes:
    """A raw IPv4 frame (LINKTYPE_RAW) of one TCP segment."""
    tcp = struct.pack("!HHIIHHHH", src[1], dst[1], seq, ack, 5 << 12 | flags, 65535, 0, 0)
    tcp += b"x" * length
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                       socket.inet_aton(src[0]), socket.inet_aton(dst[0])) + tcp


def _many_connections(tmp_path: Path, n: int) -> tuple[str, str]:
    """A listener (sock 1) accepting ``n`` overlapping echo connections (client sock 2k,
    accepted 2k+1): a trace and its capture (every segment, data too)."""
    syn, fin, ack, psh = 0x02, 0x01, 0x10, 0x08
    epoch = 1_700_000_000.0
    calls: list[dict[str, Any]] = [
        {"sock": 1, "op": "socket", "t": 0.0, "family": "AF_INET", "kind": "SOCK_STREAM"},
        {"sock": 1, "op": "bind", "t": 0.0001, "laddr": list(LISTENER)},
        {"sock": 1, "op": "listen", "t": 0.0002}]
    frames = []
    for k in range(1, n + 1):
        t0 = 0.001 + 0.0007 * k  # connections overlap: each lasts about 10 ms
        cl, srv = 2 * k, 2 * k + 1
        here = ("127.0.0.1", 40000 + k)
        calls += [
            {"sock": cl, "op": "socket", "t": t0, "family": "AF_INET", "kind": "SOCK_STREAM"},
            {"sock": cl, "op": "connect", "t": t0 + 0.001, "dur": 0.0004,
             "args": {"address": list(LISTENER)}, "laddr": list(here), "raddr": list(LISTENER)},
            {"sock": 1, "op": "accept", "t": t0 + 0.0009, "dur": 0.0007, "accepted": srv,
             "laddr": list(LISTENER), "raddr": list(here)},
            {"sock": srv, "op": "socket", "t": t0 + 0.0017, "parent": 1, "family": "AF_INET",
             "kind": "SOCK_STREAM", "laddr": list(LISTENER), "raddr": list(here)},
            {"sock": cl, "op": "sendall", "t": t0 + 0.002, "dur": 0.0002, "nbytes": 5},
            {"sock": srv, "op": "recv", "t": t0 + 0.0019, "dur": 0.0006, "nbytes": 5,
             "args": {"bufsize": 1024}},
            {"sock": cl, "op": "shutdown", "t": t0 + 0.004, "args": {"how": "SHUT_WR"}},
            {"sock": srv, "op": "recv", "t": t0 + 0.003, "dur": 0.0012, "nbytes": 0,
             "args": {"bufsize": 1024}},
            {"sock": srv, "op": "close", "t": t0 + 0.005, "fd_closed": True},
            {"sock": cl, "op": "recv", "t": t0 + 0.0045, "dur": 0.0007, "nbytes": 0,
             "args": {"bufsize": 1024}},
            {"sock": cl, "op": "close", "t": t0 + 0.006}]
        for dt, src, dst, flags, seq, ack_no, length in (
                (0.0011, here, LISTENER, syn, 100, 0, 0),
                (0.0012, LISTENER, here, syn | ack, 900, 101, 0),
                (0.0013, here, LISTENER, ack, 101, 901, 0),
                (0.0021, here, LISTENER, psh | ack, 101, 901, 5),
                (0.0022, LISTENER, here, ack, 901, 106, 0),
                (0.0041, here, LISTENER, fin | ack, 106, 901, 0),
                (0.0042, LISTENER, here, ack, 901, 107, 0),
                (0.0051, LISTENER, here, fin | ack, 901, 107, 0),
                (0.0052, here, LISTENER, ack, 107, 902, 0)):
            data = _frame(src, dst, flags, seq, ack_no, length)
            frames.append(pcapng.Frame(epoch + t0 + dt, 101, data, len(data)))
    calls.sort(key=lambda c: c["t"] + c.get("dur", 0.0))  # the file: in return order
    header = {"type": "trace", "format": "tracesock", "version": 1, "started": "", "pid": 1,
              "argv": [], "python": "3.11", "payload": False, "max_payload": None,
              "epoch": epoch}
    lines = [header, *({"type": "call", "seq": i, **c} for i, c in enumerate(calls, 1)),
             {"type": "end", "t": 1.0, "events": len(calls), "lost": 0}]
    trace = tmp_path / "many.jsonl"
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capture = str(tmp_path / "many.pcapng")
    frames.sort(key=lambda f: f.time)
    pcapng.write(capture, frames, linktype=101, snaplen=65535, ifname="lo")
    return str(trace), capture


def _socks_of(line: str) -> set[int]:
    """The sockets a ``show --capture`` line is about: a call's, or a segment's calls'."""
    text = line.split(" ms  ", 1)[1]
    if text.startswith("sock "):
        return {int(text.split()[1])}
    calls = text.rsplit("  [", 1)[1] if "  [" in text else ""
    return {int(n) for n in re.findall(r"(?:^|; )sock (\d+) ", calls)}


def test_show_capture_of_one_socket_is_its_lines_of_the_whole(tmp_path: Path) -> None:
    trace, capture = _many_connections(tmp_path, 60)
    code, out, err = cli("show", trace, "--capture", capture)
    assert (code, err) == (0, "")
    whole = out.splitlines()
    # The streamed lines are those of the in-memory timeline.
    assert whole == list(render_with_capture(tracesock.load(trace), capture))
    assert sum("SYN ->" in line for line in whole) == 60
    for sock in (1, 2, 61, 120, 121):
        code, out, err = cli("show", trace, "--capture", capture, "--sock", str(sock))
        assert (code, err) == (0, "")
        mine = [line for line in whole if sock in _socks_of(line)]
        assert out.splitlines() == mine, sock
        if sock % 2 == 0 or sock == 1:  # a client's or the listener's: the handshake too
            assert any("SYN ->" in line for line in mine), sock
    assert len([line for line in cli("show", trace, "--capture", capture, "--sock", "1")[1]
                .splitlines() if "SYN ->" in line]) == 60  # the listener's, through accept


@pytest.mark.parametrize("keep_all", [False, True])
@pytest.mark.parametrize("trace", GOLDEN, ids=lambda p: p.stem)
def test_join_file_streams_the_join_of_a_loaded_trace(trace: Path, keep_all: bool) -> None:
    segments = load_segments(str(trace.with_suffix(".pcapng")))
    assert join_file(str(trace), segments, keep_all=keep_all) == \
        join(tracesock.load(str(trace)), segments, keep_all=keep_all)


@pytest.mark.parametrize("trace", GOLDEN, ids=lambda p: p.stem)
def test_show_capture_streamed_is_the_loaded_timeline_for_each_socket(trace: Path) -> None:
    capture = str(trace.with_suffix(".pcapng"))
    loaded = tracesock.load(str(trace))
    for keep in [None, *(EventFilter(socks={s}) for s in loaded.connections),
                 EventFilter(ops={"recv", "close"})]:
        warnings, lines = stream_with_capture(str(trace), capture, keep)
        assert list(lines) == list(render_with_capture(loaded, capture, keep)), keep
        assert warnings == loaded.warnings
