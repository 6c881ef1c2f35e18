"""Readers on traces of any size: ``stats``, ``show`` and ``load()`` against DuckDB.

Two traces are recorded here by tracesock itself (``tracesock run`` of a script doing
ping-pong rounds over ``socket.socketpair()``, 17-byte payloads, four calls a round):
about 200,000 and 2,000,000 calls (``--quick``: 20,000 and 200,000). On each, every
reader runs as a user runs it, in a fresh process of its own, and is measured from the
outside, by a small wrapper process that starts it: wall time, and the peak RSS of that
one process (``os.wait4``'s rusage; see ``_WRAPPER`` for why a wrapper):

- ``tracesock stats TRACE`` and ``tracesock stats --json TRACE``
- ``tracesock show TRACE | head -3``: the time until 3 lines have come through the pipe
  (the process is then killed)
- ``tracesock show TRACE > /dev/null``: the whole timeline
- ``python -c 'import tracesock; tracesock.load(TRACE)'``: peak RSS against the size of
  the call metadata (the file less its base64 payload text)
- the baseline: DuckDB (``pip install duckdb``) in a Python process of its own, running
  ``QUERY`` below (calls and bytes per socket and op, what ``stats`` adds up); its
  counts are checked against ``stats --json``'s.

And the join, on a third pair of traces, recorded with ``tracesock run --capture`` (root:
it sniffs loopback) of a script making many connections of ping-pong rounds to a
threaded echo server (``CAPTURE_CONNECTIONS``; ``--quick``: ``QUICK_CAPTURE_CONNECTIONS``):

- ``tracesock show TRACE --capture CAP > /dev/null``, and the same with ``--sock 2``:
  peak RSS at both sizes and its big/small ratio (the join holds the connections'
  set-ups and the capture's segments, not the calls). Reported, no target. Without
  capture (not root, no scapy) these figures are left out.

Targets: stats (and stats --json) within 4x of DuckDB's time; peak RSS of stats and
show under 150 MB, and at 2M calls within 1.3x of 200k; ``show | head -3`` under 0.3 s;
``load()`` peak RSS under 4x the call metadata. Each prints PASS or MISS; nothing
asserts (a benchmark reports, bench/run.py).

    python bench/bench_readers.py [--quick] [--json] [-o FILE] [--repeat N]
                                  [--duckdb-threads N] [--pythonpath DIR] [--capture-only]

``--pythonpath DIR`` measures the tracesock package found in DIR (a copy of another
commit's ``tracesock/``, say, for a before/after figure) instead of the checkout's.

``run(quick=...)`` returns the flat figures for bench/run.py, ``targets()`` the bounds.
MB here is 10**6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"

FULL_EVENTS = (200_000, 2_000_000)
QUICK_EVENTS = (20_000, 200_000)
CMD_TIMEOUT_S = 900.0       # any one measured command
QUICK_CMD_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 600.0     # recording one trace (the script also stops itself)
HEAD_LINES = 3

TARGET_RATIO_TO_DUCKDB = 4.0
TARGET_PEAK_MB = 150.0
TARGET_FLATNESS = 1.3
TARGET_HEAD_S = 0.3
TARGET_LOAD_TO_METADATA = 4.0

# (connections, ping-pong rounds on each): ~4 calls a round, ~1,000 B of capture each
CAPTURE_CONNECTIONS = ((200, 100), (4_000, 100))
QUICK_CAPTURE_CONNECTIONS = ((100, 50), (1_000, 50))

SEND_OPS = ("send", "sendall", "sendto", "sendmsg", "sendfile", "write")
RECV_OPS = ("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "read")

# What `tracesock stats` adds up, in SQL: calls, successful calls and the bytes they
# moved, per socket and op. Only `call` lines count (line 1 is the `trace` header, the
# last one the `end` line). Calls that raised (`error`) move no bytes in stats' sums.
QUERY = """\
SELECT sock, op,
       count(*) AS calls,
       count(*) FILTER (WHERE error IS NULL) AS ok_calls,
       coalesce(sum(nbytes) FILTER (WHERE error IS NULL), 0) AS ok_bytes
