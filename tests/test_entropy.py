"""The program's own nondeterministic inputs: recorded while tracing, given back in replay.

os.urandom (and what builds on it: secrets, uuid4, requests' multipart boundary), the
process ids, random's state at the start, and opt-in the wall clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import tracesock
from tracesock import ReplayMismatch

REPO = Path(__file__).resolve().parent.parent
ORIGINAL_GETPID = os.getpid


class _Upload(BaseHTTPRequestHandler):
    """Answers a POST with its Content-Type (the multipart boundary) and a body digest."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        text = f"{self.headers['Content-Type']} {hashlib.sha256(body).hexdigest()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upload_server() -> Iterator[str]:
    """An untraced HTTP server on 127.0.0.1 in this process (the client is a child)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upload)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/upload"
    srv.shutdown()
    srv.server_close()


CLIENT = textwrap.dedent("""
    import os, random, secrets, sys, uuid
    import requests
    import tracesock

    mode, trace, url = sys.argv[1:4]
    block = tracesock.trace(trace) if mode == "record" else tracesock.replay(trace, pids=True)
    with block:
        r = requests.post(url, files={"f": ("a.txt", b"hello")}, data={"k": "v"},
                          timeout=10)
        print(r.request.headers["Content-Type"])
        print(r.status_code, r.text)
        print(uuid.uuid4(), secrets.token_hex(8), random.random(), os.getpid())
""")


def run_client(tmp_path: Path, *args: str) -> str:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_requests_multipart_upload_replays_identically_in_fresh_processes(
        tmp_path: Path, upload_server: str) -> None:
    trace = str(tmp_path / "upload.jsonl")
    recorded = run_client(tmp_path, "record", trace, upload_server)
    boundary = recorded.splitlines()[0]
    assert boundary.startswith("multipart/form-data; boundary=")
    assert recorded.splitlines()[1].startswith(f"200 {boundary} ")
    other = run_client(tmp_path, "record", str(tmp_path / "other.jsonl"), upload_server)
    assert other.splitlines()[0] != boundary  # the boundary really is random
    for _ in range(3):  # no server needed: the replay sends what was recorded
        assert run_client(tmp_path, "replay", trace, upload_server) == recorded


def test_uuid4_secrets_and_system_random_come_back(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")

    def values() -> list[object]:
        return [uuid.uuid4(), secrets.token_bytes(5), secrets.token_urlsafe(),
                random.SystemRandom().random(), os.urandom(3), random.random(),
                random.getrandbits(64), os.getpid(), os.getppid()]

    with tracesock.trace(path):
        recorded = values()
    with tracesock.replay(path):
        assert values() == recorded
    header = json.loads(Path(path).read_text().splitlines()[0])
    assert set(header["entropy"]) == {"pid", "ppid", "random", "clock"}
    assert os.stat(path).st_mode & 0o777 == 0o600  # tokens made from them are in it


def test_each_thread_gets_its_own_values_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")

    def in_threads() -> list[bytes]:
        out: list[bytes] = []
        out.append(os.urandom(2))
        for n in (3, 4):  # one after the other: the order of first use is fixed
            t = threading.Thread(target=lambda n=n: out.append(os.urandom(n)))
            t.start()
            t.join()
        out.append(os.urandom(5))
        return out

    with tracesock.trace(path):
        recorded = in_threads()
    with tracesock.replay(path):
        assert in_threads() == recorded
    threads = [json.loads(line)["thread"] for line in Path(path).read_text().splitlines()
               if '"entropy"' in line and line.startswith('{"type":"entropy"')]
    assert threads == [0, 1, 2, 0]


def test_another_size_is_a_mismatch_naming_both(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path):
        os.urandom(4)
    with pytest.raises(ReplayMismatch) as err, tracesock.replay(path):
        fresh = os.urandom(16)
        assert len(fresh) == 16
        assert len(os.urandom(4)) == 4  # after a divergence: fresh values
    assert "the code asked os.urandom(16) where the recording had os.urandom(4)" in str(
        err.value)


def test_a_send_mismatch_after_a_divergence_says_so(tmp_path: Path) -> None:
    listener = socket.socket()  # made before the trace: never traced; the kernel's
    listener.bind(("127.0.0.1", 0))  # backlog completes the connect, no accept needed
    listener.listen()
    address = listener.getsockname()
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path), socket.create_connection(address) as s:
        s.sendall(os.urandom(4).hex().encode())
    listener.close()
    with pytest.raises(ReplayMismatch) as err, tracesock.replay(path), \
            socket.create_connection(address) as s:
        s.sendall(os.urandom(8).hex().encode())
    assert "sent bytes differ" in str(err.value)
    assert any("os.urandom(8) where the recording had os.urandom(4)" in note
               for note in getattr(err.value, "__notes__", []))


def test_more_calls_than_recorded_is_a_mismatch(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path):
        first = os.urandom(4)
    with pytest.raises(ReplayMismatch, match="no more such calls"), tracesock.replay(path):
        assert os.urandom(4) == first
        assert len(os.urandom(8)) == 8


def test_entropy_false_records_and_gives_back_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path, entropy=False):
        recorded = os.urandom(8)
    text = Path(path).read_text()
    assert '"entropy"' not in text
    with tracesock.replay(path):
        assert os.urandom(8) != recorded
    path2 = str(tmp_path / "t2.jsonl")
    with tracesock.trace(path2):
        recorded = os.urandom(8)
    with tracesock.replay(path2, entropy=False):
        assert os.urandom(8) != recorded
        assert os.getpid is ORIGINAL_GETPID


def test_originals_are_back_after_the_block(tmp_path: Path) -> None:
    originals = (os.urandom, os.getpid, time.time, random._urandom)  # type: ignore[attr-defined]
    with tracesock.trace(str(tmp_path / "t.jsonl"), wall_clock=True):
        assert os.urandom is not originals[0]
        assert time.time is not originals[2]
    with tracesock.replay(str(tmp_path / "t.jsonl")):
        assert os.getpid is not originals[1]
    assert (os.urandom, os.getpid, time.time,
            random._urandom) == originals  # type: ignore[attr-defined]


def test_wall_clock_is_opt_in(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path):
        time.time()
    assert '"fn":"time"' not in Path(path).read_text()
    with tracesock.trace(path, wall_clock=True):
        then = (time.time(), time.time_ns())
    time.sleep(0.01)
    with tracesock.replay(path):
        assert (time.time(), time.time_ns()) == then


def test_cli_no_entropy(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import os\nos.urandom(4)\n")
    for flags, expected in (([], True), (["--no-entropy"], False)):
        out = tmp_path / f"{len(flags)}.jsonl"
        subprocess.run([sys.executable, "-m", "tracesock", "run", *flags, "-o", str(out),
                        str(script)], check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        assert ('"type":"entropy"' in out.read_text()) is expected


CLOCK_PROGRAM = textwrap.dedent("""
    import datetime, sys, time
    import tracesock

    mode, trace = sys.argv[1:3]
    real = datetime.datetime.now()
    block = tracesock.trace(trace, wall_clock=True) if mode == "record" \\
        else tracesock.replay(trace)
    with block:
        now = datetime.datetime.now()
        time.sleep(0.002)
        values = [now, datetime.datetime.utcnow(), datetime.datetime.today(),
                  datetime.date.today(), datetime.datetime.now(datetime.timezone.utc)]
        assert all(isinstance(v, datetime.date) for v in values)
        assert isinstance(now, datetime.datetime) and isinstance(real, datetime.datetime)
        assert type(now) is type(real)
        print(*values, sep="\\n")
    assert datetime.datetime is type(real)
""")


def test_datetime_now_comes_back_with_the_wall_clock(tmp_path: Path) -> None:
    script = tmp_path / "clock.py"
    script.write_text(CLOCK_PROGRAM)
    trace = str(tmp_path / "clock.jsonl")

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning",
                               str(script), mode, trace], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        return done.stdout

    recorded = run("record")
    assert len(set(recorded.splitlines()[:3])) == 3  # each call read the clock
    time.sleep(0.01)
    for _ in range(3):
        assert run("replay") == recorded


def test_datetime_classes_are_the_real_ones_for_isinstance(tmp_path: Path) -> None:
    import datetime as dt
    real_datetime, real_date = dt.datetime, dt.date
    before = dt.datetime.now()
    with tracesock.trace(str(tmp_path / "t.jsonl"), wall_clock=True):
        assert dt.datetime is not real_datetime
        now, made = dt.datetime.now(), dt.datetime(2020, 1, 2)
        assert type(now) is real_datetime and type(made) is real_datetime
        assert isinstance(before, dt.datetime) and isinstance(now, dt.date)
        assert issubclass(real_datetime, dt.datetime) and issubclass(dt.datetime, dt.date)

        class Mine(dt.datetime):
            pass

        assert type(Mine.now()) is Mine and not isinstance(now, Mine)
        for value in (now, before, dt.date.today(), dt.datetime.now(dt.timezone.utc)):
            assert pickle.loads(pickle.dumps(value)) == value  # pickle finds the class
    assert (dt.datetime, dt.date) == (real_datetime, real_date)
    with tracesock.trace(str(tmp_path / "t2.jsonl")):
        assert dt.datetime is real_datetime  # only with the wall clock


FAMILY_PROGRAM = textwrap.dedent("""
    import multiprocessing, os, random, socket, socketserver, sys, threading, uuid
    from pathlib import Path
    import tracesock

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):  # in a forked child: its own random bytes and pid
            asked = self.request.recv(100).decode()
            reply = (f"{asked} {os.urandom(4).hex()} {uuid.uuid4()} {os.getpid()} "
                     f"{os.getppid()} {random.random()}")  # (random reseeds at a fork)
            Path(folder, asked.split()[0]).write_text(reply)
            self.request.sendall(reply.encode())

    class Forking(socketserver.ForkingTCPServer):
        allow_reuse_address = True

    def ask(address, what):
        with socket.create_connection(address) as c:
            c.sendall(f"{what} {uuid.uuid4()}".encode())  # checked in replay
            return c.recv(200).decode()

    def spawned(address):  # a multiprocessing spawn child: a process of its own
        print("spawned", os.urandom(3).hex(), os.getpid(), random.random(), ask(address, "s"),
              flush=True)

    if __name__ == "__main__":
        mode, trace, port, folder = sys.argv[1:5]
        block = tracesock.trace(trace, follow_children=True) if mode == "record" \\
            else tracesock.replay(trace, follow_children=True, pids=True)
        with block:
            srv = Forking(("127.0.0.1", int(port)), Handler)
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02})
            t.start()
            for n in range(3):
                print("top", ask(srv.server_address, f"f{n}"), flush=True)
            p = multiprocessing.get_context("spawn").Process(
                target=spawned, args=(srv.server_address,))
            p.start()
            p.join()
            assert p.exitcode == 0
            srv.shutdown()
            srv.server_close()  # waits for the forked children
            t.join()
            print(os.getpid(), uuid.uuid4())
        for name in sorted(os.listdir(folder)):
            print(name, Path(folder, name).read_text())
