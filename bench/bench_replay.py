"""Replay throughput and memory: a million recorded recvs, replayed through a socket.

The trace is written by the real Recorder (one connect, then N recv records of 40
bytes and the peer's FIN), replayed with ``tracesock.replay`` by a client looping on
``recv(4096)``. Prints events/s (target: >= 1,000,000) and the tracemalloc peak of
the replay at two trace lengths: replay streams the trace, so the peak must not grow
with its length.

    python bench/bench_replay.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tracesock.record.recorder import Recorder
from tracesock.replay import replay

CHUNK = b"0123456789abcdefghijklmnopqrstuvwxyzABCD"


def build(path: str, n: int) -> None:
    """A trace of one connection receiving ``n`` chunks, through the real recorder."""
    with Recorder.open(path, argv=["bench_replay"]) as rec:
        rec.event(1, "socket", rec.now(), {"fd": 3, "family": "AF_INET",
                                           "kind": "SOCK_STREAM", "proto": 6})
        rec.event(1, "connect", rec.now(), {"args": {"address": ["127.0.0.1", 9]},
                                            "laddr": ["127.0.0.1", 40000],
                                            "raddr": ["127.0.0.1", 9]})
        transfer = rec.transfer
        now = rec.now
        args = {"bufsize": 4096}
        for _ in range(n):
            transfer(1, "recv", now(), len(CHUNK), CHUNK, args)
        transfer(1, "recv", now(), 0, b"", args)
        rec.event(1, "close", rec.now(), {"fd": 3, "fd_closed": True})


def replay_all(path: str) -> int:
    """Replay the trace through a socket; returns the number of recv calls."""
    calls = 0
    with replay(path), socket.create_connection(("127.0.0.1", 9)) as s:
        recv = s.recv
        while recv(4096):
            calls += 1
    return calls + 1


def peak_memory(path: str) -> int:
    tracemalloc.start()
    try:
        replay_all(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(quick: bool = False) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.jsonl")
        small = os.path.join(tmp, "small.jsonl")
        t0 = time.perf_counter()
        build(big, n)
        build(small, n // 10)
        built = time.perf_counter() - t0
        best = float("inf")
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            calls = replay_all(big)
            best = min(best, time.perf_counter() - t0)
        assert calls == n + 1, calls
        peak_small = peak_memory(small)
        peak_big = peak_memory(big)
        size = os.path.getsize(big)
    rate = (n + 1) / best
    return {
        "name": "replay",
        "events": n + 1,
        "trace_bytes": size,
        "build_s": round(built, 3),
        "replay_s": round(best, 3),
        "events_per_s": round(rate),
        "target_events_per_s": 1_000_000,
        "meets_target": rate >= 1_000_000,
        "peak_bytes_small": peak_small,
        "peak_bytes_big": peak_big,
        "peak_ratio_big_to_small": round(peak_big / peak_small, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events, one run")
    result = run(quick=parser.parse_args().quick)
    print(f"replay: {result['events']:,} recv events in {result['replay_s']} s = "
          f"{result['events_per_s']:,} events/s (target 1,000,000: "
          f"{'met' if result['meets_target'] else 'NOT met'})")
    print(f"peak memory (tracemalloc): {result['peak_bytes_small'] / 1e6:.2f} MB for "
          f"{(result['events'] - 1) // 10:,} events, {result['peak_bytes_big'] / 1e6:.2f} MB for "
          f"{result['events'] - 1:,} (ratio {result['peak_ratio_big_to_small']}; trace file "
          f"{result['trace_bytes'] / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
