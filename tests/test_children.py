"""Following child processes: fork, subprocess, multiprocessing; one merged trace."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import tracesock
from tracesock.trace.reader import load

ROOT = Path(__file__).resolve().parent.parent


class _Upper(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(100)
        self.request.sendall(data.upper())


class _Forking(socketserver.ForkingTCPServer):
    allow_reuse_address = True


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def forking_exchange(n: int, port: int = 0) -> list[bytes]:
    """n echo exchanges with a ForkingTCPServer on 127.0.0.1 (``port`` 0: any)."""
    srv = _Forking(("127.0.0.1", port), _Upper)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02})
    t.start()
    got = []
    try:
        for i in range(n):
            with socket.create_connection(srv.server_address[:2]) as c:
                c.sendall(b"hello %d" % i)
                got.append(c.recv(100))
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()
    return got


def test_forking_server_children_are_followed(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out), follow_children=True):
        got = forking_exchange(5)
    assert got == [b"HELLO %d" % i for i in range(5)]
    recs = lines(out)
    head, calls = recs[0], [r for r in recs if r["type"] == "call"]
    assert recs[-1]["type"] == "end" and recs[-1]["events"] == len(calls)
    assert [c["seq"] for c in calls] == list(range(1, len(calls) + 1))
    me = os.getpid()
    kids = [p for p in head["processes"] if p["pid"] != me]
    assert len(kids) == 5 and all(p["forked"] and p["ppid"] == me for p in kids)
    assert all("pid" in c for c in calls)
    # Each accepted socket: accepted (and closed) in the parent, served in one child.
    accepted = [c["accepted"] for c in calls if c["op"] == "accept"]
    for sid in accepted:
        served = [c for c in calls if c["sock"] == sid and c["op"] in ("recv", "sendall")]
        assert {c["pid"] for c in served} != {me} and len({c["pid"] for c in served}) == 1
        assert base64.b64decode(served[0]["data"]).startswith(b"hello")
    # Nothing written twice: the parent's events are in the trace once each.
    keys = Counter((c["pid"], c["sock"], c["op"], c["t"]) for c in calls)
    assert max(keys.values()) == 1
    trace = load(str(out))
    assert not trace.warnings
    text = resources.files("tracesock.trace").joinpath("schema.json").read_text()
    validator = jsonschema.Draft202012Validator(json.loads(text))
    for rec in recs:
        validator.validate(rec)


def test_without_following_a_forked_child_never_writes_into_the_parent_file(
        tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        got = forking_exchange(20)
    assert len(got) == 20
    recs = lines(out)  # every line parses: no child wrote into the middle of one
    calls = [r for r in recs if r["type"] == "call"]
    assert [c["seq"] for c in calls] == list(range(1, len(calls) + 1))
    assert {c["op"] for c in calls} >= {"accept", "close"}
    assert not any(c["op"] == "recv" and c["sock"] in {a["accepted"] for a in calls
                                                      if a["op"] == "accept"}
                   for c in calls)  # the children's calls are not in the file
    assert recs[-1]["type"] == "end"


def test_fork_with_pending_thread_writes(tmp_path: Path) -> None:
    """Threads writing while the main thread forks: the child starts clean."""
    out = tmp_path / "t.jsonl"
    stop = threading.Event()
    a, b = socket.socketpair()

    def chatter() -> None:
        while not stop.is_set():
            a.send(b"x")
            b.recv(10)

    with tracesock.trace(str(out), follow_children=True):
        a.close(), b.close()
        a, b = socket.socketpair()
        t = threading.Thread(target=chatter)
        t.start()
        pids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                s = socket.socket()
                s.close()
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        stop.set()
        t.join()
        a.close()
        b.close()
    recs = lines(out)
    calls = [r for r in recs if r["type"] == "call"]
    kids = {c["pid"] for c in calls} - {os.getpid()}
    assert kids == set(pids)
    for pid in pids:
        assert [c["op"] for c in calls if c["pid"] == pid] == ["socket", "close"]
    assert len({c["sock"] for c in calls if c["pid"] in kids}) == 5  # unique ids


def test_subprocess_python_child_is_traced(tmp_path: Path,
                                           echo_server: tuple[str, int]) -> None:
    out = tmp_path / "t.jsonl"
    code = ("import socket, sys\n"
            "c = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
            "c.sendall(b'from the child'); print(c.recv(100).decode()); c.close()\n")
    with tracesock.trace(str(out), follow_children=True):
        proc = subprocess.run([sys.executable, "-c", code, *map(str, echo_server)],
                              capture_output=True, text=True, check=True)
        with socket.create_connection(echo_server) as c:
            c.sendall(b"from the parent")
            c.recv(100)
    assert proc.stdout == "from the child\n" and proc.stderr == ""
    recs = lines(out)
    child = next(p for p in recs[0]["processes"] if not p["forked"] and p["ppid"] == os.getpid())
    calls = [r for r in recs if r["type"] == "call"]
    mine = [c for c in calls if c["pid"] == child["pid"]]
    assert [c["op"] for c in mine] == ["socket", "connect", "sendall", "recv", "close"]
    created = [c["sock"] for c in calls if c["op"] == "socket"]
    assert len(created) == len(set(created)) == 4  # 2 clients, 2 accepted: unique ids
    assert sorted(c["t"] for c in calls) != [] and child["complete"]
    assert "TRACESOCK_FOLLOW" not in os.environ


def _mp_child(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as c:
        c.sendall(b"mp")
        c.recv(10)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_are_traced(tmp_path: Path, echo_server: tuple[str, int],
                                             method: str) -> None:
    out = tmp_path / "t.jsonl"
    ctx = multiprocessing.get_context(method)
    with tracesock.trace(str(out), follow_children=True):
        procs = [ctx.Process(target=_mp_child, args=(echo_server,)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    calls = [r for r in lines(out) if r["type"] == "call"]
    by_pid = {p.pid: [c["op"] for c in calls if c["pid"] == p.pid] for p in procs}
    for ops in by_pid.values():  # (a forkserver child first closes what it inherited)
        start = ops.index("socket")
        assert ops[start:start + 4] == ["socket", "connect", "sendall", "recv"]


def tracesock_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tracesock ARGS`` in a process of its own, output captured."""
    return subprocess.run([sys.executable, "-m", "tracesock", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_cli_follow_children_show_and_stats(tmp_path: Path,
                                            echo_server: tuple[str, int]) -> None:
    script = tmp_path / "prog.py"
    script.write_text(
        "import socket, subprocess, sys\n"
        "addr = (sys.argv[1], int(sys.argv[2]))\n"
        "code = 'import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])));"
        " c.sendall(b\"kid\"); c.recv(9); c.close()'\n"
        "subprocess.run([sys.executable, '-c', code, *sys.argv[1:]], check=True)\n"
        "c = socket.create_connection(addr); c.sendall(b'top'); c.recv(9); c.close()\n")
    out = tmp_path / "t.jsonl"
    run = tracesock_cli("run", "--follow-children", "-o", str(out), str(script),
                        *map(str, echo_server))
    assert run.returncode == 0, run.stderr
    calls = [r for r in lines(out) if r["type"] == "call"]
    assert len({c["pid"] for c in calls}) == 2
    show = tracesock_cli("show", str(out))
    assert show.returncode == 0, show.stderr
    assert {line.split()[3] for line in show.stdout.splitlines()} == \
        {str(c["pid"]) for c in calls}
    stats = tracesock_cli("stats", "--json", str(out))
    assert stats.returncode == 0, stats.stderr
    assert len(json.loads(stats.stdout)["pids"]) == 2
    assert not list(tmp_path.glob(".tracesock-children-*"))  # merged and removed


def test_a_would_block_held_at_fork_time_is_written_once(tmp_path: Path) -> None:
    """The one thing a recorder holds back (a run of would-blocks being folded) stays
    with the parent: the child does not write it again."""
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out), follow_children=True):
        a, b = socket.socketpair()
        a.setblocking(False)
        for _ in range(3):
            with pytest.raises(BlockingIOError):
                a.recv(1)
        pid = os.fork()
        if pid == 0:
            a.close()
            os._exit(0)
        os.waitpid(pid, 0)
        b.send(b"x")
        a.recv(1)
        a.close()
        b.close()
    calls = [r for r in lines(out) if r["type"] == "call"]
    blocked = [c for c in calls if c.get("error", {}).get("type") == "BlockingIOError"]
    assert len(blocked) == 1 and blocked[0]["count"] == 3 and blocked[0]["pid"] == os.getpid()
    assert [c["op"] for c in calls if c["pid"] == pid] == ["close"]
    assert [c["sock"] for c in calls if c["pid"] == pid] == [1]  # the inherited id


