"""Analysis benchmark: ``tracesock analyze`` on a 10,000-packet loopback capture, target < 3 s.

The capture is made here: short echo connections on 127.0.0.1, traced with
``capture_all`` (every segment kept), added in batches until the file holds at least
10,000 packets (bounded: at most ``MAX_BATCHES`` batches). Then the command is timed as
a user runs it (a fresh ``python -m tracesock analyze``, best of three), and the
in-process ``analyze_file`` too.

Run as root (or with CAP_NET_RAW): ``python bench/bench_analysis.py [--quick]``.
``run(quick=...)`` returns the figures as a dict for bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import tracesock
from tracesock.capture import pcapng
from tracesock.capture.tshark import analyze_file

TARGET_S = 3.0
PACKETS = 10_000
MAX_BATCHES = 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def targets() -> dict[str, tuple[str, float]]:
    return {"analyze_cli_s": ("<=", TARGET_S)}


def _echo_batch(connections: int, rounds: int) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(connections):
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)
        listener.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    for _ in range(connections):
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(rounds):
                s.sendall(b"x" * 64)
                s.recv(4096)
    server.join(30)


def build_capture(folder: str, packets: int) -> tuple[str, int]:
    """A pcapng of at least ``packets`` loopback TCP packets (merged batches)."""
    frames: list[pcapng.Frame] = []
    for batch in range(MAX_BATCHES):
        trace_path = os.path.join(folder, f"batch{batch}.jsonl")
        cap = os.path.join(folder, f"batch{batch}.pcapng")
        with tracesock.trace(trace_path, capture=cap, capture_all=True,
                             capture_required=True):
            _echo_batch(connections=100, rounds=10)
        frames += pcapng.read(cap)
        if len(frames) >= packets:
            break
    out = os.path.join(folder, "analysis-bench.pcapng")
    frames.sort(key=lambda f: f.time)
    pcapng.write(out, frames, linktype=frames[0].linktype, snaplen=65535, ifname="lo")
    return out, len(frames)


def _time_cli(path: str) -> float:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tracesock", "analyze", path],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def run(quick: bool = False) -> dict[str, Any]:
    """Build the capture and time the analysis; ``quick`` times one run instead of three."""
    with tempfile.TemporaryDirectory() as tmp:
        path, count = build_capture(tmp, PACKETS)
        repeats = 1 if quick else 3
        cli = min(_time_cli(path) for _ in range(repeats))
        t0 = time.perf_counter()
        result = analyze_file(path)
        inproc = time.perf_counter() - t0
    return {"packets": count, "streams": len(result.streams), "analyze_cli_s": cli,
            "analyze_in_process_s": inproc, "packets_per_s": count / inproc,
            "target_s": TARGET_S, "ok": cli < TARGET_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    r = run(quick=parser.parse_args().quick)
    verdict = "ok" if r["ok"] else "MISSED"
    print(f"tracesock analyze on {r['packets']} packets ({r['streams']} streams): "
          f"{r['analyze_cli_s']:.2f} s  (target < {TARGET_S:.0f} s: {verdict}); "
          f"in process {r['analyze_in_process_s']:.2f} s, "
          f"{r['packets_per_s']:.0f} packets/s")


if __name__ == "__main__":
    main()
