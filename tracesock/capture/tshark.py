"""``tracesock analyze CAPTURE``: run tshark, analyse its rows (analysis.py), print them.

tshark is found on PATH or where pyshark's own discovery looks; it runs once as
``tshark -T fields``, and its lines are parsed as they come, with a progress bar on a
terminal for big files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator

from ..trace.progress import ProgressBar
from .analysis import (
    ANALYSIS_FLAGS,
    COMMENT_FIELDS,
    FIELDS,
    FIN,
    PROGRESS_MIN_BYTES,
    RST,
    SYN,
    TSHARK_PACKAGE,
    AnalysisError,
    CaptureAnalysis,
    Direction,
    Handshake,
    PacketRow,
    StreamAnalysis,
    Teardown,
    TsharkMissing,
    analyze,
    analyze_stream,
    endpoint_text,
    parse_row,
    to_json,
)

# -- rendering ------------------------------------------------------------------------------

def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3f} ms"


def _row_line(r: PacketRow, s: StreamAnalysis) -> str:
    arrow = "->" if r.src == s.client else "<-"
    flags = f"  [{', '.join(r.analysis)}]" if r.analysis else ""
    comment = f"  # {r.comment}" if r.comment else ""
    return (f"    #{r.frame:<6} {(r.time - s.start) * 1000:9.3f} ms {arrow} {r.flag_names:<12} "
            f"seq={r.seq} ack={r.ack} len={r.length}{flags}{comment}")


def format_analysis(result: CaptureAnalysis, *, max_rows: int = 40) -> Iterator[str]:
    """Human-readable report; streams with more than ``max_rows`` segments list only the
    handshake, FIN/RST and flagged segments."""
    yield (f"{result.path}: {result.packets} frames, {result.tcp_packets} TCP, "
           f"{len(result.streams)} streams")
    for s in result.streams:
        yield ""
        yield (f"stream {s.stream}: {endpoint_text(s.client)} -> "
               f"{endpoint_text(s.server)}, {s.packets} segments in {_ms(s.duration)}")
        hs = s.handshake
        if hs is None:
            yield "  handshake: not captured (the stream started before the capture)"
        else:
            state = "complete" if hs.complete else "incomplete"
            yield (f"  handshake: {state}, opened by {endpoint_text(hs.opener)} "
                   f"(SYN #{hs.syn_frame}); SYN->SYN/ACK {_ms(hs.rtt)}, "
                   f"SYN->ACK (iRTT) {_ms(hs.initial_rtt)}")
            yield (f"    options: {endpoint_text(hs.opener)} MSS={hs.opener_mss} "
                   f"wscale={hs.opener_wscale}; {endpoint_text(hs.listener)} MSS={hs.listener_mss} "
                   f"wscale={hs.listener_wscale}")
        for d in s.directions:
            again = f", {d.retransmitted_bytes} sent again" if d.retransmitted_bytes else ""
            yield (f"  data {endpoint_text(d.src)} -> {endpoint_text(d.dst)}: {d.bytes} bytes in "
                   f"{d.data_segments} data segments ({d.segments} segments in all{again})")
        yield f"  teardown: {_teardown_text(s)}"
        if s.analysis_flags:
            counts = ", ".join(f"{k} x{v}" for k, v in s.analysis_flags.items())
            yield f"  tcp.analysis: {counts}"
            if "lost_segment" in s.analysis_flags and \
                    not any(d.data_segments for d in s.directions):
                yield ("    (this capture has no data segments: tracesock keeps SYN/FIN/RST "
                       "unless run with --capture-all, so tshark counts the data as lost)")
        else:
            yield "  tcp.analysis: no flags"
        show_all = len(s.rows) <= max_rows
        for r in s.rows:
            if show_all or r.flags & (SYN | FIN | RST) or r.analysis:
                yield _row_line(r, s)
        if not show_all:
            yield f"    ({len(s.rows)} segments; only SYN/FIN/RST and flagged ones listed)"


def _teardown_text(s: StreamAnalysis) -> str:
    t = s.teardown
    if t.kind == "rst":
        if s.refused:
            return (f"refused: {endpoint_text(t.reset_by)} answered the SYN with RST "
                    f"(#{t.rst_frame})")
        return f"reset by {endpoint_text(t.reset_by)} (RST #{t.rst_frame}); no TIME_WAIT"
    if t.kind == "open":
        return "no FIN or RST captured (still open when the capture ended)"
    if t.kind == "half":
        return (f"half-closed: {endpoint_text(t.active_closer)} sent FIN #{t.fin_frames[0]}, "
                f"{endpoint_text(t.passive_closer)} did not (yet)")
    if t.simultaneous:
        return (f"simultaneous close (FINs #{t.fin_frames[0]} and #{t.fin_frames[1]} "
                "crossed): both sides end in TIME_WAIT")
    return (f"active close by {endpoint_text(t.active_closer)} (first FIN #{t.fin_frames[0]}), "
            f"passive close by {endpoint_text(t.passive_closer)} (FIN #{t.fin_frames[1]}); "
            f"{endpoint_text(t.time_wait[0])} ends in TIME_WAIT")


# -- running tshark ---------------------------------------------------------------------------


def _pyshark_discovery() -> str | None:
    """Where pyshark's own discovery (PATH and the usual install folders) finds tshark."""
    try:
        from pyshark.tshark.tshark import get_process_path  # lazy: optional dependency

        found = str(get_process_path())
    except Exception:
        return None
    return found if os.path.isfile(found) else None