def test_the_programs_own_sitecustomize_still_runs(tmp_path: Path) -> None:
    own = tmp_path / "site"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITE'] = 'yes'\n")
    out = tmp_path / "t.jsonl"
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(own)
    try:
        with tracesock.trace(str(out), follow_children=True):
            proc = subprocess.run(
                [sys.executable, "-c", "import os, socket, sys; socket.socket().close(); "
                 "print(os.environ.get('OWN_SITE'), 'tracesock' in sys.modules)"],
                capture_output=True, text=True, check=True)
    finally:
        if env_before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env_before
    assert proc.stdout == "yes True\n" and proc.stderr == ""
    calls = [r for r in lines(out) if r["type"] == "call"]
    assert [c["op"] for c in calls] == ["socket", "close"]


def test_a_forking_server_trace_replays(tmp_path: Path) -> None:
    from tracesock.replay import replay

    out = tmp_path / "t.jsonl"
    with socket.socket() as probe:  # a free port, so that the replay can ask for it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Record the whole program (server and clients), then replay it: the forked
    # children answer from their copy of the recording; the parent does not check
    # the sends it cannot see (theirs).
    with tracesock.trace(str(out), follow_children=True):
        recorded = forking_exchange(3, port)
    with replay(str(out)):
        replayed = forking_exchange(3, port)
    assert replayed == recorded == [b"HELLO %d" % i for i in range(3)]


