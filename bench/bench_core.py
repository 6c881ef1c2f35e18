"""Core benchmark: what tracing costs a real socket program, against plain and strace.

Theory of operation. The measured program is a real script (``WORKLOAD`` below, written
to a temporary folder) run in its own process, three ways: ``python script``,
``python -m tracesock run script`` (payload on, and ``--no-payload``) and ``strace -f``
of the same ``python script`` (without and with payload bytes: ``-s 65536 -xx``). Every
process is pinned to one core (``taskset -c 0``), so client and server threads take
turns on it as they would on a busy machine and the figures do not depend on
scheduling across cores.

The script times its own workload, from the first connect to the last byte, and prints
it; that in-script time (start-up excluded) gives the headline ratios. The wall time of
the whole process is reported beside it. Each figure is the median of several
repetitions, interleaved (plain, traced, strace, plain, ...) so that a burst of noise on
this shared machine hits every variant alike. Only ratios within one run mean anything.

Traces and strace logs go to a tmpfs folder (/dev/shm when there is one) and are
deleted after each run.

Run it as ``python bench/bench_core.py [--quick]``, or through ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The measured program. Both ends live in it (the server in a thread), so a traced run
# records both sides of every connection, as `tracesock run` of a lecture demo would.
WORKLOAD = r'''
import json, socket, sys, threading, time

mode, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
port = listener.getsockname()[1]
received = 0

def pingpong_server():
    conn, _ = listener.accept()
    with conn:
        while True:
            got = b""
            while len(got) < size:
                chunk = conn.recv(size - len(got))
                if not chunk:
                    return
                got += chunk
            conn.sendall(got)

def bulk_server():
    global received
    conn, _ = listener.accept()
    with conn:
        while chunk := conn.recv(65536):
            received += len(chunk)

if mode == "pingpong-remote":  # the server is another process, untraced (harness-started)
    listener.close()
    mode, port = "pingpong", int(sys.argv[4])
    server = threading.Thread(target=lambda: None)
else:
    server = threading.Thread(target=pingpong_server if mode == "pingpong" else bulk_server)
server.start()
start = time.perf_counter()
client = socket.create_connection(("127.0.0.1", port))
client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "pingpong":
    message = b"p" * size
    for _ in range(count):
        client.sendall(message)
        got = b""
        while len(got) < size:
            got += client.recv(size - len(got))
    client.close()
    server.join()
else:
    block = b"b" * size
    for _ in range(count):
        client.sendall(block)
    client.close()
    server.join()
    assert received == count * size, received
elapsed = time.perf_counter() - start
listener.close()
print(json.dumps({"elapsed": elapsed}))
'''

# The other end for "pingpong-remote": one connection, echoed, in its own process.
ECHO_SERVER = r'''
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
while data := conn.recv(65536):
    conn.sendall(data)
'''

# Targets: (figure, comparison, bound). "<=" means the figure must not exceed the bound.
TARGETS: dict[str, tuple[str, float]] = {
    "pingpong_traced_payload_ratio": ("<=", 1.15),
    "bulk_traced_nopayload_ratio": ("<=", 1.05),
    "bulk_traced_payload_ratio": ("<=", 6.0),
    "pingpong_strace_over_traced": (">=", 5.0),
    "startup_extra_ms": ("<=", 150.0),
    "import_heavy_modules": ("<=", 0),
}

STRACE_NET = ["strace", "-f", "-e", "trace=%net,read,write,close"]


def _tmpdir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="tracesock-bench-", dir=base)


def _pin() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def _run(cmd: list[str], timeout: float, server: str | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (in-script elapsed, wall time). With ``server``, a script
    started first (pinned too) whose printed port is appended to ``cmd``."""
    srv = None
    if server is not None:
        srv = subprocess.Popen([*_pin(), sys.executable, server], stdout=subprocess.PIPE,
                               text=True, env=_env())
        assert srv.stdout is not None
        cmd = [*cmd, srv.stdout.readline().strip()]
    try:
        return _run_one(cmd, timeout)
    finally:
        if srv is not None:
            try:
                srv.wait(timeout=30)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()


def _run_one(cmd: list[str], timeout: float) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return float(json.loads(lines[-1])["elapsed"]), wall


def _variants(script: str, args: list[str], tmp: str, *,
              strace_payload: bool) -> dict[str, list[str]]:
    py = sys.executable
    out = os.path.join(tmp, "out")
    variants = {
        "plain": [py, script, *args],
        "traced_payload": [py, "-m", "tracesock", "run", "-o", out + ".jsonl", script, *args],
        "traced_nopayload": [py, "-m", "tracesock", "run", "--no-payload", "-o",
                             out + ".jsonl", script, *args],
        # The Python path alone, as where the compiled journal could not be built.
        "traced_python": ["env", "TRACESOCK_PURE_PYTHON=1", py, "-m", "tracesock", "run",
                          "-o", out + ".jsonl", script, *args],
    }
    if shutil.which("strace"):
        variants["strace"] = [*STRACE_NET, "-o", out + ".strace", py, script, *args]
        if strace_payload:
            variants["strace_payload"] = [*STRACE_NET, "-s", "65536", "-xx", "-o",
                                          out + ".strace", py, script, *args]
    return variants


def _clean(tmp: str) -> None:
    for name in os.listdir(tmp):
        if name.startswith("out."):
            os.unlink(os.path.join(tmp, name))


