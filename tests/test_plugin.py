"""The pytest plugin, tested with pytester: record once, replay after, fail clearly."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def _plugin_args() -> list[str]:
    # Installed (pip install -e .), the pytest11 entry point loads the plugin; from a
    # source tree it must be named. Naming it when installed would register it twice.
    eps = importlib.metadata.entry_points(group="pytest11")
    if any(ep.value == "tracesock.plugin" for ep in eps):
        return []
    return ["-p", "tracesock.plugin"]


FETCH = '''
import socket
import threading
import time

import pytest

RealSocket = socket.socket


def serve_once(srv):
    conn, _ = srv.accept()
    with conn:
        conn.recv(100)
        for piece in (b"hel", b"lo ", b"world"):
            conn.sendall(piece)
            time.sleep(0.03)


def fetch(port):
    chunks = []
    with socket.create_connection(("127.0.0.1", port)) as s:  # closed when replay raises
        s.sendall(b"hi")
        while data := s.recv(100):
            chunks.append(data)
    return chunks


@pytest.mark.tracesock("captures/fetch.jsonl")
def test_fetch(tracesock):
    port = 1  # replaying: nothing listens, nothing needs to
    if tracesock.recording:
        srv = RealSocket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        t = threading.Thread(target=serve_once, args=(srv,))
        t.start()
    chunks = fetch(port)
    if tracesock.recording:
        t.join()
        srv.close()
    assert chunks == [b"hel", b"lo ", b"world"]
    print("MODE", tracesock.mode)
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    pytester.makepyfile(test_fetch=FETCH)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*_plugin_args(), "-s", *args)


def test_once_records_then_replays(suite: pytest.Pytester) -> None:
    first = run(suite)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*MODE record*"])
    recording = suite.path / "captures" / "fetch.jsonl"
    assert recording.exists()
    before = recording.read_bytes()
    for _ in range(3):
        again = run(suite)
        again.assert_outcomes(passed=1)
        again.stdout.fnmatch_lines(["*MODE replay*"])
    assert recording.read_bytes() == before
    run(suite, "--tracesock-mode=none").assert_outcomes(passed=1)


def test_mode_none_without_recording_fails_clearly(suite: pytest.Pytester) -> None:
    result = run(suite, "--tracesock-mode=none")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*tracesock: no recording at *fetch.jsonl*"
                                 "--tracesock-mode=none only replays*"])
    assert not (suite.path / "captures").exists()


def test_mode_all_records_again(suite: pytest.Pytester) -> None:
    run(suite).assert_outcomes(passed=1)
    recording = suite.path / "captures" / "fetch.jsonl"
    before = recording.read_bytes()
    result = run(suite, "--tracesock-mode=all")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*MODE record*"])
    assert recording.read_bytes() != before


def test_unmatched_socket_fails_the_test_without_network(suite: pytest.Pytester) -> None:
    run(suite).assert_outcomes(passed=1)
    suite.makepyfile(test_other='''
import socket
import pytest

@pytest.mark.tracesock("captures/fetch.jsonl")
def test_elsewhere():
    # IPv6 loopback: the recording has an IPv4 connection, so nothing matches; and
    # were replay ever to let it through, it would still not leave the machine.
    socket.create_connection(("::1", 80), timeout=30)
''')
    result = run(suite, "test_other.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ReplayError*no recorded connection matches connect to "
                                 "*::1*80*never reaches the network*"])


def test_fixture_without_marker_uses_a_default_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_default='''
def test_nothing(tracesock):
    print("PATH", tracesock.path)
''')
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert (pytester.path / "captures" / "test_default" / "test_nothing.jsonl").exists()


def test_a_failed_recording_is_not_kept(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fails='''
import pytest

@pytest.mark.tracesock("captures/fails.jsonl")
def test_fails():
    assert False
''')
    run(pytester).assert_outcomes(failed=1)
    assert not (pytester.path / "captures" / "fails.jsonl").exists()


def test_marker_is_registered_and_options_checked(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*_plugin_args(), "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.tracesock(path=None*"])
    pytester.makepyfile(test_bad='''
import pytest

@pytest.mark.tracesock("x.jsonl", speed=2)
def test_bad():
    pass
''')
    bad = run(pytester)
    bad.assert_outcomes(errors=1)
    bad.stdout.fnmatch_lines(["*unknown keyword(s) speed*"])


def test_marker_pids_gives_back_the_recorded_pid(pytester: pytest.Pytester) -> None:
    """``pids=True`` goes to replay(): the recorded pid comes back (the recording is
    edited to hold another one), and recording takes no such option."""
    pytester.makepyfile(test_pid='''
import os
import pytest

@pytest.mark.tracesock("captures/pid.jsonl", pids=True)
def test_pid(tracesock):
    print("PID", os.getpid())
''')
    pytester.runpytest_subprocess(*_plugin_args(), "-s").assert_outcomes(passed=1)
    trace = pytester.path / "captures" / "pid.jsonl"
    lines = trace.read_text().splitlines()
    header = json.loads(lines[0])
    header["entropy"]["pid"] = 1 << 22
    trace.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    # Processes of their own: a pid that changes mid-life misleads what kept the old one
    # (here the outer pytest's).
    replayed = pytester.runpytest_subprocess(*_plugin_args(), "-s")
    replayed.assert_outcomes(passed=1)
    replayed.stdout.fnmatch_lines([f"*PID {1 << 22}*"])


def test_plugin_imports_cheaply(pytester: pytest.Pytester) -> None:
    code = ("import sys, tracesock.plugin\n"
            "bad = [m for m in ('hypothesis', 'scapy') if m in sys.modules]\n"
            "assert not bad, bad\n")
    path = Path(pytester.path) / "check_import.py"
    path.write_text(code)
    assert pytester.runpython(path).ret == 0


CHILD_FETCH = FETCH.replace('''@pytest.mark.tracesock("captures/fetch.jsonl")
def test_fetch(tracesock):''', '''CHILD = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"hi")
chunks = []
while data := s.recv(100):
    chunks.append(data)
print(chunks)
"""