def test_cli_forked_child_that_exits_normally(tmp_path: Path) -> None:
    """The child runs the atexit hooks too: it finishes its own file, never the merge."""
    script = tmp_path / "prog.py"
    script.write_text(
        "import os, socket, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    socket.socket().close()\n"
        "    sys.exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "socket.socket().close()\n"
        "print('done')\n")
    out = tmp_path / "t.jsonl"
    run = tracesock_cli("run", "--follow-children", "-o", str(out), str(script))
    assert (run.returncode, run.stdout, run.stderr) == (0, "done\n", "")
    recs = lines(out)
    kid = next(p for p in recs[0]["processes"] if p["forked"])
    assert kid["complete"] and kid["events"] == 2
    calls = [r for r in recs if r["type"] == "call"]
    assert len(calls) == 4 and len({c["sock"] for c in calls}) == 2
    assert recs[-1]["type"] == "end" and recs[-1]["events"] == 4
    assert not list(tmp_path.glob(".tracesock-children-*"))


# -- children that outlive the traced program ---------------------------------------------

_WAITING_CHILD = (
    "import os, socket, sys\n"
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
    "c.sendall(b'child %d' % os.getpid())\n"
    "print('ready', flush=True)\n"
    "c.recv(100)\n"  # blocks until the test answers
    "c.close()\n")


def _wait_for(condition: Any, what: str, deadline: float = 30.0) -> None:
    """Poll ``condition()`` (at most ``deadline`` seconds, 600 tries)."""
    end = time.monotonic() + deadline
    for _ in range(600):
        if condition():
            return
        if time.monotonic() > end:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("start", ["before", "after"])
