"""The I/O-free side of capture: frame parsing, pcapng, and the join of segments with calls.

The sniffer itself is tested on real loopback traffic in test_capture.py; here the
inputs are built by hand so that every correlation rule is pinned down exactly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tracesock.capture import pcapng
from tracesock.capture.join import join
from tracesock.capture.segments import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Segment,
    parse_frame,
    relativize,
    wire_length,
)
from tracesock.errors import CaptureError
from tracesock.lecture.timeline import render, render_with_capture
from tracesock.trace.reader import Trace, load

EPOCH = 1_700_000_000.0
C, S = ("127.0.0.1", 40000), ("127.0.0.1", 7)


def _trace(tmp_path: Path, calls: list[dict[str, Any]], *, epoch: float | None = EPOCH,
           name: str = "t.jsonl") -> Trace:
    header: dict[str, Any] = {"type": "trace", "format": "tracesock", "version": 1,
                              "started": "", "pid": 1, "argv": [], "python": "3.11",
                              "payload": False, "max_payload": None}
    if epoch is not None:
        header["epoch"] = epoch
    lines = [header]
    lines += [{"type": "call", "seq": i, "dur": 0.0001, **c} for i, c in enumerate(calls, 1)]
    lines.append({"type": "end", "t": 1.0, "events": len(calls), "lost": 0})
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return load(str(path))


def _sock(sock: int, t: float, **extra: Any) -> dict[str, Any]:
    return {"sock": sock, "op": "socket", "t": t, "family": "AF_INET",
            "kind": "SOCK_STREAM", **extra}


def _seg(t: float, src: tuple[str, int], dst: tuple[str, int], flags: int, seq: int = 0,
         ack: int = 0, length: int = 0) -> Segment:
    return Segment(EPOCH + t, src, dst, flags, seq, ack, length)


ECHO_CALLS: list[dict[str, Any]] = [
    _sock(1, 0.000),
    {"sock": 1, "op": "listen", "t": 0.001},
    {"sock": 1, "op": "accept", "t": 0.005, "dur": 0.0067, "accepted": 3,
     "laddr": list(S), "raddr": list(C)},
    _sock(2, 0.002),
    {"sock": 2, "op": "connect", "t": 0.010, "dur": 0.001, "args": {"address": list(S)},
     "laddr": list(C), "raddr": list(S)},
    _sock(3, 0.0115, parent=1, laddr=list(S), raddr=list(C)),
    {"sock": 2, "op": "sendall", "t": 0.020, "nbytes": 5},
    {"sock": 3, "op": "recv", "t": 0.019, "dur": 0.0015, "nbytes": 5,
     "args": {"bufsize": 1024}},
    {"sock": 2, "op": "shutdown", "t": 0.030, "args": {"how": "SHUT_WR"}},
    {"sock": 3, "op": "recv", "t": 0.025, "dur": 0.006, "nbytes": 0,
     "args": {"bufsize": 1024}},
    {"sock": 3, "op": "close", "t": 0.032, "fd_closed": True},
    {"sock": 2, "op": "recv", "t": 0.031, "dur": 0.002, "nbytes": 0,
     "args": {"bufsize": 1024}},
    {"sock": 2, "op": "close", "t": 0.034},
]

ECHO_SEGMENTS = [
    _seg(0.0103, C, S, SYN, 100),
    _seg(0.0105, S, C, SYN | ACK, 900, 101),
    _seg(0.0106, C, S, ACK, 101, 901),
    _seg(0.0201, C, S, PSH | ACK, 101, 901, 5),
    _seg(0.0202, S, C, ACK, 901, 106),
    _seg(0.0301, C, S, FIN | ACK, 106, 901),
    _seg(0.0302, S, C, ACK, 901, 107),
    _seg(0.0321, S, C, FIN | ACK, 901, 107),
    _seg(0.0322, C, S, ACK, 107, 902),
    # another process's connection to the same server port: not traced
    _seg(0.0150, ("127.0.0.1", 41234), S, SYN, 5),
    _seg(0.0151, S, ("127.0.0.1", 41234), SYN | ACK, 6, 6),
]

CONNECT = "sock 2 connect(('127.0.0.1', 7))"
ACCEPT = "sock 1 accept() = sock 3"


# -- the join: correlation rules -------------------------------------------------------


def test_default_join_keeps_handshake_fins_and_their_acks(tmp_path: Path) -> None:
    joined = join(_trace(tmp_path, ECHO_CALLS), relativize(ECHO_SEGMENTS))
    assert [(js.segment.flag_names, js.role, js.outbound) for js in joined] == [
        ("SYN", "handshake", True),
        ("SYN,ACK", "handshake", False),
        ("ACK", "handshake", True),
        ("FIN,ACK", "fin", True),
        ("ACK", "fin-ack", False),
        ("FIN,ACK", "fin", False),
        ("ACK", "fin-ack", True),
    ]
    handshake = [js.comment for js in joined[:3]]
    assert handshake == [f"{CONNECT}; {ACCEPT}"] * 3
    assert joined[3].comment == "sock 2 shutdown(SHUT_WR); sock 3 recv(1024) = 0"
    assert joined[4].comment == joined[3].comment  # the ACK of a FIN goes with the FIN
    assert joined[5].comment == "sock 3 close(); sock 2 recv(1024) = 0"


def test_keep_all_adds_data_by_sequence_number_and_bare_acks(tmp_path: Path) -> None:
    joined = join(_trace(tmp_path, ECHO_CALLS), relativize(ECHO_SEGMENTS), keep_all=True)
    assert len(joined) == 9
    data = joined[3]
    assert (data.role, data.segment.rel_seq, data.segment.length) == ("data", 1, 5)
    assert data.comment == "sock 2 sendall(data); sock 3 recv(1024)"
    bare = joined[4]
    assert (bare.role, bare.calls, bare.segment.rel_ack) == ("ack", (), 6)


def test_refused_connect_matched_by_destination_inside_its_own_window(tmp_path: Path) -> None:
    # Linux releases the port of a refused connect: getsockname says 0.0.0.0:port.
    calls = [_sock(1, 0.0),
             {"sock": 1, "op": "connect", "t": 0.010, "dur": 0.0005,
              "args": {"address": ["127.0.0.1", 9]}, "laddr": ["0.0.0.0", 34698],
              "error": {"type": "ConnectionRefusedError", "errno": 111,
                        "message": "[Errno 111] Connection refused"}},
             {"sock": 1, "op": "close", "t": 0.011}]
    me, port9 = ("127.0.0.1", 34698), ("127.0.0.1", 9)
    segs = [_seg(0.0102, me, port9, SYN, 7), _seg(0.0103, port9, me, RST | ACK, 0, 8),
            # the same 4-tuple a second later is someone else's
            _seg(1.0, me, port9, SYN, 99), _seg(1.0001, port9, me, RST | ACK, 0, 100)]
    joined = join(_trace(tmp_path, calls), relativize(segs))
    label = "sock 1 connect(('127.0.0.1', 9)) -> ConnectionRefusedError"
    assert [(js.segment.flag_names, js.comment) for js in joined] == [
        ("SYN", label), ("RST,ACK", label)]


def test_unknown_local_port_falls_back_to_destination_and_time(tmp_path: Path) -> None:
    calls = [_sock(1, 0.0),
             {"sock": 1, "op": "connect", "t": 0.010, "dur": 0.0005,
              "args": {"address": ["localhost", 9]}, "laddr": ["0.0.0.0", 0],
              "error": {"type": "ConnectionRefusedError", "errno": 111, "message": ""}}]
    segs = [_seg(0.0101, ("127.0.0.1", 5555), ("127.0.0.1", 9), SYN, 1),
            _seg(0.0101, ("127.0.0.1", 5556), ("127.0.0.1", 10), SYN, 1)]
    joined = join(_trace(tmp_path, calls), relativize(segs))
    assert [js.segment.src[1] for js in joined] == [5555]


def test_a_reused_four_tuple_goes_to_the_socket_of_its_time(tmp_path: Path) -> None:
    calls = []
    for sock, t in ((1, 0.010), (2, 0.500)):
        calls += [_sock(sock, t - 0.001),
                  {"sock": sock, "op": "connect", "t": t, "dur": 0.001,
                   "args": {"address": list(S)}, "laddr": list(C), "raddr": list(S)},
                  {"sock": sock, "op": "close", "t": t + 0.01}]
    segs = []
    for t, isn in ((0.0103, 100), (0.5003, 7000)):
        segs += [_seg(t, C, S, SYN, isn), _seg(t + 0.0001, S, C, SYN | ACK, 1, isn + 1),
                 _seg(t + 0.01, C, S, FIN | ACK, isn + 1, 2)]
    joined = join(_trace(tmp_path, calls), relativize(segs))
    assert [js.comment.split()[1] for js in joined] == ["1"] * 3 + ["2"] * 3
    assert [js.segment.rel_seq for js in joined if js.segment.src == C] == [0, 1, 0, 1]


def test_rst_goes_to_the_close_that_sent_it_and_the_call_it_broke(tmp_path: Path) -> None:
    calls = [
        _sock(1, 0.0),
        {"sock": 1, "op": "connect", "t": 0.010, "dur": 0.001,
         "args": {"address": list(S)}, "laddr": list(C), "raddr": list(S)},
        _sock(2, 0.011, parent=9, laddr=list(S), raddr=list(C)),
        {"sock": 2, "op": "close", "t": 0.020},  # with unread data: the kernel resets
        {"sock": 1, "op": "recv", "t": 0.019, "dur": 0.0015, "args": {"bufsize": 10},
         "error": {"type": "ConnectionResetError", "errno": 104, "message": "reset"}},
    ]
    segs = [_seg(0.0102, C, S, SYN, 1), _seg(0.0103, S, C, SYN | ACK, 1, 2),
            _seg(0.0201, S, C, RST | ACK, 2, 2)]
    joined = join(_trace(tmp_path, calls), relativize(segs))
    assert joined[-1].comment == "sock 2 close(); sock 1 recv(10) -> ConnectionResetError"


def test_a_trace_without_epoch_cannot_be_joined(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="epoch"):
        join(_trace(tmp_path, ECHO_CALLS, epoch=None), ECHO_SEGMENTS)


def test_render_puts_segments_inside_the_calls_that_waited_for_them(tmp_path: Path) -> None:
    trace = _trace(tmp_path, ECHO_CALLS)
    lines = list(render(trace, join(trace, relativize(ECHO_SEGMENTS))))
    body = [line.split("ms  ", 1)[1].strip() for line in lines]
    start = body.index("sock 2   connect(('127.0.0.1', 7)) ...")
    assert body[start + 1].startswith("SYN ->")
    assert body[start + 2].startswith("<- SYN,ACK")
    assert body[start + 3].startswith("ACK ->")
    assert body[start + 4].startswith("sock 2   connect(('127.0.0.1', 7))")
    assert body[start + 4].endswith("(returned after 1.000 ms)")
    times = [float(line.split("ms", 1)[0]) for line in lines]
    assert times == sorted(times)
    syn = next(line for line in lines if "SYN ->" in line)
    assert "seq=0 ack=0 len=0" in syn and f"[{CONNECT}; {ACCEPT}]" in syn


# -- frames: parsing and relative numbers ------------------------------------------------


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int, options: bytes = b"",
         payload: bytes = b"") -> bytes:
    hlen = 20 + len(options)
    return struct.pack("!HHIIHHHH", sport, dport, seq, ack, (hlen // 4) << 12 | flags,
                       65535, 0, 0) + options + payload


def _ipv4(tcp: bytes, src: str = "127.0.0.1", dst: str = "127.0.0.2", proto: int = 6) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, proto, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + tcp


def _eth(ip: bytes, etype: int = 0x0800) -> bytes:
    return b"\0" * 12 + struct.pack("!H", etype) + ip


OPTS = (b"\x02\x04\xff\xd7" + b"\x04\x02" + b"\x08\x0a" + struct.pack("!II", 11, 22)
        + b"\x01" + b"\x03\x03\x07")


def test_parse_ipv4_frame_with_options() -> None:
    frame = _eth(_ipv4(_tcp(40000, 7, 1000, 0, SYN, OPTS)))
    seg = parse_frame(frame, 1, 12.5)
    assert seg is not None
    assert (seg.src, seg.dst, seg.flag_names, seg.seq, seg.length) == (
        ("127.0.0.1", 40000), ("127.0.0.2", 7), "SYN", 1000, 0)
    assert dict(seg.options) == {"MSS": 65495, "SAckOK": None, "Timestamp": (11, 22),
                                 "WScale": 7}
    assert seg.is_syn and not seg.is_pure_ack and seg.seq_space == 1


def test_parse_ipv6_and_other_link_types() -> None:
    tcp = _tcp(5, 6, 1, 2, PSH | ACK, payload=b"abc")
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, b"\0" * 15 + b"\1",
                      b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])) + tcp
    seg = parse_frame(_eth(ip6, 0x86DD), 1, 0.0)
    assert seg is not None
    assert (seg.src, seg.dst, seg.length) == (("::1", 5), ("127.0.0.1", 6), 3)
    ip4 = _ipv4(tcp)
    sll = struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, 0x0800) + ip4
    for frame, linktype in ((ip4, 101), (sll, 113), (struct.pack("<I", 2) + ip4, 0)):
        parsed = parse_frame(frame, linktype, 0.0)
        assert parsed is not None and parsed.length == 3


def test_parse_rejects_what_is_not_tcp() -> None:
    assert parse_frame(_eth(_ipv4(b"\0" * 20, proto=17)), 1, 0.0) is None
    assert parse_frame(_eth(_ipv4(_tcp(1, 2, 3, 4, ACK))[:30]), 1, 0.0) is None
    assert parse_frame(b"\0" * 5, 1, 0.0) is None
    assert parse_frame(_ipv4(_tcp(1, 2, 3, 4, ACK)), 9999, 0.0) is None


def test_truncated_frame_keeps_its_real_length() -> None:
    frame = _eth(_ipv4(_tcp(1, 2, 3, 4, PSH | ACK, payload=b"x" * 500)))
    cut = frame[:96]
    seg = parse_frame(cut, 1, 0.0)
    assert seg is not None and seg.length == 500
    assert wire_length(cut, 1) == len(frame)


def test_relative_numbers_start_at_each_syn() -> None:
    segs = relativize([
        _seg(0, C, S, SYN, 0xFFFFFFF0), _seg(0, S, C, SYN | ACK, 50, 0xFFFFFFF1),
        _seg(0, C, S, PSH | ACK, 0xFFFFFFF1, 51, 100),  # wraps around 2**32
        _seg(1, C, S, SYN, 7),  # the 4-tuple reused: numbers restart
        _seg(1, S, C, SYN | ACK, 80, 8)])
    assert [(s.rel_seq, s.rel_ack) for s in segs] == [(0, 0), (0, 1), (1, 1), (0, 0), (0, 1)]


# -- pcapng ------------------------------------------------------------------------------


def test_pcapng_round_trip_keeps_times_bytes_and_comments(tmp_path: Path) -> None:
    frames = [pcapng.Frame(EPOCH + 0.123456789, 1, b"\1\2\3", 60, "sock 1 connect(('::1', 7))"),
              pcapng.Frame(EPOCH + 1, 1, b"\4" * 17, 17, None)]
    path = str(tmp_path / "x.pcapng")
    pcapng.write(path, frames, linktype=1, snaplen=65535, ifname="lo")
    back = list(pcapng.read(path))
    assert [(f.data, f.wire_len, f.comment, f.linktype) for f in back] == [
        (f.data, f.wire_len, f.comment, 1) for f in frames]
    assert back[0].time == pytest.approx(frames[0].time, abs=1e-6)
    assert (tmp_path / "x.pcapng").stat().st_mode & 0o777 == 0o600


def test_classic_pcap_is_read_too(tmp_path: Path) -> None:
    frame = _eth(_ipv4(_tcp(1, 2, 3, 4, SYN)))
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    data += struct.pack("<IIII", 100, 250000, len(frame), len(frame)) + frame
    path = tmp_path / "x.pcap"
    path.write_bytes(data)
    (back,) = pcapng.read(str(path))
    assert (back.time, back.data) == (100.25, frame)


@pytest.mark.parametrize("content", [b"", b"not a capture", None])
def test_bad_capture_files_are_capture_errors(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pcapng"
    if content is None:  # a pcapng cut in the middle of a block
        pcapng.write(str(path), [pcapng.Frame(1.0, 1, b"x" * 40, 40)], linktype=1,
                     snaplen=100, ifname="lo")
        content = path.read_bytes()[:-10]
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=r"bad\.pcapng"):
        list(pcapng.read(str(path)))


def test_render_with_capture_reads_the_file(tmp_path: Path) -> None:
    trace = _trace(tmp_path, ECHO_CALLS)
    frames = []
    for s in ECHO_SEGMENTS:
        ip = _ipv4(_tcp(s.src[1], s.dst[1], s.seq, s.ack, s.flags, payload=b"x" * s.length),
                   s.src[0], s.dst[0])
        frames.append(pcapng.Frame(s.time, 1, _eth(ip), 14 + len(ip)))
    path = str(tmp_path / "c.pcapng")
    pcapng.write(path, frames, linktype=1, snaplen=65535, ifname="lo")
    text = "\n".join(render_with_capture(trace, path))
    assert "SYN ->" in text and "<- SYN,ACK" in text and "41234" not in text
    assert "PSH,ACK ->" in text  # the file's own data segments are shown
    empty = str(tmp_path / "empty.pcapng")
    pcapng.write(empty, [], linktype=1, snaplen=65535, ifname="lo")
    assert next(iter(render_with_capture(trace, empty))).startswith("(no segment in")
