"""Reading traces: strict on malformed lines, forgiving of a killed writer, schema-valid."""

from __future__ import annotations

import json
import socket
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

import tracesock
from tracesock import TraceFormatError, TraceVersionError
from tracesock.record.sink import MmapSink, open_sink


def schema() -> dict[str, object]:
    text = resources.files("tracesock.trace").joinpath("schema.json").read_text()
    loaded: dict[str, object] = json.loads(text)
    return loaded


def record_sample(path: Path, echo: tuple[str, int]) -> None:
    with tracesock.trace(str(path)):
        s = socket.create_connection(echo)
        f = s.makefile("rwb")
        f.write("Hello, 대한민국!\n".encode())
        f.flush()
        f.readline()
        s.shutdown(socket.SHUT_WR)
        f.close()
        s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"x", ("127.0.0.1", 9))
        u.close()
        a, b = socket.socketpair()
        a.close()
        b.close()


def test_real_traces_are_valid_against_the_schema(tmp_path: Path,
                                                  echo_server: tuple[str, int]) -> None:
    out = tmp_path / "t.jsonl"
    record_sample(out, echo_server)
    validator = jsonschema.Draft202012Validator(schema())
    lines = out.read_text().splitlines()
    assert len(lines) > 10
    for line in lines:
        validator.validate(json.loads(line))
    assert json.loads(lines[0])["type"] == "trace" and json.loads(lines[-1])["type"] == "end"


def test_the_schema_rejects_what_the_format_forbids() -> None:
    validator = jsonschema.Draft202012Validator(schema())
    bad = [
        {"type": "call", "seq": 1, "t": 0, "dur": 0, "sock": 1},  # no op
        {"type": "call", "seq": 1, "t": 0, "dur": 0, "sock": 1, "op": "frobnicate"},
        {"type": "trace", "format": "tracesock", "version": 2},
        {"type": "call", "seq": 1, "t": 0, "dur": 0, "sock": 1, "op": "recv", "nbytes": -1},
    ]
    for obj in bad:
        assert not validator.is_valid(obj), obj


def write_lines(path: Path, lines: list[str], tail: bytes = b"") -> None:
    path.write_bytes("".join(line + "\n" for line in lines).encode() + tail)


HEADER = json.dumps({"type": "trace", "format": "tracesock", "version": 1, "started": "x",
                     "pid": 1, "argv": [], "python": "3.11.7", "payload": True})


def call(seq: int, op: str = "send", **extra: object) -> str:
    return json.dumps({"type": "call", "seq": seq, "t": seq / 10, "dur": 0.0, "sock": 1,
                       "op": op, **extra})


END = json.dumps({"type": "end", "t": 1.0, "events": 2, "lost": 0})


def test_truncated_last_line_is_a_warning_and_the_rest_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "killed.jsonl"
    write_lines(p, [HEADER, call(1), call(2)], tail=b'{"type": "call", "seq": 3, "t"')
    trace = tracesock.load(str(p))
    assert [e.seq for e in trace.events] == [1, 2]
    assert not trace.complete
    assert any("last line is incomplete" in w and ":4:" in w for w in trace.warnings)


def test_zero_padding_left_by_a_killed_writer(tmp_path: Path) -> None:
    p = tmp_path / "padded.jsonl"
    write_lines(p, [HEADER, call(1)], tail=b"\0" * 4096)
    trace = tracesock.load(str(p))
    assert [e.seq for e in trace.events] == [1]
    assert any("not closed cleanly" in w for w in trace.warnings)
    write_lines(p, [HEADER, call(1)], tail=b'{"type": "ca' + b"\0" * 100)
    trace = tracesock.load(str(p))
    assert any("incomplete" in w for w in trace.warnings)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([HEADER, "{not json", call(2), END], r"bad\.jsonl:2: not valid JSON"),
        ([HEADER, call(1), "[1, 2]", END], r"bad\.jsonl:3: a trace line must be a JSON object"),
        ([HEADER, call(2), call(1), END], r"bad\.jsonl:3: seq 1 does not follow 2"),
        ([HEADER, json.dumps({"type": "call", "seq": 1}), END], r":2: .*lacks the 't' field"),
        ([HEADER, call(1, nbytes="x"), END], r":2: 'nbytes' must be an integer"),
        (['{"hello": 1}', call(1)], r"bad\.jsonl:1: not a tracesock trace"),
        (["", call(1)], r"bad\.jsonl:1: empty file"),
        ([HEADER, call(1), "\0\0", call(2)], r"NUL bytes in the middle"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, lines: list[str],
                                            message: str) -> None:
    p = tmp_path / "bad.jsonl"
    write_lines(p, lines)
    with pytest.raises(TraceFormatError, match=message):
        tracesock.load(str(p))


def test_unknown_version_is_refused_saying_which(tmp_path: Path) -> None:
    p = tmp_path / "v9.jsonl"
    write_lines(p, [HEADER.replace('"version": 1', '"version": 9'), call(1)])
    with pytest.raises(TraceVersionError, match=r"version 9 is not supported .*version 1"):
        tracesock.load(str(p))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"cannot read the trace: No such file"):
        tracesock.load(str(tmp_path / "nope.jsonl"))


def test_unknown_fields_and_record_types_are_kept_or_skipped(tmp_path: Path) -> None:
    p = tmp_path / "future.jsonl"
    write_lines(p, [HEADER, call(1, novel=True), json.dumps({"type": "note", "x": 1}), END])
    trace = tracesock.load(str(p))
    assert trace.events[0].extra == {"novel": True}
    assert trace.complete and trace.warnings == []


def test_mmap_sink_grows_and_cuts_back(tmp_path: Path) -> None:
    p = tmp_path / "big"
    sink = open_sink(str(p))
    assert isinstance(sink, MmapSink)
    line = b"x" * 999 + b"\n"
    for _ in range(30000):  # 30 MB: several windows, lines split across their edges
        try:
            sink.write(line)
        except ValueError:
            sink.spill(line)
    assert p.stat().st_size > 30_000_000  # space is reserved ahead...
    sink.close()
    assert p.stat().st_size == 30_000_000  # ...and cut back to what was written
    assert p.read_bytes() == line * 30000


def test_recorder_warns_and_stops_when_writing_fails(tmp_path: Path) -> None:
    class Failing:
        def __init__(self) -> None:
            self.lines: list[bytes] = []

        def write(self, line: bytes) -> None:
            if len(self.lines) >= 2:
                raise OSError(28, "No space left on device")
            self.lines.append(line)

        spill = write

        def close(self) -> None:
            pass

        def abandon(self) -> None:
            pass

    warnings: list[str] = []
    sink = Failing()
    rec = tracesock.Recorder(sink, warn=warnings.append)
    s = tracesock.TracedSocket(socket.AF_INET, socket.SOCK_DGRAM, recorder=rec)
    s.sendto(b"a", ("127.0.0.1", 9))  # the program runs on, unaffected
    s.sendto(b"b", ("127.0.0.1", 9))
    s.close()
    rec.close()
    assert len(sink.lines) == 2  # header + the socket event
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert rec.lost >= 3