def test_a_child_outliving_the_program_is_in_the_final_trace(tmp_path: Path,
                                                             start: str) -> None:
    """``before``: the child is running when the program exits; ``after``: it only starts
    (through a shell waiting on a FIFO) once the program has exited and merged."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = tmp_path / "prog.py"
    script.write_text(
        "import shlex, socket, subprocess, sys\n"
        "host, port, start, fifo, code = sys.argv[1:]\n"
        "cmd = [sys.executable, '-c', code, host, port]\n"
        "if start == 'after':\n"
        "    cmd = ['sh', '-c', 'read x < %s; exec %s' % (fifo, shlex.join(cmd))]\n"
        "kid = subprocess.Popen(cmd, stdout=subprocess.PIPE if start == 'before' else\n"
        "                       subprocess.DEVNULL, stderr=subprocess.DEVNULL,\n"
        "                       start_new_session=True)\n"
        "if start == 'before':\n"
        "    assert kid.stdout.readline() == b'ready\\n'\n"
        "with socket.create_connection((host, int(port))) as c:\n"
        "    c.sendall(b'top')\n")
    out = tmp_path / "t.jsonl"
    with srv:
        run = tracesock_cli("run", "--follow-children", "-o", str(out), str(script),
                            "127.0.0.1", str(srv.getsockname()[1]), start, str(fifo),
                            _WAITING_CHILD)
        assert run.returncode == 0, run.stderr
        first, _ = srv.accept()
        if start == "before":  # the child connected first
            kid, _ = srv.accept()
            kid, first = first, kid
        assert first.recv(100) == b"top"
        first.close()
        if start == "after":
            assert [c["op"] for c in lines(out) if c["type"] == "call"] == \
                ["socket", "connect", "sendall", "close"]  # merged, the child not started
            assert not list(tmp_path.glob(".tracesock-children-*"))
            with open(fifo, "w") as f:
                f.write("go\n")
            kid, _ = srv.accept()
        with kid:
            hello = kid.recv(100)
            pid = int(hello.split()[1])
            # Still running: a reader says so rather than showing a partial trace.
            trace = load(str(out))
            assert any("still being written" in w and str(pid) in w for w in trace.warnings)
            kid.sendall(b"bye")
            assert kid.recv(100) == b""
    _wait_for(lambda: not list(tmp_path.glob(".tracesock-children-*")), "the last merge")
    trace = load(str(out))
    assert not trace.warnings
    mine = [e for e in trace.events if e.pid == pid]
    assert [e.op for e in mine] == ["socket", "connect", "sendall", "recv", "close"]
    assert base64.b64decode(mine[3].data_b64 or "") == b"bye"
    assert len({e.sock for e in trace.events}) == 2
    assert [e.seq for e in trace.events] == list(range(1, len(trace.events) + 1))
    assert [p["pid"] for p in trace.header.extra["processes"]][-1] == pid


def _start_waiting_child(address: tuple[str, int]) -> subprocess.Popen[bytes]:
    kid = subprocess.Popen([sys.executable, "-c", _WAITING_CHILD, *map(str, address)],
                           stdout=subprocess.PIPE)
    assert kid.stdout is not None and kid.stdout.readline() == b"ready\n"
    return kid


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A listener on 127.0.0.1 that never answers (connections wait in its backlog)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv.getsockname()[:2]


def test_a_sigkilled_child_does_not_block_the_merge(tmp_path: Path,
                                                    silent_server: tuple[str, int]) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out), follow_children=True):
        kid = _start_waiting_child(silent_server)
        kid.kill()
        # Dead but not reaped (a zombie): registered, and never finishing its file.
        os.waitid(os.P_PID, kid.pid, os.WEXITED | os.WNOWAIT)
    try:
        assert not list(tmp_path.glob(".tracesock-children-*"))
        recs = lines(out)
        entry = next(p for p in recs[0]["processes"] if p["pid"] == kid.pid)
        assert entry["complete"] is False and entry["events"] == 3  # (killed in recv)
        ops = [c["op"] for c in recs if c["type"] == "call" and c["pid"] == kid.pid]
        assert ops == ["socket", "connect", "sendall"]
    finally:
        kid.wait()
        assert kid.stdout is not None
        kid.stdout.close()


def test_a_reader_merges_when_the_last_process_was_killed(
        tmp_path: Path, silent_server: tuple[str, int]) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out), follow_children=True):
        kid = _start_waiting_child(silent_server)
    try:
        # The program's block ended with the child still running: what has finished is
        # merged, the reader is told the rest is coming.
        trace = load(str(out))
        assert kid.pid not in {e.pid for e in trace.events}
        assert any("still being written" in w and str(kid.pid) in w for w in trace.warnings)
        assert list(tmp_path.glob(".tracesock-children-*"))
    finally:
        kid.kill()
        kid.wait()
        assert kid.stdout is not None
        kid.stdout.close()
    # Nobody is left to merge: the next reader does it.
    trace = load(str(out))
    assert not trace.warnings
    assert [e.op for e in trace.events if e.pid == kid.pid] == \
        ["socket", "connect", "sendall"]
    assert not list(tmp_path.glob(".tracesock-children-*"))


# -- replaying exec'd children --------------------------------------------------------------

_FETCH = (  # what it sends comes from the environment: the command line stays the same
    "import json, os, socket, sys\n"
    "chunks = []\n"
    "with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as c:\n"
    "    c.sendall(os.environ.get('TS_WHO', 'subprocess').encode())\n"
    "    while data := c.recv(100):\n"
    "        chunks.append(data.hex())\n"
    "with open(sys.argv[3], 'w') as f:\n"
    "    json.dump(chunks, f)\n")


def _mp_fetch(address: tuple[str, int], out: str) -> None:
    chunks = []
    with socket.create_connection(address) as c:
        c.sendall(b"spawned")
        while data := c.recv(100):
            chunks.append(data.hex())
    Path(out).write_text(json.dumps(chunks))


def _family(address: tuple[str, int], folder: Path, *, spawn: bool = True) -> list[bytes]:
    """A program with children: a subprocess running Python, a multiprocessing spawn
    child (each writing the chunks it received to a file), then its own exchange."""
    subprocess.run([sys.executable, "-c", _FETCH, *map(str, address), str(folder / "sub")],
                   check=True)
    if spawn:
        p = multiprocessing.get_context("spawn").Process(
            target=_mp_fetch, args=(address, str(folder / "spawn")))
        p.start()
        p.join()
        assert p.exitcode == 0
    chunks = []
    with socket.create_connection(address) as c:
        c.sendall(b"top")
        while data := c.recv(100):
            chunks.append(data)
    return chunks


class _Pieces(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        who = self.request.recv(100)
        for piece in (b"alpha-", who + b"-", b"gamma"):
            self.request.sendall(piece)
            time.sleep(0.02)  # (so that the recording has several chunks; not asserted)


@pytest.fixture
def pieces_server() -> Iterator[tuple[str, int]]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Pieces) as srv:
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
        t.start()
        yield srv.server_address[0], srv.server_address[1]
        srv.shutdown()


def _received(trace: Any, pid: int) -> list[str]:
    """What the client connections of ``pid`` received (the fixture's server is traced
    too: its accepted sockets are built through socket.socket)."""
    clients = {c.sock for c in trace.connections.values() if c.role == "client"}
    return [base64.b64decode(e.data_b64 or "").hex() for e in trace.events
            if e.pid == pid and e.sock in clients and e.op == "recv" and e.nbytes]


def _record_family(tmp_path: Path, address: tuple[str, int], **kw: bool) -> tuple[Path, Any]:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out), follow_children=True):
        _family(address, tmp_path, **kw)
    return out, load(str(out))


def test_exec_children_replay_their_recorded_chunks(tmp_path: Path,
                                                    pieces_server: tuple[str, int],
                                                    free_port: int) -> None:
    out, trace = _record_family(tmp_path, pieces_server)
    processes = trace.header.extra["processes"]
    sub = next(p["pid"] for p in processes if "-c" in p["argv"] and _FETCH in p["argv"])
    spawned = next(p["pid"] for p in processes if "--multiprocessing-fork" in p["argv"])
    recorded = {"sub": _received(trace, sub), "spawn": _received(trace, spawned)}
    assert recorded["sub"] and recorded["spawn"]
    top = [bytes.fromhex(c) for c in _received(trace, trace.header.pid or 0)]
    for name in recorded:
        (tmp_path / name).unlink()
    # A port nobody listens on (loopback ports are not compared when matching): the
    # children can only get their chunks from the recording.
    with tracesock.replay(out, follow_children=True):
        replayed_top = _family(("127.0.0.1", free_port), tmp_path)
    assert replayed_top == top
    for name, chunks in recorded.items():
        assert json.loads((tmp_path / name).read_text()) == chunks, name


def test_a_child_sending_other_bytes_fails_the_replay(tmp_path: Path,
                                                      pieces_server: tuple[str, int],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = _record_family(tmp_path, pieces_server, spawn=False)
    monkeypatch.setenv("TS_WHO", "subprocesz")
    # The child fails (its exit status), and the block, which goes on, is told why when
    # it ends.
    with pytest.raises(tracesock.ReplayError, match=r"(?s)in a child process.*subprocesz"), \
            tracesock.replay(out, follow_children=True), \
            pytest.raises(subprocess.CalledProcessError):
        _family(pieces_server, tmp_path, spawn=False)


def test_a_child_that_matches_no_recorded_one_is_refused(tmp_path: Path,
                                                         pieces_server: tuple[str, int]) -> None:
    out, _ = _record_family(tmp_path, pieces_server, spawn=False)
    with pytest.raises(tracesock.ReplayError, match="matches no recorded child"), \
            tracesock.replay(out, follow_children=True):
        other = subprocess.run([sys.executable, "-c", _FETCH, *map(str, pieces_server),
                                str(tmp_path / "sub"), "extra"], capture_output=True, text=True)
        # It never reached the server (which is up): its socket was refused.
        assert other.returncode == 1 and "no recorded process for this child" in other.stderr
        _family(pieces_server, tmp_path, spawn=False)


def test_a_recorded_child_never_started_fails_the_replay(
        tmp_path: Path, pieces_server: tuple[str, int]) -> None:
    out, trace = _record_family(tmp_path, pieces_server, spawn=False)
    top_chunks = [bytes.fromhex(c) for c in _received(trace, trace.header.pid or 0)]
    with pytest.raises(tracesock.ReplayMismatch, match="no such Python child was started"), \
            tracesock.replay(out, follow_children=True), \
            socket.create_connection(pieces_server) as c:
        c.sendall(b"top")
        assert [c.recv(100) for _ in top_chunks] == top_chunks
    # Without follow_children the program's own calls replay alone, children unchecked.
    with tracesock.replay(out), socket.create_connection(pieces_server) as c:
        c.sendall(b"top")
        assert [c.recv(100) for _ in top_chunks] == top_chunks


def test_replay_one_recorded_child_in_process(tmp_path: Path,
                                              pieces_server: tuple[str, int]) -> None:
    out, trace = _record_family(tmp_path, pieces_server, spawn=False)
    sub = next(p["pid"] for p in trace.header.extra["processes"] if _FETCH in p["argv"])
    with tracesock.replay(out, process=sub), socket.create_connection(pieces_server) as c:
        c.sendall(b"subprocess")
        got = []
        while data := c.recv(100):
            got.append(data.hex())
    assert got == _received(trace, sub)
    with pytest.raises(tracesock.ReplayError, match="no recorded process has pid 1 "), \
            tracesock.replay(out, process=1):
        pass