FROM read_json($trace, format = 'newline_delimited',
               columns = {type: 'VARCHAR', sock: 'BIGINT', op: 'VARCHAR',
                          nbytes: 'BIGINT', error: 'JSON'})
WHERE type = 'call'
GROUP BY ALL
ORDER BY ALL"""

# Runs in a fresh interpreter, so that its peak RSS is DuckDB's alone.
_DUCKDB_CHILD = """\
import json, sys
import duckdb
con = duckdb.connect()
if int(sys.argv[3]):
    con.execute(f"SET threads = {int(sys.argv[3])}")
rows = con.execute(sys.argv[1], {"trace": sys.argv[2]}).fetchall()
json.dump([list(r) for r in rows], sys.stdout)
"""

# The ping-pong, as the script tracesock runs. Bounded in rounds and in time.
_PINGPONG = """\
import socket, sys, time
rounds, limit = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + limit
a, b = socket.socketpair()
msg = b"ping-0123456789ab"
for i in range(rounds):
    a.sendall(msg)
    b.recv(64)
    b.sendall(msg)
    a.recv(64)
    if i % 4096 == 0 and time.monotonic() > deadline:
        break
a.close()
b.close()
"""

# Many connections, one after another, to a threaded echo server: the capture's SYN, FIN
# and RST segments grow with the connections, the trace with the rounds too.
_MANY = """\
import socket, sys, threading
conns, rounds = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(128)
addr = srv.getsockname()
def serve():
    for _ in range(conns):
        c, _ = srv.accept()
        while data := c.recv(64):
            c.sendall(data)
        c.close()
server = threading.Thread(target=serve)
server.start()
msg = b"ping-0123456789ab"
for _ in range(conns):
    s = socket.create_connection(addr)
    for _ in range(rounds):
        s.sendall(msg)
        s.recv(64)
    s.shutdown(socket.SHUT_WR)
    s.recv(64)
    s.close()
server.join()
srv.close()
"""


def _python() -> str:
    venv = VENV_BIN / "python"
    return str(venv) if venv.exists() else sys.executable


def _tracesock() -> list[str]:
    """The command as a user types it: the console script of the checkout's venv."""
    for folder in (Path(sys.executable).parent, VENV_BIN):
        script = folder / "tracesock"
        if script.exists():
            return [str(script)]
    return [_python(), "-m", "tracesock"]


def targets() -> dict[str, tuple[str, float]]:
    t: dict[str, tuple[str, float]] = {"unmeasured": ("<=", 0), "duckdb_agrees": (">=", 1)}
    for size in ("small", "big"):
        t[f"stats_to_duckdb_{size}"] = ("<=", TARGET_RATIO_TO_DUCKDB)
        t[f"stats_json_to_duckdb_{size}"] = ("<=", TARGET_RATIO_TO_DUCKDB)
        for reader in ("stats", "stats_json", "show_all"):
            t[f"{reader}_mb_{size}"] = ("<=", TARGET_PEAK_MB)
        t[f"show_head3_s_{size}"] = ("<=", TARGET_HEAD_S)
        t[f"load_to_metadata_{size}"] = ("<=", TARGET_LOAD_TO_METADATA)
    for reader in ("stats", "stats_json", "show_all"):
        t[f"{reader}_flatness"] = ("<=", TARGET_FLATNESS)
    return t


# -- measuring one process ---------------------------------------------------------------

# A process's peak RSS (ru_maxrss) starts at its spawner's RSS: fork copies the address
# space, and exec records the old one's high-water mark. So each command is started by
# this small wrapper (a fresh `python -S`, about 11 MB) rather than by the benchmark's
# own, larger process; the wrapper times the command, reaps it with os.wait4 and prints
# its rusage as JSON. The wrapper's own RSS is the floor of every figure (rss_floor_mb).
_WRAPPER = """\
import json, os, signal, subprocess, sys, threading, time
mode, out, timeout, lines, cmd = sys.argv[1], sys.argv[2], float(sys.argv[3]), \\
    int(sys.argv[4]), sys.argv[5:]
killed = threading.Event()
def kill():  # os.kill, not proc.kill(): that one reaps an exited child, rusage and all
    killed.set()
    os.kill(proc.pid, signal.SIGKILL)
sink = subprocess.PIPE if mode == "head" else open(out, "wb")
t0 = time.perf_counter()
proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink)
timer = threading.Timer(timeout, kill)
timer.start()
got = 0
if mode == "head":
    while got < lines and proc.stdout.readline():
        got += 1
    seconds = time.perf_counter() - t0
    os.kill(proc.pid, signal.SIGKILL)
_, status, usage = os.wait4(proc.pid, 0)
if mode != "head":
    seconds = time.perf_counter() - t0
timer.cancel()
proc.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"s": seconds, "maxrss_kb": usage.ru_maxrss, "rc": proc.returncode,
                  "timed_out": killed.is_set(), "lines": got}))
"""