def fetch(port):  # in a Python child process
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", CHILD, str(port)], capture_output=True,
                         text=True, check=True).stdout
    return eval(out)


@pytest.mark.tracesock("captures/child.jsonl", follow_children=True)
def test_fetch(tracesock):''')


def test_marker_follow_children_records_and_replays_a_child(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    pytester.makepyfile(test_child=CHILD_FETCH)
    first = run(pytester)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*MODE record*"])
    again = run(pytester, "--tracesock-mode=none")  # the child replays: nothing listens
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*MODE replay*"])


def test_tracesock_run_of_pytest_gets_no_rewrite_warning() -> None:
    """Under ``tracesock run -m pytest`` tracesock is imported before pytest, which marks
    the top package of every plugin distribution for rewriting and warns for one already
    imported: with tracesock installed as a wheel, an error under ``filterwarnings =
    error`` (urllib3's own suite stopped at start). pytest skips that warning for a
    module whose docstring opts out of rewriting; tracesock's does. (This process got
    tracesock through pytest's rewriting import, so the warning itself cannot show here.)
    """
    from _pytest.assertion.rewrite import AssertionRewriter

    import tracesock

    assert AssertionRewriter.is_rewrite_disabled(tracesock.__doc__ or "")


def test_marker_ignore_and_entropy(pytester: pytest.Pytester) -> None:
    """A request carrying a random token and a timestamp replays: the token is given
    back (entropy), the timestamp is ignored (marker's ``ignore``)."""
    pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    pytester.makepyfile(test_fetch=FETCH.replace(
        'conn.recv(100)', 'print("GOT", conn.recv(100))').replace(
        'b"hi"', 'b"hi " + os.urandom(4).hex().encode() + f" t={time.time_ns()}".encode()'
    ).replace("import socket\n", "import os\nimport socket\n").replace(
        '@pytest.mark.tracesock("captures/fetch.jsonl")',
        '@pytest.mark.tracesock("captures/fetch.jsonl", ignore=[r"t=\\d+"])'))
    first = run(pytester)
    first.assert_outcomes(passed=1)
    second = run(pytester)
    second.assert_outcomes(passed=1)
    assert "MODE replay" in second.stdout.str()
    bad = pytester.path / "test_fetch.py"
    bad.write_text(bad.read_text().replace(', ignore=[r"t=\\d+"]', ""))
    run(pytester).assert_outcomes(failed=1)  # without ignore: the timestamp differs

