"""``make bench``: every benchmark of tracesock, one table, ``bench/results.json``.

Each ``bench/bench_*.py`` listed in ``SUITES`` exposes ``run(quick: bool = False) ->
dict`` (flat figures) and may expose ``targets() -> {figure: (op, bound)}`` with op
``"<="`` or ``">="``. A suite whose file does not exist yet is skipped with a note; one
that fails is reported as failed and the others still run. The table prints each
figure with its target beside it, ``MISSED`` where it misses; the exit status is 0
either way (a benchmark reports, it does not gate: noisy machines would make it flaky).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SUITES = ("bench_core", "bench_capture", "bench_replay", "bench_analysis", "bench_readers")
Target = tuple[str, float]


def _load(name: str) -> ModuleType | None:
    path = HERE / f"{name}.py"
    if not path.exists():
        return None
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))  # the tracesock package of this checkout
    spec = importlib.util.spec_from_file_location(f"bench.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _targets(module: ModuleType, figures: dict[str, Any]) -> dict[str, Target]:
    found = getattr(module, "targets", None)
    targets = dict(found()) if callable(found) else dict(getattr(module, "TARGETS", {}))
    # Suites that report their bound as a figure instead of through targets().
    inferred = {"capture_ratio": ("<=", "target"), "events_per_s": (">=", "target_events_per_s")}
    for key, (op, bound_key) in inferred.items():
        bound = figures.get(bound_key)
        if key in figures and key not in targets and isinstance(bound, (int, float)):
            targets[key] = (op, float(bound))
    # A suite's own verdict ("ok": False, "meets_target": False) counts as a miss too.
    for key in ("ok", "meets_target"):
        if isinstance(figures.get(key), bool):
            targets.setdefault(key, (">=", 1))
    return targets


def _verdict(value: Any, target: Target | None) -> str:
    if target is None or not isinstance(value, (int, float)):
        return ""
    op, bound = target
    ok = value <= bound if op == "<=" else value >= bound
    return "" if ok else "MISSED"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


_WIDE = 24  # longer values go to the notes under the table


def run_all(quick: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"quick": quick, "python": platform.python_version(),
                              "machine": platform.machine(), "started": time.time(),
                              "suites": {}}
    for name in SUITES:
        entry: dict[str, Any]
        module = _load(name)
        if module is None:
            entry = {"status": "skipped", "note": f"bench/{name}.py does not exist yet"}
        else:
            print(f"running {name}{' (quick)' if quick else ''}...", file=sys.stderr,
                  flush=True)
            t0 = time.perf_counter()
            try:
                figures = module.run(quick=quick)
            except Exception as exc:
                traceback.print_exc()
                entry = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
            else:
                targets = _targets(module, figures)
                entry = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1),
                         "figures": figures,
                         "targets": {k: list(v) for k, v in targets.items()},
                         "missed": [k for k, v in figures.items()
                                    if _verdict(v, targets.get(k))]}
        report["suites"][name] = entry
    return report


def print_table(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    for name, entry in report["suites"].items():
        if entry["status"] != "ok":
            rows.append((name, entry["status"], "", entry["note"]))
            continue
        targets = entry["targets"]
        for key, value in entry["figures"].items():
            target = targets.get(key)
            text = _fmt(value)
            if len(text) > _WIDE:
                notes.append(f"{name}.{key}: {text}")
                continue
            rows.append((f"{name}.{key}", text,
                         f"{target[0]} {target[1]:g}" if target else "",
                         _verdict(value, tuple(target) if target else None)))
    widths = [max(len(r[i]) for r in [("figure", "value", "target", ""), *rows])
              for i in range(3)]
    header = ("figure", "value", "target", "")
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
              .rstrip())
    for note in notes:
        print(note)
    missed = sum(len(e.get("missed", ())) for e in report["suites"].values())
    print(f"\n{missed} target(s) missed" if missed else "\nall targets met")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run tracesock's benchmarks.")
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("-o", "--output", default=str(HERE / "results.json"),
                        help="where the JSON results go (default: bench/results.json)")
    args = parser.parse_args(argv)
    report = run_all(args.quick)
    print_table(report)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
