"""Bad input: truncated, mutated and random traces (and captures) fed to every reader.

The only allowed outcomes are a result or a TracesockError: ``load()`` returns a Trace
or raises a TracesockError; ``tracesock show``/``stats`` (``tracesock.cli.main``) exit 0,
or exit 2 with one ``tracesock: error:`` line, and never print a Python traceback;
``replay()`` of the trace (when replay exists) lets a client run against it and raises
nothing but TracesockError and the OSErrors a recording can replay; ``show --capture``
(when timeline exists) does the same for damaged pcapng files.

Seeds are the golden traces and captures in captures/. Hypothesis runs derandomized and
with a bounded number of examples, so the suite takes the same few seconds every time.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import tracesock
from tracesock.cli import main

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
TRACES = sorted(CAPTURES.glob("*.jsonl"))
PCAPS = sorted(CAPTURES.glob("*.pcapng"))
HAS_REPLAY = importlib.util.find_spec("tracesock.replay") is not None
HAS_TIMELINE = importlib.util.find_spec("tracesock.lecture.timeline") is not None

# No shrinking: a failure is reported as found (FOUND below holds minimal ones), so a
# failing run costs no more time than a passing one.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(240)


# -- inputs -------------------------------------------------------------------------------

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False), st.text(max_size=12))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
FIELDS = ["type", "seq", "t", "dur", "sock", "op", "nbytes", "data", "args", "error", "fd",
          "family", "kind", "laddr", "raddr", "parent", "thread", "pid", "truncated",
          "accepted", "new", "fd_closed", "version", "format", "events", "lost", "tls",
          "address", "bufsize", "count", "epoch"]
OPS = ["socket", "connect", "connect_ex", "bind", "listen", "accept", "send", "sendall",
       "sendto", "sendmsg", "sendfile", "recv", "recv_into", "recvfrom", "recvfrom_into",
       "recvmsg", "shutdown", "close", "close_fd", "settimeout", "setblocking",
       "setsockopt", "makefile", "detach", "dup", "do_handshake", "wrap_bio", "bogus"]


def _dumps(obj: object) -> bytes:
    # The stdlib's encoder: it writes integers beyond 64 bits, which orjson refuses.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@st.composite
def mutated_trace(draw: st.DrawFn) -> bytes:
    """A golden trace damaged at the byte level or the JSON level."""
    raw = draw(st.sampled_from(TRACES)).read_bytes()
    how = draw(st.sampled_from(["truncate", "bytes", "lines", "field", "nul"]))
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "bytes":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "nul":
        pos = draw(st.integers(0, len(raw)))
        return raw[:pos] + b"\0" * draw(st.integers(1, 64)) + raw[pos:]
    lines = raw.splitlines(keepends=True)
    if how == "lines":
        op = draw(st.sampled_from(["drop", "dup", "swap"]))
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return b"".join(lines)
    # field: replace or add one field of one record with an arbitrary JSON value
    i = draw(st.integers(0, len(lines) - 1))
    rec = orjson.loads(lines[i])
    key = draw(st.sampled_from(FIELDS))
    rec[key] = draw(json_value | st.sampled_from(OPS))
    lines[i] = _dumps(rec) + b"\n"
    return b"".join(lines)


record = st.fixed_dictionaries(
    {"type": st.sampled_from(["call", "call", "call", "end", "other"]),
     "seq": st.integers(-2, 50), "t": st.floats(-1, 1e6) | st.integers(),
     "sock": st.integers(-2, 6), "op": st.sampled_from(OPS)},
    optional={k: json_value for k in FIELDS if k not in ("type", "seq", "t", "sock", "op")}
    | {"data": st.text(max_size=12) | st.sampled_from(["aGk=", "", "!!", "aGk"]),
       "nbytes": st.integers(-5, 1 << 40) | json_value,
       "args": st.dictionaries(st.sampled_from(["address", "bufsize", "size", "how",
                                                "flags", "from", "level", "option"]),
                               json_value, max_size=3) | json_value,
       "laddr": st.tuples(st.text(max_size=8), st.integers(-1, 70000)).map(list)
       | json_value,
       "raddr": st.tuples(st.text(max_size=8), st.integers(-1, 70000)).map(list)
       | json_value})


@st.composite
def random_trace(draw: st.DrawFn) -> bytes:
    """A valid header, then records with the right names and arbitrary values."""
    head = orjson.loads(TRACES[0].read_bytes().splitlines()[0])
    if draw(st.booleans()):
        head[draw(st.sampled_from(list(head)))] = draw(json_value)
    lines = [_dumps(head)]
    for rec in draw(st.lists(record, max_size=12)):
        lines.append(_dumps(rec))
    tail = draw(st.sampled_from([b"\n", b"", b"\n\0\0\0", b"\n{\"type\":\"ca"]))
    return b"\n".join(lines) + tail


any_trace = st.one_of(mutated_trace(), random_trace(), st.binary(max_size=300))


@contextlib.contextmanager
def _file(data: bytes, suffix: str = ".jsonl") -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        yield path


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _check_cli(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    lines = err.splitlines()
    assert all(ln.startswith("tracesock: ") for ln in lines), err
    errors = [ln for ln in lines if ln.startswith("tracesock: error:")]
    assert len(errors) == (1 if code == 2 else 0), err


# -- the readers --------------------------------------------------------------------------


def _load(path: str) -> tracesock.Trace | None:
    try:
        return tracesock.load(path)
    except tracesock.TracesockError:
        return None


@FUZZ
@given(any_trace)
def test_load_gives_a_trace_or_a_tracesock_error(data: bytes) -> None:
    with _file(data) as path:
        trace = _load(path)
        if trace is not None:  # what load() returns is usable all the way down
            for conn in trace.connections.values():
                _ = (conn.role, conn.bytes_sent, conn.bytes_received, conn.recv_chunks)
            reader = tracesock.TraceReader(path)
            assert [e.seq for e in reader] == [e.seq for e in trace.events]


@FUZZ
@given(any_trace, st.sampled_from([("show",), ("stats",), ("stats", "--json")]))
def test_show_and_stats_exit_0_or_2_without_traceback(data: bytes,
                                                       command: tuple[str, ...]) -> None:
    with _file(data) as path:
        loaded = _load(path) is not None
        code, _, err = _cli(command[0], path, *command[1:])
        _check_cli(code, err)
        assert code == 0 or not loaded, f"load() accepted it but {command} failed: {err}"


def _drive(trace: tracesock.Trace) -> None:
    """A client that does, against the replay, what the recording's clients did."""
    for conn in list(trace.connections.values())[:4]:
        if conn.role != "client" or not isinstance(conn.raddr, tuple) or len(conn.raddr) < 2:
            continue
        try:
            with socket.create_connection(conn.raddr[:2], timeout=1) as s:
                for ev in conn.events:
                    if ev.is_send and ev.data:
                        s.sendall(ev.data)
                    elif ev.is_recv and not s.recv(65536):
                        break
        except OSError:
            pass  # refused, reset... replayed as recorded