def _wrapped(mode: str, cmd: Sequence[str], timeout: float, out: str = os.devnull,
             lines: int = 0, cwd: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryFile() as err:
        done = subprocess.run([_python(), "-S", "-c", _WRAPPER, mode, out, str(timeout),
                               str(lines), *cmd],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                              cwd=cwd, timeout=timeout + 60)
        err.seek(0)
        tail = err.read()[-400:].decode(errors="replace").strip()
    try:
        r = json.loads(done.stdout)
    except ValueError:
        return {"s": None, "mb": None, "rc": None, "error": f"wrapper failed: {tail}"}
    mb = r["maxrss_kb"] * 1024 / 1e6
    if r["timed_out"]:
        error: str | None = f"timed out after {timeout:.0f} s"
    elif mode == "head":
        error = None if r["lines"] == lines else f"only {r['lines']} line(s): {tail}"
    else:
        error = f"exit {r['rc']}: {tail}" if r["rc"] != 0 else None
    return {"s": None if error else r["s"], "mb": mb, "rc": r["rc"], "error": error}


def measure(cmd: Sequence[str], timeout: float, out: str = os.devnull,
            cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` to its end, stdout to ``out``: ``{"s", "mb", "rc", "error"}``."""
    return _wrapped("run", cmd, timeout, out=out, cwd=cwd)


def measure_head(cmd: Sequence[str], lines: int, timeout: float,
                 cwd: Path | None = None) -> dict[str, Any]:
    """Time until ``lines`` lines came out of ``cmd``'s stdout pipe; then kill it."""
    return _wrapped("head", cmd, timeout, lines=lines, cwd=cwd)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs: the fastest time and the highest peak RSS."""
    times = [r["s"] for r in runs if r["s"] is not None]
    errors = [r["error"] for r in runs if r["error"]]
    if errors:  # a failed run's time and RSS mean nothing
        return {"s": None, "mb": None, "error": errors[0]}
    return {"s": min(times), "mb": max(r["mb"] for r in runs), "error": None}


# -- the traces ----------------------------------------------------------------------------

def build_trace(folder: Path, name: str, events: int) -> Path:
    """A trace of about ``events`` calls, recorded by ``tracesock run`` of the ping-pong."""
    script = folder / "pingpong.py"
    script.write_text(_PINGPONG)
    trace = folder / f"{name}.jsonl"
    rounds = max(1, events // 4)
    subprocess.run([*_tracesock(), "run", "-o", str(trace), str(script), str(rounds),
                    str(BUILD_TIMEOUT_S / 2)],
                   check=True, timeout=BUILD_TIMEOUT_S, cwd=folder,
                   stdin=subprocess.DEVNULL)
    return trace


def build_captured(folder: Path, name: str, conns: int, rounds: int) -> tuple[Path, Path]:
    """A trace of ``conns`` connections and its capture (``tracesock run --capture``)."""
    script = folder / "many.py"
    script.write_text(_MANY)
    trace, capture = folder / f"{name}.jsonl", folder / f"{name}.pcapng"
    subprocess.run([*_tracesock(), "run", "--capture-required", "--capture", str(capture),
                    "-o", str(trace), str(script), str(conns), str(rounds)],
                   check=True, timeout=BUILD_TIMEOUT_S, cwd=folder, stdin=subprocess.DEVNULL)
    return trace, capture


def measure_capture(quick: bool, repeat: int, log: Any) -> dict[str, Any]:
    """``show --capture`` (whole, and ``--sock 2``) on a small and a big captured trace:
    flat figures, or ``{"show_capture_error": why}`` when capture cannot run here."""
    f: dict[str, Any] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-readers-capture-"))
    timeout = QUICK_CMD_TIMEOUT_S if quick else CMD_TIMEOUT_S
    try:
        for size, (conns, rounds) in zip(("small", "big"), QUICK_CAPTURE_CONNECTIONS if quick
                                         else CAPTURE_CONNECTIONS, strict=True):
            try:
                trace, capture = build_captured(folder, size, conns, rounds)
            except (subprocess.SubprocessError, OSError) as exc:
                log(f"show --capture: cannot record a capture here ({exc}); left out")
                return {"show_capture_error": str(exc)[-200:]}
            tr = scan_trace(trace)
            f[f"capture_connections_{size}"] = conns
            f[f"capture_events_{size}"] = tr["calls"]
            f[f"capture_trace_mb_{size}"] = _r(tr["bytes"] / 1e6, 1)
            f[f"capture_mb_{size}"] = _r(capture.stat().st_size / 1e6, 2)
            log(f"  {size}: {conns:,} connections, {tr['calls']:,} calls, "
                f"{capture.stat().st_size / 1e6:.1f} MB of capture")
            for key, extra in (("show_capture", []), ("show_capture_sock", ["--sock", "2"])):
                r = _best([measure([*_tracesock(), "show", str(trace), "--capture",
                                    str(capture), *extra], timeout, cwd=folder)
                           for _ in range(repeat)])
                log(f"    show --capture {' '.join(extra):<8} {_fmt_run(r)}")
                f[f"{key}_s_{size}"] = _r(r["s"])
                f[f"{key}_mb_{size}"] = _r(r["mb"], 1)
                if r["error"]:
                    f[f"{key}_error_{size}"] = r["error"][-200:]
            trace.unlink()
            capture.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for key in ("show_capture", "show_capture_sock"):
        f[f"{key}_flatness"] = _ratio(f.get(f"{key}_mb_big"), f.get(f"{key}_mb_small"))
    return f


def scan_trace(path: Path) -> dict[str, int]:
    """Line count, call count and the base64 payload text's length, read line by line."""
    import orjson

    lines = calls = payload = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\0\n")
            if not line:
                continue
            lines += 1
            rec = orjson.loads(line)
            if rec.get("type") == "call":
                calls += 1
                payload += len(rec.get("data") or "")
    size = path.stat().st_size
    return {"lines": lines, "calls": calls, "bytes": size, "payload_b64_bytes": payload,
            "metadata_bytes": size - payload}


def check_against_stats(rows: list[list[Any]], summary: dict[str, Any]) -> list[str]:
    """Differences between DuckDB's (sock, op) rows and ``stats --json``'s figures."""
    per: dict[int, dict[str, int]] = {}
    for sock, op, calls, ok_calls, ok_bytes in rows:
        d = per.setdefault(sock, {"calls": 0, "sends": 0, "bytes_sent": 0,
                                  "recvs": 0, "bytes_received": 0})
        d["calls"] += calls
        if op in SEND_OPS:
            d["sends"] += ok_calls
            d["bytes_sent"] += ok_bytes
        elif op in RECV_OPS:
            d["recvs"] += ok_calls
            d["bytes_received"] += ok_bytes
    problems = []
    total = sum(d["calls"] for d in per.values())
    if total != summary["events"]:
        problems.append(f"events: duckdb {total}, stats {summary['events']}")
    if len(per) != summary["sockets"]:
        problems.append(f"sockets: duckdb {len(per)}, stats {summary['sockets']}")
    for conn in summary["connections"]:
        mine = per.get(conn["sock"], {})
        for key in ("calls", "sends", "bytes_sent", "recvs", "bytes_received"):
            if mine.get(key) != conn[key]:
                problems.append(f"sock {conn['sock']} {key}: duckdb {mine.get(key)}, "
                                f"stats {conn[key]}")
    return problems


def _tracesock_location() -> str:
    probe = subprocess.run([_python(), "-c", "import tracesock; print(tracesock.__file__)"],
                           capture_output=True, text=True, cwd=tempfile.gettempdir())
    return probe.stdout.strip() or f"not importable: {probe.stderr.strip()[-200:]}"


def _duckdb_available() -> bool:
    probe = subprocess.run([_python(), "-c", "import duckdb"], capture_output=True,
                           cwd=tempfile.gettempdir())
    return probe.returncode == 0


# -- one size ----------------------------------------------------------------------------

def measure_size(trace: Path, folder: Path, repeat: int, timeout: float, threads: int,
                 with_duckdb: bool, log: Any) -> dict[str, Any]:
    ts = _tracesock()
    py = _python()
    out: dict[str, Any] = {"trace": scan_trace(trace)}
    log(f"  {trace.name}: {out['trace']['calls']:,} calls, "
        f"{out['trace']['bytes'] / 1e6:.0f} MB")

    # Every process runs in the temp folder: `python -c` puts its working folder first on
    # sys.path, and the checkout's own tracesock/ must not shadow --pythonpath's.
    def runs(fn: Any, *args: Any, **kw: Any) -> dict[str, Any]:
        return _best([fn(*args, cwd=folder, **kw) for _ in range(repeat)])

    if with_duckdb:
        result = folder / "duckdb.json"
        out["duckdb"] = runs(measure, [py, "-c", _DUCKDB_CHILD, QUERY, str(trace),
                                       str(threads)], timeout, out=str(result))
        out["duckdb_rows"] = json.loads(result.read_text()) if out["duckdb"]["s"] else None
        log(f"    duckdb       {_fmt_run(out['duckdb'])}")
    out["stats"] = runs(measure, [*ts, "stats", str(trace)], timeout)
    log(f"    stats        {_fmt_run(out['stats'])}")
    stats_json = folder / "stats.json"
    out["stats_json"] = runs(measure, [*ts, "stats", "--json", str(trace)], timeout,
                             out=str(stats_json))
    log(f"    stats --json {_fmt_run(out['stats_json'])}")
    summary = json.loads(stats_json.read_bytes()) if out["stats_json"]["s"] else None
    if summary is not None and out.get("duckdb_rows") is not None:
        out["duckdb_vs_stats"] = check_against_stats(out["duckdb_rows"], summary)
    stats_json.unlink(missing_ok=True)
    out["show_head3"] = runs(measure_head, [*ts, "show", str(trace)], HEAD_LINES, timeout)
    log(f"    show|head -3 {_fmt_run(out['show_head3'])}")
    out["show_all"] = runs(measure, [*ts, "show", str(trace)], timeout)
    log(f"    show >null   {_fmt_run(out['show_all'])}")
    load = f"import tracesock; t = tracesock.load({str(trace)!r})"
    out["load"] = runs(measure, [py, "-c", load], timeout)
    log(f"    load()       {_fmt_run(out['load'])}")
    out["import_only"] = runs(measure, [py, "-c", "import tracesock"], 60)
    out["rss_floor"] = runs(measure, [shutil.which("true") or "/bin/true"], 60)
    return out


def _fmt_run(r: dict[str, Any]) -> str:
    if r["error"]:
        return f"FAILED ({r['error']})"
    return f"{r['s']:8.3f} s  {r['mb']:8.1f} MB peak RSS"


# -- figures -------------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def figures(sizes: dict[str, dict[str, Any]], threads: int, with_duckdb: bool,
            ) -> dict[str, Any]:
    f: dict[str, Any] = {"name": "readers", "duckdb_query": " ".join(QUERY.split()),
                         "duckdb_threads": threads or "default",
                         "tracesock": _tracesock_location()}
    agree = True
    for size, m in sizes.items():
        tr = m["trace"]
        f[f"events_{size}"] = tr["calls"]
        f[f"trace_mb_{size}"] = _r(tr["bytes"] / 1e6, 1)
        f[f"metadata_mb_{size}"] = _r(tr["metadata_bytes"] / 1e6, 1)
        f[f"payload_b64_mb_{size}"] = _r(tr["payload_b64_bytes"] / 1e6, 1)
        for reader in ("duckdb", "stats", "stats_json", "show_head3", "show_all", "load",
                       "import_only", "rss_floor"):
            if reader in m:
                f[f"{reader}_s_{size}"] = _r(m[reader]["s"])
                f[f"{reader}_mb_{size}"] = _r(m[reader]["mb"], 1)
                if m[reader]["error"]:
                    f[f"{reader}_error_{size}"] = m[reader]["error"][-200:]
        duck = m.get("duckdb", {}).get("s")
        f[f"stats_to_duckdb_{size}"] = _ratio(m["stats"]["s"], duck)
        f[f"stats_json_to_duckdb_{size}"] = _ratio(m["stats_json"]["s"], duck)
        stats_s = m["stats"]["s"]
        f[f"stats_events_per_s_{size}"] = round(tr["calls"] / stats_s) if stats_s else None
        load_mb = m["load"]["mb"]
        f[f"load_to_metadata_{size}"] = (None if load_mb is None
                                         else _ratio(load_mb * 1e6, tr["metadata_bytes"]))
        # The same less the interpreter's own floor (`python -c 'import tracesock'`).
        floor_mb = m["import_only"]["mb"]
        f[f"load_net_to_metadata_{size}"] = (
            None if load_mb is None or floor_mb is None
            else _ratio((load_mb - floor_mb) * 1e6, tr["metadata_bytes"]))
        problems = m.get("duckdb_vs_stats")
        if problems is None:
            agree = False
        elif problems:
            agree = False
            f[f"duckdb_vs_stats_{size}"] = problems[:5]
    for reader in ("stats", "stats_json", "show_all", "show_head3", "load", "duckdb"):
        if f"{reader}_mb_small" in f:
            f[f"{reader}_flatness"] = _ratio(f[f"{reader}_mb_big"], f[f"{reader}_mb_small"])
    f["duckdb_agrees"] = agree if with_duckdb else None
    bounds = targets()
    f["unmeasured"] = sum(1 for key in bounds if key != "unmeasured" and f.get(key) is None)
    return f


def verdicts(f: dict[str, Any]) -> list[tuple[str, Any, str, str]]:
    rows = []
    for key, (op, bound) in targets().items():
        value = f.get(key)
        if value is None:
            verdict = "MISS (not measured)"
        else:
            ok = value <= bound if op == "<=" else value >= bound
            verdict = "PASS" if ok else "MISS"
        rows.append((key, value, f"{op} {bound:g}", verdict))
    return rows


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(quick: bool = False, repeat: int = 1, duckdb_threads: int = 0,
        log: Any = None, capture: bool = True) -> dict[str, Any]:
    """The figures for bench/run.py (flat; the verdicts come from ``targets()``)."""
    log = log or _log
    events = QUICK_EVENTS if quick else FULL_EVENTS
    timeout = QUICK_CMD_TIMEOUT_S if quick else CMD_TIMEOUT_S
    with_duckdb = _duckdb_available()
    if not with_duckdb:
        log("duckdb is not installed in the venv (pip install duckdb): no baseline")
    sizes: dict[str, dict[str, Any]] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    try:
        for size, n in zip(("small", "big"), events, strict=True):
            t0 = time.perf_counter()
            trace = build_trace(folder, size, n)
            log(f"{size}: recorded {n:,} calls' worth in {time.perf_counter() - t0:.1f} s")
            sizes[size] = measure_size(trace, folder, repeat, timeout, duckdb_threads,
                                       with_duckdb, log)
            trace.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    f = figures(sizes, duckdb_threads, with_duckdb)
    if capture:
        log("show --capture: recording traces with captures")
        f.update(measure_capture(quick, repeat, log))
    return f


def report_capture(f: dict[str, Any]) -> None:
    if "show_capture_error" in f:
        print(f"show --capture: not measured ({f['show_capture_error']})")
        return
    if "show_capture_flatness" not in f:
        return
    print(f"show --capture: {f['capture_connections_small']:,} connections "
          f"({f['capture_events_small']:,} calls, {f['capture_mb_small']} MB of capture) and "
          f"{f['capture_connections_big']:,} ({f['capture_events_big']:,} calls, "
          f"{f['capture_mb_big']} MB)")
    for key, label in (("show_capture", "whole"), ("show_capture_sock", "--sock 2")):
        flat = f.get(f"{key}_flatness")
        print(f"  {label:<9} peak RSS {f.get(f'{key}_mb_small')} MB -> "
              f"{f.get(f'{key}_mb_big')} MB: {'-' if flat is None else f'{flat:.2f}x'}, "
              f"time {f.get(f'{key}_s_small')} s -> {f.get(f'{key}_s_big')} s")


def report(f: dict[str, Any]) -> None:
    def s(key: str) -> str:
        v = f.get(key)
        return "-" if v is None else f"{v:.3f} s"

    def mb(key: str) -> str:
        v = f.get(key)
        return "-" if v is None else f"{v:.1f} MB"

    print(f"tracesock measured: {f['tracesock']}")
    print(f"traces: {f['events_small']:,} calls ({f['trace_mb_small']} MB, metadata "
          f"{f['metadata_mb_small']} MB) and {f['events_big']:,} calls "
          f"({f['trace_mb_big']} MB, metadata {f['metadata_mb_big']} MB)")
    print(f"{'reader':<14} {'time small':>11} {'time big':>11} {'RSS small':>11} "
          f"{'RSS big':>11} {'RSS big/small':>13}")
    for reader, label in (("duckdb", "duckdb"), ("stats", "stats"),
                          ("stats_json", "stats --json"), ("show_head3", "show|head -3"),
                          ("show_all", "show >null"), ("load", "load()"),
                          ("import_only", "import only")):
        flat = f.get(f"{reader}_flatness")
        print(f"{label:<14} {s(f'{reader}_s_small'):>11} {s(f'{reader}_s_big'):>11} "
              f"{mb(f'{reader}_mb_small'):>11} {mb(f'{reader}_mb_big'):>11} "
              f"{'-' if flat is None else f'{flat:.2f}x':>13}")
    print(f"peak RSS floor (the measuring wrapper's own): {mb('rss_floor_mb_big')}")
    print(f"stats: {f.get('stats_events_per_s_big') or '-'} calls/s at the big size; load() "
          f"peak RSS less the import's: {f.get('load_net_to_metadata_big') or '-'}x the "
          f"call metadata")
    print(f"DuckDB query (threads: {f['duckdb_threads']}): {f['duckdb_query']}")
    report_capture(f)
    for size in ("small", "big"):
        for problem in f.get(f"duckdb_vs_stats_{size}", ()):
            print(f"  DuckDB vs stats --json ({size}): {problem}")
    print()
    for key, value, bound, verdict in verdicts(f):
        shown = "-" if value is None else (f"{value:.3g}" if isinstance(value, float)
                                           else str(value))
        print(f"{verdict:<5} {key:<26} {shown:>10}  (target {bound})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EVENTS[0]:,} and {QUICK_EVENTS[1]:,} calls "
                             f"instead of {FULL_EVENTS[0]:,} and {FULL_EVENTS[1]:,}")
    parser.add_argument("--json", action="store_true",
                        help="print the figures and verdicts as JSON on stdout")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each measurement N times: fastest time, highest RSS")
    parser.add_argument("--duckdb-threads", type=int, default=0, metavar="N",
                        help="DuckDB's thread count (default: DuckDB's own, the cores)")
    parser.add_argument("--pythonpath", metavar="DIR",
                        help="measure the tracesock package in DIR (PYTHONPATH of every "
                             "process run here)")
    parser.add_argument("--capture-only", action="store_true",
                        help="only the show --capture figures (root: it sniffs loopback)")
    parser.add_argument("--no-capture", action="store_true",
                        help="leave the show --capture figures out")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="also write the JSON document to FILE")
    args = parser.parse_args(argv)
    if args.pythonpath:
        os.environ["PYTHONPATH"] = os.path.abspath(args.pythonpath)
    if args.capture_only:
        f = measure_capture(args.quick, max(1, args.repeat), _log)
        f["tracesock"] = _tracesock_location()
        if args.json:
            print(json.dumps(f, indent=2))
        else:
            print(f"tracesock measured: {f['tracesock']}")
            report_capture(f)
        return 0
    f = run(quick=args.quick, repeat=max(1, args.repeat), duckdb_threads=args.duckdb_threads,
            capture=not args.no_capture)
    doc = {"figures": f, "targets": {k: list(v) for k, v in targets().items()},
           "verdicts": {k: v for k, _, _, v in verdicts(f)}}
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        report(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