def find_tshark(which: Callable[[str], str | None] = shutil.which,
                discover: Callable[[], str | None] = _pyshark_discovery) -> str:
    """The tshark executable: on PATH, else where pyshark's discovery finds it."""
    found = which("tshark") or discover()
    if found:
        return found
    raise TsharkMissing("analyze needs tshark, which is not installed "
                        f"(Debian/Ubuntu: apt-get install {TSHARK_PACKAGE})")


def tshark_command(tshark: str, path: str, comment_field: str | None) -> list[str]:
    cmd = [tshark, "-n", "-r", path, "-T", "fields", "-E", "separator=/t",
           "-E", "occurrence=f", "-o", "tcp.relative_sequence_numbers:TRUE",
           "-o", "tcp.analyze_sequence_numbers:TRUE"]
    for f in FIELDS + ((comment_field,) if comment_field else ()):
        cmd += ["-e", f]
    return cmd


Progress = Callable[[int], None]


def tshark_rows(path: str, *, progress: Progress | None = None) -> Iterator[list[str]]:
    """Run tshark on ``path`` and yield each frame's fields; ``progress(bytes)`` is told
    about how many bytes of the file have been read (about: frame sizes plus block
    overhead)."""
    if not os.path.isfile(path):
        raise AnalysisError(f"analyze: cannot read {path!r}: no such file")
    tshark = find_tshark(shutil.which, _pyshark_discovery)
    for comment in (*COMMENT_FIELDS, None):
        proc = subprocess.Popen(tshark_command(tshark, path, comment), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                errors="replace")
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        if not first:
            err = proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
            if comment is not None and "aren't valid" in err and comment in err:
                continue  # this tshark names the comment field differently
            if proc.returncode != 0:
                reason = _tshark_reason(err)
                raise AnalysisError(f"analyze: tshark cannot read {path!r}: {reason}")
            return  # an empty capture
        yield from _stream(first, proc, progress)
        return


def _stream(first: str, proc: subprocess.Popen[str], progress: Progress | None
            ) -> Iterator[list[str]]:
    assert proc.stdout is not None and proc.stderr is not None
    done = 0
    try:
        for n, line in enumerate(_chain(first, proc.stdout)):
            fields = line.rstrip("\n").split("\t")
            if progress is not None:
                done += int(fields[2] or 0) + 32
                if n % 1000 == 0:
                    progress(done)
            yield fields
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        if proc.wait() != 0:
            raise AnalysisError(f"analyze: tshark failed: {_tshark_reason(err)}")


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _tshark_reason(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines()
             if ln.strip() and "dangerous" not in ln and not ln.startswith("Running as")]
    return " ".join(lines) or "unknown error"


def analyze_file(path: str, *, progress: Progress | None = None) -> CaptureAnalysis:
    """Run tshark on a capture and analyse it."""
    return analyze((parse_row(f) for f in tshark_rows(path, progress=progress)), path)


def cli(args: argparse.Namespace) -> int:
    """``tracesock analyze CAPTURE [--json]``."""
    path: str = args.capture
    bar = None
    if sys.stderr.isatty() and os.path.isfile(path) and \
            os.path.getsize(path) >= PROGRESS_MIN_BYTES:
        bar = ProgressBar(os.path.getsize(path), sys.stderr)
    try:
        result = analyze_file(path, progress=bar)
    finally:
        if bar is not None:
            bar.finish()
    if args.json:
        print(json.dumps(to_json(result), indent=2, ensure_ascii=False))
    else:
        for line in format_analysis(result):
            print(line)
    return 0


__all__ = [
    "ANALYSIS_FLAGS",
    "FIELDS",
    "AnalysisError",
    "CaptureAnalysis",
    "Direction",
    "Handshake",
    "PacketRow",
    "StreamAnalysis",
    "Teardown",
    "TsharkMissing",
    "analyze",
    "analyze_file",
    "analyze_stream",
    "find_tshark",
    "format_analysis",
    "parse_row",
    "to_json",
    "tshark_rows",
]