""")


def test_each_child_process_gets_its_own_values_back(tmp_path: Path) -> None:
    script = tmp_path / "family.py"
    script.write_text(FAMILY_PROGRAM)
    trace = str(tmp_path / "family.jsonl")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])

    def run(mode: str) -> str:
        folder = tmp_path / f"out-{mode}-{time.monotonic_ns()}"
        folder.mkdir()
        proc = subprocess.Popen([sys.executable, str(script), mode, trace, port, str(folder)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a hang: its forked children go too
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{mode} hung: {out}\n{err}")
        # (multiprocessing's resource tracker may start too late to be replayed: a warning)
        assert proc.returncode == 0 and "error" not in err, err
        return out

    recorded = run("record")
    lines = recorded.splitlines()
    assert len(lines) == 9, recorded
    replies = [line.split()[3:5] for line in lines if line.split()[0] in ("f0", "f1", "f2", "s")]
    assert len(replies) == 4 and len({r[0] for r in replies}) == 4  # fresh bytes each
    recs = [json.loads(line) for line in Path(trace).read_text().splitlines()]
    pids = {r["pid"] for r in recs if r["type"] == "entropy"}
    assert len(pids) >= 6, pids  # the top, 4 forked children, the spawned child (and
    # multiprocessing's resource tracker)
    for _ in range(3):
        assert run("replay") == recorded


def test_the_merge_keeps_each_process_entropy_with_its_pid(tmp_path: Path) -> None:
    from importlib import resources

    import jsonschema

    path = tmp_path / "t.jsonl"
    with tracesock.trace(str(path), follow_children=True):
        os.urandom(2)
        a, b = socket.socketpair()
        child = os.fork()
        if child == 0:  # a forked child: its own random bytes, after its own call
            b.sendall(os.urandom(3))
            os._exit(0)
        os.waitpid(child, 0)
        got = a.recv(10)
        a.close()
        b.close()
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    head = recs[0]
    entropy = [r for r in recs if r["type"] == "entropy"]
    assert {(r["pid"], r["size"]) for r in entropy} == {(os.getpid(), 2), (child, 3)}
    assert base64_of(got) == next(r["data"] for r in entropy if r["pid"] == child)
    seqs = {r["seq"]: r for r in recs if r["type"] == "call"}
    mine = next(r for r in entropy if r["pid"] == child)
    assert mine["after"] < next(s for s, r in seqs.items() if r["pid"] == child)
    # ... and after the calls the parent made before the fork (the socketpair)
    assert mine["after"] == 2 and [seqs[s]["op"] for s in (1, 2)] == ["socket", "socket"]
    forked = next(p for p in head["processes"] if p["pid"] == child)
    assert forked["entropy"]["pid"] == child and "words" in forked["entropy"]["random"]
    schema = json.loads(resources.files("tracesock.trace").joinpath("schema.json")
                        .read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for rec in recs:
        validator.validate(rec)


def base64_of(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def _forked_values(times: int) -> list[bytes]:
    """What ``times`` forked children got from os.urandom and random, one after the other."""
    out = []
    for _ in range(times):
        a, b = socket.socketpair()
        child = os.fork()
        if child == 0:
            b.sendall(os.urandom(4) + str(random.random()).encode())
            os._exit(0)
        os.waitpid(child, 0)
        b.close()
        out.append(a.recv(100))
        a.close()
    return out


def test_a_fork_beyond_the_recorded_ones_gets_real_values(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")
    with tracesock.trace(path, follow_children=True):
        recorded = _forked_values(1)
    with tracesock.replay(path, check="off"):
        replayed = _forked_values(2)
    assert replayed[0] == recorded[0]  # the child of the same rank: its own values
    assert replayed[1] != recorded[0]  # none recorded: real ones
    state = random.getstate()
    assert _forked_values(1) != recorded  # after the block: nothing replayed
    assert random.getstate() == state


CAPTURE_PROGRAM = textwrap.dedent("""
    import socket, sys, threading, time
    import tracesock

    mode, trace, pcap = sys.argv[1:]

    def echo(server):
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(100):
                conn.sendall(data)

    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=echo, args=(server,), daemon=True).start()
    if mode == "record":
        block = tracesock.trace(trace, capture=pcap, capture_required=True,
                                wall_clock=True)
    else:
        block = tracesock.replay(trace)
    with block:
        with socket.create_connection(server.getsockname()) as c:
            for _ in range(3):  # segments for the sniffer to stamp
                c.sendall(b"ping")
                assert c.recv(100) == b"ping"
        print(repr(time.time()))
