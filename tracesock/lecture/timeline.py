"""The timeline of ``tracesock show TRACE --capture CAP``: calls and captured segments in
one time order, each segment tagged with the calls behind it (capture/join.py joins them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

from ..capture.join import JoinedSegment, epoch_of, join, load_segments
from ..trace.events import CallEvent, call_label, format_addr
from ..trace.reader import Trace
from .show import format_call


def format_segment(js: JoinedSegment) -> str:
    """``SYN ->  seq=0 ack=0 len=0  127.0.0.1:5000 > 127.0.0.1:7  [sock 1 connect(...)]``."""
    seg = js.segment
    arrow = f"{seg.flag_names} ->" if js.outbound else f"<- {seg.flag_names}"
    line = (f"    {arrow:<16} seq={seg.rel_seq} ack={seg.rel_ack} len={seg.length}  "
            f"{format_addr(seg.src)} > {format_addr(seg.dst)}")
    return f"{line}  [{js.comment}]" if js.calls else line


def render(trace: Trace, joined: Sequence[JoinedSegment]) -> Iterator[str]:
    """Calls and segments in one time order, in milliseconds since the trace began.

    A call during which one of its own segments crossed the wire is shown twice: where
    it started (``...``) and where it returned, so the segments sit in between.
    """
    epoch = epoch_of(trace)
    spanning: set[int] = set()
    by_seq = {ev.seq: ev for ev in trace.events}
    for js in joined:
        for ref in js.calls:
            ev = by_seq.get(ref.seq)
            if ev is not None and epoch + ev.t < js.segment.time < epoch + ev.t + ev.dur:
                spanning.add(ev.seq)
    items: list[tuple[float, int, int, str]] = []
    for ev in trace.events:
        if ev.seq in spanning:
            items.append((ev.t, 0, ev.seq, f"sock {ev.sock:<3} {call_label(ev)} ..."))
            items.append((ev.t + ev.dur, 2, ev.seq,
                          f"{format_call(ev)}  (returned after {ev.dur * 1000:.3f} ms)"))
        else:
            items.append((ev.t, 0, ev.seq, format_call(ev)))
    for i, js in enumerate(joined):
        items.append((js.segment.time - epoch, 1, i, format_segment(js)))
    items.sort(key=lambda item: item[:3])
    for t, _, _, text in items:
        yield f"{t * 1000:10.3f} ms  {text}"


def render_with_capture(trace: Trace, capture_path: str,
                        keep: Callable[[CallEvent], bool] | None = None) -> Iterator[str]:
    """The ``tracesock show TRACE --capture CAP`` timeline: calls and segments interleaved.
    ``keep`` (show's filters) keeps some calls, and the segments joined to them."""
    joined = join(trace, load_segments(capture_path), keep_all=True)
    if not joined:
        yield (f"(no segment in {capture_path} belongs to a TCP connection of "
               f"{trace.path})")
    if keep is not None:
        trace = dataclasses.replace(trace, events=[ev for ev in trace.events if keep(ev)])
        seqs = {ev.seq for ev in trace.events}
        joined = [js for js in joined if any(ref.seq in seqs for ref in js.calls)]
    yield from render(trace, joined)


__all__ = ["format_segment", "render", "render_with_capture"]