def _measure(script: str, args: list[str], tmp: str, reps: int, timeout: float, *,
             strace_payload: bool, server: str | None = None) -> dict[str, dict[str, float]]:
    variants = _variants(script, args, tmp, strace_payload=strace_payload)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, cmd in variants.items():
            try:
                samples[name].append(_run([*_pin(), *cmd], timeout, server))
            finally:
                _clean(tmp)
    return {name: {"elapsed": statistics.median(s[0] for s in runs),
                   "wall": statistics.median(s[1] for s in runs)}
            for name, runs in samples.items()}


def _ratios(prefix: str, m: dict[str, dict[str, float]], out: dict[str, Any]) -> None:
    plain = m["plain"]
    for name, fig in m.items():
        out[f"{prefix}_{name}_s"] = round(fig["elapsed"], 4)
        out[f"{prefix}_{name}_wall_s"] = round(fig["wall"], 4)
        if name != "plain":
            out[f"{prefix}_{name}_ratio"] = round(fig["elapsed"] / plain["elapsed"], 3)
            out[f"{prefix}_{name}_wall_ratio"] = round(fig["wall"] / plain["wall"], 3)
    if "strace" in m:
        out[f"{prefix}_strace_over_traced"] = round(
            m["strace"]["elapsed"] / m["traced_payload"]["elapsed"], 2)
    if "strace_payload" in m:
        out[f"{prefix}_strace_payload_over_traced"] = round(
            m["strace_payload"]["elapsed"] / m["traced_payload"]["elapsed"], 2)


def _startup(tmp: str, reps: int) -> dict[str, Any]:
    empty = os.path.join(tmp, "empty.py")
    Path(empty).write_text("")
    py = sys.executable
    out = os.path.join(tmp, "out.jsonl")
    walls: dict[str, list[float]] = {"plain": [], "traced": []}
    cmds = {"plain": [py, empty], "traced": [py, "-m", "tracesock", "run", "-o", out, empty]}
    for _ in range(reps):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, timeout=60, env=_env(), capture_output=True)
            walls[name].append(time.perf_counter() - t0)
            _clean(tmp)
    plain, traced = statistics.median(walls["plain"]), statistics.median(walls["traced"])
    return {"startup_plain_ms": round(plain * 1000, 1),
            "startup_traced_ms": round(traced * 1000, 1),
            "startup_extra_ms": round((traced - plain) * 1000, 1)}


IMPORT_PROBE = r'''
import json, sys, time
t0 = time.perf_counter()
import tracesock
elapsed = time.perf_counter() - t0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("scapy", "pyshark"))
print(json.dumps({"elapsed": elapsed, "heavy": heavy}))
'''


def _import_time(reps: int) -> dict[str, Any]:
    times, heavy = [], []
    for _ in range(reps):
        proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True,
                              text=True, check=True, timeout=60, env=_env())
        got = json.loads(proc.stdout)
        times.append(got["elapsed"])
        heavy = got["heavy"]
    # -X importtime names the slowest modules tracesock pulls in (cumulative us).
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tracesock"],
                          capture_output=True, text=True, check=True, timeout=60, env=_env())
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    slowest = [f"{name} {us / 1000:.1f}ms" for us, name in sorted(rows, reverse=True)[1:6]]
    return {"import_ms": round(statistics.median(times) * 1000, 1),
            "import_heavy_modules": len(heavy), "import_heavy_names": heavy,
            "import_slowest": slowest}


def run(quick: bool = False) -> dict[str, Any]:
    """Measure everything; return a flat dict of figures (seconds, ms, ratios)."""
    tmp = _tmpdir()
    try:
        script = os.path.join(tmp, "workload.py")
        Path(script).write_text(WORKLOAD)
        rounds = 2_000 if quick else 20_000
        bulk_blocks = 512 if quick else 4096  # of 64 KiB: 32 MiB or 256 MiB
        reps = 3 if quick else 5
        # A bulk run is over in about 0.1 s, where a burst of noise on this VM moves a
        # single figure by +-5 % (medians of 9 still moved by +-2 %): more of them.
        bulk_reps = 3 if quick else 15
        results: dict[str, Any] = {"pingpong_rounds": rounds, "pingpong_message": 64,
                                   "bulk_bytes": bulk_blocks * 65536, "bulk_write": 65536,
                                   "repetitions": reps, "bulk_repetitions": bulk_reps,
                                   "pinned": bool(_pin())}
        pp = _measure(script, ["pingpong", str(rounds), "64"], tmp, reps, 600,
                      strace_payload=True)
        _ratios("pingpong", pp, results)
        # The same with only the client traced: the server is another, untraced process
        # (two traced calls per round trip instead of four).
        server = os.path.join(tmp, "echo_server.py")
        Path(server).write_text(ECHO_SERVER)
        remote = _measure(script, ["pingpong-remote", str(rounds), "64"], tmp, reps, 600,
                          strace_payload=False, server=server)
        _ratios("pingpong_client_only", remote, results)
        # strace -s 65536 -xx of 256 MiB each way would write ~2 GiB of hex: not run.
        bulk = _measure(script, ["bulk", str(bulk_blocks), "65536"], tmp, bulk_reps, 600,
                        strace_payload=quick)
        _ratios("bulk", bulk, results)
        results.update(_startup(tmp, 5 if quick else 11))
        results.update(_import_time(3 if quick else 7))
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def targets() -> dict[str, tuple[str, float]]:
    return dict(TARGETS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = run(quick=args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for key, value in results.items():
        target = TARGETS.get(key)
        mark = ""
        if target is not None:
            op, bound = target
            ok = value <= bound if op == "<=" else value >= bound
            mark = f"   target {op} {bound:g}" + ("" if ok else "   MISSED")
        print(f"{key:40} {value}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