""")


def test_the_capture_threads_clock_is_not_the_programs(tmp_path: Path) -> None:
    script = tmp_path / "captured.py"
    script.write_text(CAPTURE_PROGRAM)
    trace = tmp_path / "captured.jsonl"

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, str(script), mode, str(trace),
                               str(tmp_path / "captured.pcapng")], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        if "CAP_NET_RAW" in done.stderr:
            pytest.skip("capture needs root or CAP_NET_RAW")
        assert done.returncode == 0, done.stderr
        return done.stdout

    recorded = run("record")
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    clock = [r for r in records if r["type"] == "entropy" and r["fn"] == "time"]
    assert [r["value"] for r in clock] == [float(recorded)]  # the program's one only
    time.sleep(0.01)
    assert run("replay") == recorded


BAD_CALLS: list[tuple[str, tuple[object, ...], dict[str, object]]] = [
    ("urandom", (-1,), {}), ("urandom", ("x",), {}), ("urandom", (), {"size": 3}),
    ("urandom", (), {}), ("urandom", (1, 2), {}),
]
if hasattr(os, "getrandom"):
    BAD_CALLS += [("getrandom", (-1,), {}), ("getrandom", ("x",), {}),
                  ("getrandom", (3, "a"), {}), ("getrandom", (), {"flags": 0}),
                  ("getrandom", (3,), {"flags": 0, "x": 1})]


def _failures() -> list[str]:
    out = []
    for fn, args, kwargs in BAD_CALLS:
        try:
            getattr(os, fn)(*args, **kwargs)
        except (TypeError, ValueError, OSError) as exc:  # getrandom(-1): EINVAL
            out.append(f"{type(exc).__name__}: {exc}")
        else:
            out.append("no error")
    return out


def test_calls_that_raise_raise_as_the_real_ones_and_use_no_record(tmp_path: Path) -> None:
    path = str(tmp_path / "t.jsonl")
    real = _failures()
    assert "no error" not in real
    with tracesock.trace(path):
        assert _failures() == real
        recorded = os.urandom(4), os.urandom(True)  # an index: its size is 1
    with tracesock.replay(path):  # no ReplayMismatch: the failed calls took no record
        assert _failures() == real
        assert (os.urandom(4), os.urandom(True)) == recorded
    sizes = [json.loads(line).get("size") for line in Path(path).read_text().splitlines()]
    assert [s for s in sizes if s is not None] == [4, 1]


def _child_sees() -> tuple[int, int]:
    """(os.getpid(), a forked child's os.getppid())."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, str(os.getppid()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        seen = int(f.read())
    os.waitpid(child, 0)
    return os.getpid(), seen


@pytest.mark.parametrize("pids", [False, True])
def test_a_forked_childs_parent_is_its_parents_pid(tmp_path: Path, pids: bool) -> None:
    path = tmp_path / "t.jsonl"
    with tracesock.trace(str(path)):
        pass
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["entropy"]["pid"] = 1 << 22  # another process: no real pid is that
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with tracesock.replay(str(path), pids=pids):
        parent, seen = _child_sees()
        assert parent == (1 << 22 if pids else ORIGINAL_GETPID())
        assert seen == parent


def _nothing() -> None:
    pass


def test_a_process_made_before_the_block_starts_and_joins_in_it(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with tracesock.trace(str(path)):
        pass
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["entropy"]["pid"] = 1 << 22  # recorded in another process
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_nothing)
    with tracesock.replay(str(path), pids=False):  # it checks os.getpid() against its maker's
        proc.start()
        proc.join()
    assert proc.exitcode == 0


def test_a_random_state_record_left_in_a_trace_is_passed_over(tmp_path: Path) -> None:
    """A forked child's file writes down random's state after the fork (no thread);
    the merge moves it, but a trace that still holds one replays."""
    path = tmp_path / "t.jsonl"
    with tracesock.trace(str(path)):
        recorded = os.urandom(4)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    extra = {"type": "entropy", "fn": "random", "state": header["entropy"]["random"],
             "after": 0}
    path.write_text("\n".join([lines[0], json.dumps(extra), *lines[1:]]) + "\n")
    with tracesock.replay(str(path)):
        assert os.urandom(4) == recorded
