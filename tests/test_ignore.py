"""replay(..., ignore=[regex, ...]): sent bytes compared with the matches blanked out."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracesock
from tracesock import ReplayMismatch, UsageError
from tracesock.replay.ignoring import Ignoring, Spans

RealSocket = socket.socket  # taken before any trace or replay swaps it
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def server() -> Iterator[int]:
    """An untraced server on 127.0.0.1: reads a request head, answers RESPONSE, closes."""
    srv = RealSocket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn = RealSocket(fileno=srv._accept()[0])  # type: ignore[attr-defined]
            except OSError:
                return
            with conn:
                got = b""
                while b"\r\n\r\n" not in got:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                conn.sendall(RESPONSE)

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def request(req_id: str, stamp: str, path: str = "/a") -> bytes:
    return (f"GET {path}?id={req_id} HTTP/1.0\r\nX-Request-Id: {req_id}\r\n"
            f"Date: {stamp}\r\n\r\n").encode()


def client(port: int, *parts: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        for part in parts:
            s.sendall(part)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    return got


IGNORE = [r"id=\d+", rb"X-Request-Id: \d+", r"Date: [^\r]*"]


@pytest.fixture
def recorded(tmp_path: Path, server: int) -> tuple[str, int]:
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path, entropy=False):
        assert client(server, request("7", "Mon, 1 Dec 2026 10:00:00 GMT")) == RESPONSE
    return path, server


def test_without_ignore_another_id_is_a_mismatch(recorded: tuple[str, int]) -> None:
    path, port = recorded
    with pytest.raises(ReplayMismatch, match="sent bytes differ"), tracesock.replay(path):
        client(port, request("12345", "Tue, 2 Dec 2026 11:11:11 GMT"))


@pytest.mark.parametrize("split", [None, 5, 9, 30, 60], ids=lambda s: f"split={s}")
def test_ignored_parts_may_differ_in_length_and_in_send_boundaries(
        recorded: tuple[str, int], split: int | None) -> None:
    path, port = recorded
    req = request("12345", "Tue, 2 Dec 2026 11:11:11 GMT")
    parts = [req] if split is None else [req[:split], req[split:]]
    with tracesock.replay(path, ignore=IGNORE):
        assert client(port, *parts) == RESPONSE


def test_a_match_the_recording_sent_in_pieces(tmp_path: Path, server: int) -> None:
    path = str(tmp_path / "t.jsonl")
    req = request("7", "Mon, 1 Dec 2026 10:00:00 GMT")
    with tracesock.trace(path, entropy=False):
        client(server, req[:9], req[9:11], req[11:])  # "GET /a?id", "=7", ...
    with tracesock.replay(path, ignore=IGNORE):
        assert client(server, request("12345", "Tue, 2 Dec 2026 11:11:11 GMT")) == RESPONSE


def test_byte_by_byte(recorded: tuple[str, int]) -> None:
    path, port = recorded
    req = request("99", "Wed, 3 Dec 2026 12:00:00 GMT")
    with tracesock.replay(path, ignore=IGNORE):
        assert client(port, *(req[i:i + 1] for i in range(len(req)))) == RESPONSE


def test_a_difference_outside_the_matches_shows_the_real_bytes(
        recorded: tuple[str, int]) -> None:
    path, port = recorded
    with pytest.raises(ReplayMismatch) as err, tracesock.replay(path, ignore=IGNORE):
        client(port, request("12345", "Tue, 2 Dec 2026 11:11:11 GMT", path="/b"))
    text = str(err.value)
    assert "at byte 5 of the outgoing stream (recorded sendall seq" in text
    assert "expected: b'GET /a?id=7 HTTP/1.0" in text
    assert "actual:   b'GET /b?id=12345 HTTP/1.0" in text
    assert "3 ignore patterns" in text


def test_a_difference_after_an_ignored_part_is_placed_in_real_bytes(
        recorded: tuple[str, int]) -> None:
    path, port = recorded
    bad = request("12345", "Tue, 2 Dec 2026 11:11:11 GMT").replace(b"HTTP/1.0", b"HTTP/1.1")
    with pytest.raises(ReplayMismatch) as err, tracesock.replay(path, ignore=IGNORE):
        client(port, bad)
    text = str(err.value)
    offset = request("7", "x").index(b"HTTP/1.0") + len("HTTP/1.")
    assert f"at byte {offset} of the outgoing stream" in text
    assert "expected:     b'GET /a?id=7 HTTP/1.0" in text  # each side's own bytes,
    assert "actual:   b'GET /a?id=12345 HTTP/1.1" in text  # the difference lined up


def test_more_than_recorded_and_less_than_recorded(recorded: tuple[str, int]) -> None:
    path, port = recorded
    req = request("12345", "Tue, 2 Dec 2026 11:11:11 GMT")
    with pytest.raises(ReplayMismatch, match="bytes more than the recording"), \
            tracesock.replay(path, ignore=IGNORE):
        client(port, req + b"extra")
    with pytest.raises(ReplayMismatch, match="match only part of the recording"), \
            tracesock.replay(path, ignore=IGNORE), \
            socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(req[:20])


def test_strict_compares_each_call_normalized(recorded: tuple[str, int]) -> None:
    path, port = recorded
    with tracesock.replay(path, ignore=IGNORE, check="strict"):
        assert client(port, request("12345", "Tue, 2 Dec 2026 11:11:11 GMT")) == RESPONSE
    with pytest.raises(ReplayMismatch, match="outside the matches"), \
            tracesock.replay(path, ignore=IGNORE, check="strict"):
        client(port, request("12345", "Tue, 2 Dec 2026 11:11:11 GMT", path="/b"))


def test_a_bad_pattern_is_a_usage_error(recorded: tuple[str, int]) -> None:
    path, _ = recorded
    with pytest.raises(UsageError, match="not a valid regex"), \
            tracesock.replay(path, ignore=["("]):
        pass


def record_parts(tmp_path: Path, port: int, *parts: bytes) -> str:
    path = str(tmp_path / "parts.jsonl")
    with tracesock.trace(path, entropy=False):
        assert client(port, *parts) == RESPONSE
    return path


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


END = b";end\r\n\r\n"
SPLIT_MATCHES = {
    # the reviewer's case: a match split across two sends, the code's longer
    "longer": ([b"GET id=123", b"45" + END], [b"GET id=987", b"65" + END]),
    "shorter": ([b"GET id=123", b"45" + END], [b"GET id=9", b"8" + END]),
    "recorded-bytewise": (bytewise(b"GET id=12345" + END), [b"GET id=987", b"65" + END]),
    "replayed-bytewise": ([b"GET id=123", b"45" + END], bytewise(b"GET id=98765" + END)),
    "other-boundaries": ([b"GET id=1", b"2345" + END], [b"GET id=98", b"765" + END]),
    # the first send ends where a match will start: nothing matched yet on either side
    "match-starts-next": ([b"GET id=", b"12345" + END], [b"GET id=", b"7" + END]),
    "header-then-value": ([b"X-Request-Id: ", b"7\r\n\r\n"],
                          [b"X-Request-Id: ", b"12345\r\n\r\n"]),
}


@pytest.mark.parametrize("case", SPLIT_MATCHES)
def test_a_match_split_across_sends(tmp_path: Path, server: int, case: str) -> None:
    recorded, replayed = SPLIT_MATCHES[case]
    path = record_parts(tmp_path, server, *recorded)
    with tracesock.replay(path, ignore=IGNORE):
        assert client(server, *replayed) == RESPONSE


def test_a_difference_after_a_split_match_is_still_a_mismatch(
        tmp_path: Path, server: int) -> None:
    path = record_parts(tmp_path, server, b"GET id=123", b"45" + END)
    with pytest.raises(ReplayMismatch, match="outside the matches") as err, \
            tracesock.replay(path, ignore=IGNORE):
        client(server, b"GET id=987", b"65;END\r\n\r\n")
    assert "at byte 13 of the outgoing stream" in str(err.value)


def test_a_long_stream_settles_as_it_goes_and_places_a_late_difference(
        tmp_path: Path, server: int) -> None:
    line = b"line id=7 ok\n"
    path = record_parts(tmp_path, server, *[line] * 40, b"\r\n\r\n")
    other = b"line id=12345 ok\n"
    with tracesock.replay(path, ignore=IGNORE):
        assert client(server, *bytewise(other * 40 + b"\r\n\r\n")) == RESPONSE
    bad = [other] * 30 + [b"line id=12345 OK\n"] + [other] * 9 + [b"\r\n\r\n"]
    with pytest.raises(ReplayMismatch, match="outside the matches") as err, \
            tracesock.replay(path, ignore=IGNORE):
        client(server, *bad)
    text = str(err.value)
    assert f"at byte {30 * len(line) + len(b'line id=7 ')} of the outgoing stream" in text
    assert "byte 10 of it" in text


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_one_long_recorded_send_replayed_in_small_pieces(tmp_path: Path, server: int) -> None:
    # The recorded bytes are normalized a window at a time: matches across its end,
    # a long one among them, and a difference far in are found as with the whole.
    def body(n: int, date: bytes) -> bytes:
        lines = b"".join(b"line id=%d ok\n" % (i * n) for i in range(1500))
        return lines + b"Date: " + date + b"\r\n\r\n"

    path = record_parts(tmp_path, server, body(7, b"x" * 3000))
    with tracesock.replay(path, ignore=IGNORE):
        assert client(server, *pieces(body(12345, b"y" * 5000), 100)) == RESPONSE
    bad = body(12345, b"y" * 5000).replace(b"id=12345000 ok", b"id=12345000 OK")
    with pytest.raises(ReplayMismatch, match="outside the matches") as err, \
            tracesock.replay(path, ignore=IGNORE):
        client(server, *pieces(bad, 100))
    offset = body(7, b"").index(b"id=7000 ok") + len(b"id=7000 ")
    assert f"at byte {offset} of the outgoing stream" in str(err.value)
    assert f"byte {offset} of it" in str(err.value)


def test_the_work_per_send_does_not_grow_with_the_stream(
        tmp_path: Path, server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted, not timed: the bytes normalized in all stay a small multiple of the
    # stream's, whether the code's sends are much shorter than the recorded one (the
    # recording is normalized a window at a time) or than all sent so far (the settled
    # bytes are dropped).
    data = b"".join(b"line id=%d ok\n" % i for i in range(5000)) + b"\r\n\r\n"
    path = record_parts(tmp_path, server, data)
    normalized = [0]
    normalize = Ignoring.normalize

    def counting(self: Ignoring, raw: bytes) -> tuple[bytes, Spans]:
        normalized[0] += len(raw)
        return normalize(self, raw)

    monkeypatch.setattr(Ignoring, "normalize", counting)
    with tracesock.replay(path, ignore=IGNORE):
        assert client(server, *pieces(data, 100)) == RESPONSE
    assert normalized[0] < 20 * len(data)


def test_a_recorded_send_error_after_unsettled_bytes_is_raised_again(tmp_path: Path) -> None:
    # The last bytes sent stay unsettled (they may begin a match): a recorded send error
    # after them is still the next send's, once they match.
    lst = RealSocket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()

    def reset() -> None:
        with RealSocket(fileno=lst._accept()[0]) as conn:  # type: ignore[attr-defined]
            conn.recv(100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def run(req_id: bytes, replaying: bool) -> list[str]:
        t = threading.Thread(target=reset)
        if not replaying:  # replayed, nothing connects to the real listener
            t.start()
        errors = []
        with socket.create_connection(lst.getsockname()) as s:
            s.sendall(b"GET id=" + req_id + b"\r\n\r\n")
            if not replaying:
                t.join(10)
            for call in (lambda: s.recv(100), lambda: s.sendall(b"id=" + req_id)):
                try:
                    call()
                except OSError as exc:
                    errors.append(type(exc).__name__)
        return errors

    path = str(tmp_path / "reset.jsonl")
    try:
        with tracesock.trace(path, entropy=False):
            recorded = run(b"7", replaying=False)
        assert recorded == ["ConnectionResetError", "BrokenPipeError"]
        with tracesock.replay(path, ignore=IGNORE):
            assert run(b"12345", replaying=True) == recorded
    finally:
        lst.close()
