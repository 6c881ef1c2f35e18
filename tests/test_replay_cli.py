"""``tracesock replay``: the lecture's echo client recorded once against a real loopback
echo server, then re-run from its trace with no server at all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ECHO_CLIENT = REPO / "examples" / "echo_client.py"


def _tracesock(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "tracesock", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(folder, port, stdout of the recorded run) with echo.jsonl in the folder."""
    folder = tmp_path_factory.mktemp("replay-cli")
    srv, thread = _echo_server()
    port = str(srv.getsockname()[1])
    try:
        run = _tracesock("run", "-o", "echo.jsonl", str(ECHO_CLIENT), "127.0.0.1", port,
                         cwd=folder)
        thread.join(10)
    finally:
        srv.close()
    assert run.returncode == 0, run.stderr
    assert "Hello, 대한민국!" in run.stdout
    return folder, port, run.stdout


def _nobody_listens(port: str) -> None:
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(port))) != 0


@pytest.mark.parametrize("check", ["concat", "strict", "off"])
def test_replay_prints_what_the_recorded_run_printed(recorded: tuple[Path, str, str],
                                                     check: str) -> None:
    folder, port, out = recorded
    _nobody_listens(port)
    rep = _tracesock("replay", "echo.jsonl", "--check", check, str(ECHO_CLIENT),
                     "127.0.0.1", port, cwd=folder)
    assert (rep.returncode, rep.stdout, rep.stderr) == (0, out, "")


def test_replay_as_a_module(recorded: tuple[Path, str, str]) -> None:
    folder, port, out = recorded
    (folder / "echo_mod.py").write_text(ECHO_CLIENT.read_text(encoding="utf-8"),
                                        encoding="utf-8")
    rep = _tracesock("replay", "echo.jsonl", "-m", "echo_mod", "127.0.0.1", port, cwd=folder)
    assert (rep.returncode, rep.stdout) == (0, out), rep.stderr


@pytest.mark.parametrize("edit", [("Hello, 대한민국!", "Hello, world!!"),
                                  ("s.close()", "s.send(b'more'); s.close()")])
def test_a_mismatch_is_one_line_and_status_1(recorded: tuple[Path, str, str],
                                             edit: tuple[str, str]) -> None:
    folder, port, _ = recorded
    script = folder / "changed.py"
    script.write_text(ECHO_CLIENT.read_text(encoding="utf-8").replace(*edit), encoding="utf-8")
    rep = _tracesock("replay", "echo.jsonl", str(script), "127.0.0.1", port, cwd=folder)
    assert rep.returncode == 1
    lines = rep.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracesock: replay mismatch: "), rep.stderr


def test_check_off_lets_other_bytes_through(recorded: tuple[Path, str, str]) -> None:
    folder, port, _ = recorded
    script = folder / "other.py"
    script.write_text(ECHO_CLIENT.read_text(encoding="utf-8").replace("대한민국", "world!!!!"),
                      encoding="utf-8")
    rep = _tracesock("replay", "echo.jsonl", "--check", "off", str(script), "127.0.0.1", port,
                     cwd=folder)
    assert rep.returncode == 0 and "Hello, 대한민국!" in rep.stdout, rep.stderr


def test_ignore_leaves_a_changed_part_out_of_the_comparison(
        recorded: tuple[Path, str, str]) -> None:
    """``--ignore REGEX`` (repeatable): the changed word is not compared; the recorded
    reply is printed, as with the API's ``replay(..., ignore=[...])``."""
    folder, port, _ = recorded
    script = folder / "ignored.py"
    script.write_text(ECHO_CLIENT.read_text(encoding="utf-8").replace("대한민국", "Korea"),
                      encoding="utf-8")
    plain = _tracesock("replay", "echo.jsonl", str(script), "127.0.0.1", port, cwd=folder)
    assert plain.returncode == 1, plain.stderr
    rep = _tracesock("replay", "echo.jsonl", "--ignore", "대한민국|Korea", "--ignore", "x^",
                     str(script), "127.0.0.1", port, cwd=folder)
    assert rep.returncode == 0 and "Hello, 대한민국!" in rep.stdout, rep.stderr


def test_a_bad_trace_is_status_2(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("not json\n", encoding="utf-8")
    for trace in ("bad.jsonl", "missing.jsonl"):
        rep = _tracesock("replay", trace, str(ECHO_CLIENT), cwd=tmp_path)
        assert rep.returncode == 2 and rep.stdout == ""
        assert len(rep.stderr.strip().splitlines()) == 1, rep.stderr
