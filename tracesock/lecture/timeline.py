"""The timeline of ``tracesock show TRACE --capture CAP``: calls and captured segments in
one time order, each segment tagged with the calls behind it (capture/join.py joins them).

Theory of operation. ``render`` lays out a loaded Trace; ``stream_with_capture`` gives the
same lines for a trace of any size, in up to four streaming passes over the file that
never hold its calls:

1. ``capture.setups.scan``: each socket's set-up (what the join needs: a few calls per
   socket, its failures, and the byte offsets of its sends and recvs only when the
   capture has data segments), then the join, with the capture's segments. With
   ``--sock``, a light scan first finds the connections drawn, and only their set-ups
   are kept.
2. Only when the join left sends and recvs unlabelled, or ``keep`` (show's filters)
   decides which segments stay: the calls the segments name, looked up by seq (no
   CallEvent built for the others), for their labels and ``keep``'s verdict. A segment
   is shown when one of its calls is; the calls it names are proportional to the
   capture.
3. The calls again, through show's reorder window (``in_start_order``), merged with the
   segments kept: each segment goes out once a call that starts after it comes.

The lines are render()'s as long as the reorder window holds (show.REORDER_WINDOW).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterator, Sequence

from ..capture.join import (
    JoinedSegment,
    drawn_sockets,
    epoch_of,
    header_epoch,
    join,
    join_setups,
    load_segments,
    resolve,
    unlabelled,
)
from ..capture.segments import Segment
from ..capture.setups import named_calls, scan
from ..trace.events import CallEvent, call_label, format_addr
from ..trace.reader import Trace, TraceReader
from .show import EventFilter, format_call, in_start_order


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


def _is_data(seg: Segment) -> bool:
    return seg.length > 0 and not (seg.flags & 0x02 or seg.is_rst or seg.is_fin)


def stream_with_capture(path: str, capture_path: str,
                        keep: Callable[[CallEvent], bool] | None = None,
                        ) -> tuple[list[str], Iterator[str]]:
    """``render_with_capture``'s lines for the trace at ``path``, streamed: the reader's
    warnings (known once the first pass is over, before any line), and the lines."""
    TraceReader(path).close()  # a trace that is not one is named before the capture
    segments = load_segments(capture_path, lean=True)
    moves = any(_is_data(s) for s in segments)
    only: set[int] | None = None
    any_joined = True
    if isinstance(keep, EventFilter) and keep.socks is not None:
        # Some sockets: the set-ups of their connections only (setups.py says why two).
        header, setups, _ = scan(path, False, light=True)
        only, any_joined = drawn_sockets(setups, header_epoch(path, header), segments,
                                         keep.socks)
        del setups
    header, setups, warnings = scan(path, moves, only)
    epoch = header_epoch(path, header)
    joined = join_setups(setups, epoch, segments, keep_all=True)
    del setups, segments
    if only is None:
        any_joined = bool(joined)
    lead = [] if any_joined else [f"(no segment in {capture_path} belongs to a TCP "
                                  f"connection of {path})"]
    if keep is not None or unlabelled(joined):
        labels, kept = named_calls(path, {ref.seq for js in joined for ref in js.calls},
                                   keep)
        joined = resolve(joined, labels)
        if keep is not None:
            joined = [js for js in joined if any(ref.seq in kept for ref in js.calls)]
    return warnings, _merged(path, epoch, joined, keep, lead)


def _merged(path: str, epoch: float, joined: list[JoinedSegment],
            keep: Callable[[CallEvent], bool] | None, lead: list[str]) -> Iterator[str]:
    yield from lead
    spans: dict[int, list[float]] = {}  # call seq -> times of its segments
    for js in joined:
        for ref in js.calls:
            spans.setdefault(ref.seq, []).append(js.segment.time)
    segs = [(js.segment.time - epoch, 1, i, format_segment(js)) for i, js in enumerate(joined)]
    segs.reverse()  # popped from the end, earliest first
    del joined
    later: list[tuple[float, int, int, str]] = []  # returns of calls shown twice
    reader = TraceReader(path)
    try:
        evs = filter(keep, reader) if keep is not None else iter(reader)
        for ev in in_start_order(evs):
            start = epoch + ev.t
            spanning = any(start < t < start + ev.dur for t in spans.get(ev.seq, ()))
            if spanning:
                item = (ev.t, 0, ev.seq, f"sock {ev.sock:<3} {call_label(ev)} ...")
                heapq.heappush(later, (ev.t + ev.dur, 2, ev.seq, f"{format_call(ev)}  "
                                       f"(returned after {ev.dur * 1000:.3f} ms)"))
            else:
                item = (ev.t, 0, ev.seq, format_call(ev))
            while True:
                if segs and segs[-1][:3] < item[:3] and \
                        (not later or segs[-1][:3] < later[0][:3]):
                    yield _stamped(segs.pop())
                elif later and later[0][:3] < item[:3]:
                    yield _stamped(heapq.heappop(later))
                else:
                    break
            yield _stamped(item)
    finally:
        reader.close()
    for one in heapq.merge(reversed(segs), sorted(later)):
        yield _stamped(one)


def _stamped(item: tuple[float, int, int, str]) -> str:
    return f"{item[0] * 1000:10.3f} ms  {item[3]}"


__all__ = ["format_segment", "render", "render_with_capture", "stream_with_capture"]
