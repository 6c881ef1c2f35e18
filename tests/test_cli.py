"""The tracesock command, in a subprocess (as users run it) and in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracesock
from tracesock.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def traced(out: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "tracesock", "run", "-o", str(out), *args, cwd=cwd)


def same(a: subprocess.CompletedProcess[str], b: subprocess.CompletedProcess[str]) -> None:
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def test_lecture_echo_client_runs_unchanged(tmp_path: Path,
                                            echo_server: tuple[str, int]) -> None:
    host, port = echo_server
    script = str(EXAMPLES / "echo_client.py")
    plain = run(script, host, str(port))
    out = tmp_path / "echo.jsonl"
    tr = traced(out, script, host, str(port))
    same(plain, tr)
    assert "Hello, 대한민국!" in tr.stdout
    trace = tracesock.load(str(out))
    assert trace.complete and trace.warnings == []
    assert trace.header.argv == (script, host, str(port))
    assert [e.op for e in trace.events] == ["socket", "connect", "send", "recv", "close"]
    assert [e.nbytes for e in trace.events if e.nbytes is not None] == [20, 20]


def test_lecture_http_close_client_runs_unchanged(tmp_path: Path, http_server: str) -> None:
    script = str(EXAMPLES / "http_close_client.py")
    plain = run(script, http_server)
    out = tmp_path / "http.jsonl"
    tr = traced(out, script, http_server)
    same(plain, tr)
    assert "한국외국어대학교" in tr.stdout
    (conn,) = tracesock.load(str(out)).connections.values()
    assert conn.recv_chunks[-1] == 0  # read until the server's FIN
    assert sum(conn.recv_chunks) > 1000
    assert conn.events[2].data is not None and conn.events[2].data.endswith(
        b"Connection: close\r\n\r\n")


@pytest.mark.parametrize(
    "body",
    [
        "import sys\nprint(__name__, sys.argv[1:], __file__.endswith('prog.py'))\nsys.exit(3)\n",
        "import sys\nsys.exit('a message on stderr')\n",
        "def f():\n    raise ValueError('boom')\n\nf()\n",
        "import sys, os\nprint(sys.path[0] == os.path.dirname(os.path.abspath(__file__)))\n",
        "import atexit, socket\natexit.register(lambda: socket.socketpair()[0].close())\n",
        "import threading, socket\n"
        "threading.Thread(target=lambda: socket.socket().close()).start()\n",
    ],
    ids=["exit3", "exit-message", "uncaught", "sys-path", "atexit-socket", "thread-socket"],
)
def test_script_behaves_as_under_python(tmp_path: Path, body: str) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(body)
    plain = run(str(prog), "a", "-b")
    out = tmp_path / "t.jsonl"
    tr = traced(out, str(prog), "a", "-b")
    same(plain, tr)
    trace = tracesock.load(str(out))
    assert trace.complete
    if "atexit" in body or "threading" in body:
        assert [e.op for e in trace.events][-1] == "close"  # recorded after the program


def test_module_mode(tmp_path: Path) -> None:
    pkg = tmp_path / "lecture"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "client.py").write_text(
        "import socket, sys\nprint(__name__, sys.argv[1:])\n"
        "a, b = socket.socketpair()\na.send(b'hi')\nprint(b.recv(2))\n")
    plain = run("-m", "lecture.client", "x", cwd=tmp_path)
    out = tmp_path / "m.jsonl"
    tr = run("-m", "tracesock", "run", "-o", str(out), "-m", "lecture.client", "x", cwd=tmp_path)
    same(plain, tr)
    assert "send" in [e.op for e in tracesock.load(str(out)).events]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "cannot open script 'missing.py'"),
        (["run"], "name a script to run"),
        (["run", "-m", "no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
        (["run", "-o", "/proc/nope/t.jsonl", "prog.py"], "cannot create the folder"),
        (["run", "--redact", "(", "prog.py"], "not a valid regex"),
        (["run", "--max-payload", "-1", "prog.py"], "--max-payload must be >= 0"),
        (["show", "missing.jsonl"], "cannot read the trace"),
        (["show", "prog.py"], "prog.py:1: not a tracesock trace"),
        (["stats", "prog.py"], "prog.py:1: not a tracesock trace"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "prog.py").write_text("print('never')\n")
    res = run("-m", "tracesock", *args, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracesock: error: ")
    assert message in lines[0]


def test_unwritable_output_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/version"  # not writable even by root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "t.jsonl")
    (tmp_path / "prog.py").write_text("print('never')\n")
    res = run("-m", "tracesock", "run", "-o", target, "prog.py", cwd=tmp_path)
    assert res.returncode == 2 and "cannot write the trace to" in res.stderr
    assert "never" not in res.stdout


def test_show_and_stats_in_process(tmp_path: Path, echo_server: tuple[str, int],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.jsonl"
    host, port = echo_server
    assert traced(out, str(EXAMPLES / "echo_client.py"), host, str(port)).returncode == 0
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 5
    assert "connect(('127.0.0.1'," in shown[1]
    assert 'send(data) = 20 bytes "Hello, 대한민국!"' in shown[2]
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sent 20 B in 1, received 20 B in 1" in text and "recv chunks: [20]" in text
    assert main(["stats", "--json", str(out)]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["connections"][0]["recv_chunks"] == [20]


def test_truncated_trace_shows_with_a_warning(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        import socket

        a, b = socket.socketpair()
        a.close()
        b.close()
    data = out.read_bytes()
    out.write_bytes(data[: data.rindex(b'{"type":"end"') - 10])
    assert main(["show", str(out)]) == 0
    captured = capsys.readouterr()
    assert "tracesock: warning:" in captured.err and "incomplete" in captured.err
    assert len(captured.out.splitlines()) == 3


def test_console_script_and_help() -> None:
    res = run("-m", "tracesock", "--help")
    assert res.returncode == 0 and "run" in res.stdout and "show" in res.stdout
    res = run("-c", "import sys, tracesock; print('scapy' in sys.modules, "
                    "'pyshark' in sys.modules)")
    assert res.stdout.strip() == "False False"
