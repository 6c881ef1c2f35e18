"""Replaying a real HTTP client: tracesock against VCR.py, the tool users know.

The same session is recorded once by each tool against a real local server (stdlib
``ThreadingHTTPServer`` on 127.0.0.1, HTTP/1.1 keep-alive), then replayed with the
server stopped: ``requests.Session`` doing N GETs. Each replay is checked (same bodies
as the recorded run) and timed; the figure is VCR.py's replay time over tracesock's
(higher is better for tracesock), measured in the same run, plus both against the
plain run on the real server.

    python bench/bench_vcr.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import requests
import vcr

import tracesock

FULL_GETS = 2000
QUICK_GETS = 200
TIME_LIMIT = 300.0  # seconds for the whole suite; a run over it stops early


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms ACK wait

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "n": int(self.path.rsplit("/", 1)[-1])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def session_run(base: str, n: int, deadline: float) -> list[bytes]:
    """What the user's code does: one session, ``n`` GETs (bounded by ``deadline``)."""
    out = []
    with requests.Session() as s:
        for i in range(n):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench_vcr: over {TIME_LIMIT:.0f} s after {i} GETs")
            r = s.get(f"{base}/item/{i}", timeout=10)
            out.append(r.content)
    return out


def _timed(fn: Callable[[], list[bytes]]) -> tuple[float, list[bytes]]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run(quick: bool = False) -> dict[str, Any]:
    n = QUICK_GETS if quick else FULL_GETS
    deadline = time.monotonic() + TIME_LIMIT
    with tempfile.TemporaryDirectory(prefix="bench-vcr-") as tmp:
        trace_path = os.path.join(tmp, "session.jsonl")
        cassette = os.path.join(tmp, "session.yaml")
        server, base = _serve()
        try:
            plain_s, expected = _timed(lambda: session_run(base, n, deadline))
            with tracesock.trace(trace_path):
                recorded = session_run(base, n, deadline)
            with vcr.use_cassette(cassette, record_mode="once"):
                vcr_recorded = session_run(base, n, deadline)
        finally:
            server.shutdown()
            server.server_close()
        assert recorded == expected and vcr_recorded == expected
        # The server is gone: both replays must answer from their recordings.
        with tracesock.replay(trace_path):
            ts_s, ts_out = _timed(lambda: session_run(base, n, deadline))
        with vcr.use_cassette(cassette, record_mode="none"):
            vcr_s, vcr_out = _timed(lambda: session_run(base, n, deadline))
    return {
        "gets": n,
        "plain_s": round(plain_s, 4),
        "tracesock_replay_s": round(ts_s, 4),
        "vcr_replay_s": round(vcr_s, 4),
        "vcr_over_tracesock": round(vcr_s / ts_s, 2),
        "tracesock_replay_over_plain": round(ts_s / plain_s, 3),
        "same_bodies": ts_out == expected and vcr_out == expected,
    }


def targets() -> dict[str, tuple[str, float]]:
    return {"vcr_over_tracesock": (">=", 1.0), "same_bodies": (">=", 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_GETS} GETs, not {FULL_GETS}")
    args = parser.parse_args()
    for key, value in run(args.quick).items():
        print(f"{key:30} {value}")


if __name__ == "__main__":
    main()