@pytest.mark.skipif(not HAS_REPLAY, reason="tracesock.replay is not there yet")
@FUZZ
@given(any_trace, st.sampled_from(["concat", "strict", "off"]))
def test_replay_gives_a_result_or_a_tracesock_error(data: bytes, check: str) -> None:
    from tracesock.replay import replay

    with _file(data) as path:
        try:  # load()'s own failures are test_load's business, not replay's
            trace = tracesock.load(path)
        except Exception:
            trace = None
        try:
            with replay(path, check=check):
                if trace is not None:
                    _drive(trace)
        except tracesock.TracesockError:
            pass


@st.composite
def damaged_pcap(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(a golden trace, its capture damaged) - or random bytes as the capture."""
    pcap = draw(st.sampled_from(PCAPS))
    raw = pcap.read_bytes()
    trace = pcap.with_suffix(".jsonl").read_bytes()
    how = draw(st.sampled_from(["truncate", "bytes", "random", "intact"]))
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif how == "bytes":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 12))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        raw = bytes(data)
    elif how == "random":
        raw = draw(st.binary(max_size=200))
    return trace, raw


@pytest.mark.skipif(not HAS_TIMELINE or not PCAPS, reason="no timeline or no captures")
@FUZZ
@given(damaged_pcap())
def test_show_capture_exits_0_or_2_without_traceback(pair: tuple[bytes, bytes]) -> None:
    trace, pcap = pair
    with _file(trace) as tpath, _file(pcap, ".pcapng") as cpath:
        code, _, err = _cli("show", tpath, "--capture", cpath)
        _check_cli(code, err)


# Concrete inputs the fuzzers found that escape as other exceptions (core bugs, reported).
HEADER = (b'{"type":"trace","format":"tracesock","version":1,"started":"x","pid":1,'
          b'"argv":["p"],"python":"3.11.7","payload":true,"max_payload":null}\n')
CALL = b'{"type":"call","seq":1,"t":0.0,"sock":1,"op":"recv","nbytes":2,'
FOUND = {
    "header argv not a list": HEADER.replace(b'["p"]', b"true"),
    "dur a list": HEADER + CALL + b'"dur":[1]}\n',
    "dur a string": HEADER + CALL + b'"dur":"recv"}\n',
    "pid a list": HEADER + CALL + b'"pid":[]}\n',
    "kind an object": HEADER + CALL + b'"kind":{"a":1}}\n',
    "data not base64": HEADER + CALL + b'"data":"aGk"}\n',
    "data not ASCII": HEADER + CALL + b'"data":"\xc3\xa9\xc3\xa9"}\n',
}


@pytest.mark.parametrize("name", list(FOUND))
def test_found_inputs_are_tracesock_errors_or_results(name: str) -> None:
    with _file(FOUND[name]) as path:
        _load(path)
        for command in (("show",), ("stats",), ("stats", "--json")):
            code, _, err = _cli(command[0], path, *command[1:])
            _check_cli(code, err)


def test_the_seeds_themselves_load_and_show() -> None:
    assert TRACES, "no golden traces in captures/"
    for path in TRACES:
        assert tracesock.load(str(path)).complete
        code, out, err = _cli("show", str(path))
        assert (code, err) == (0, "") and out


# -- entropy that cannot be given back ------------------------------------------------------


def _entropy_trace(tmp_path: Path) -> tuple[list[dict[str, object]], Path]:
    """A trace with entropy: the header's fields and one os.urandom(4) record; and a
    script that asks for those 4 bytes."""
    path = tmp_path / "entropy.jsonl"
    with tracesock.trace(str(path)):
        os.urandom(4)
    script = tmp_path / "asks.py"
    script.write_text("import os\nprint(os.urandom(4).hex())\n")
    return [json.loads(line) for line in path.read_text().splitlines()], script


def _damaged(records: list[dict[str, object]], path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _header_random(**fields: object) -> object:
    def damage(recs: list[dict[str, object]]) -> None:
        entropy = recs[0]["entropy"]
        assert isinstance(entropy, dict)
        entropy["random"] = {**entropy["random"], **fields}
    return damage


def _header(**fields: object) -> object:
    def damage(recs: list[dict[str, object]]) -> None:
        entropy = recs[0]["entropy"]
        assert isinstance(entropy, dict)
        entropy.update(fields)
    return damage


def _urandom_data(data: str) -> object:
    def damage(recs: list[dict[str, object]]) -> None:
        [rec] = [r for r in recs if r["type"] == "entropy"]
        rec["data"] = data
    return damage


BAD_ENTROPY = {
    "words not base64": (_header_random(words="@@@@"), ":1: header 'entropy'"),
    "words too short": (_header_random(words="AAAA"), ":1: header 'entropy'"),
    "words a number": (_header_random(words=5), ":1: header 'entropy'"),
    "no version": (_header_random(version=None), ":1: header 'entropy'"),
    "pid a string": (_header(pid="12"), ":1: header 'entropy': 'pid'"),
    "ppid a float": (_header(ppid=1.5), ":1: header 'entropy': 'ppid'"),
    "data not base64": (_urandom_data("@@@"), ":2: entropy record"),
    "data too short": (_urandom_data("AAAA"), ":2: entropy record"),
}


@pytest.mark.parametrize("case", BAD_ENTROPY)
def test_bad_entropy_is_one_line_naming_file_and_line(case: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the replayed script sets path[0]
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # and argv, as python would
    damage, where = BAD_ENTROPY[case]
    records, script = _entropy_trace(tmp_path)
    damage(records)  # type: ignore[operator]
    path = _damaged(records, tmp_path / "bad.jsonl")
    code, _, err = _cli("replay", path, str(script))
    _check_cli(code, err)
    assert code == 2 and f"{path}{where}" in err, err
    with pytest.raises(tracesock.TraceFormatError, match=re.escape(f"{path}{where}")), \
            tracesock.replay(path):
        os.urandom(4)
    gc.collect()  # a cassette left open warns (ResourceWarning: an error here) now
