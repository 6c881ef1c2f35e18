"""Ladder (sequence) diagrams of a trace, with its capture: text, Mermaid and SVG.

Theory of operation. ``build_ladder`` turns a trace (and, when there is one, the
capture's segments joined with their calls by ``timeline.join``) into a
:class:`Ladder`: plain data, one column per endpoint keyed by ``address:port``, and
rows in time order. The renderers only lay that data out.

* One column per endpoint, not per host: a loopback connection has two columns
  (127.0.0.1:43044 and 127.0.0.1:7), where Wireshark's flow graph, keyed by address,
  draws one. A listening socket and the sockets it accepted share their column.
* With a capture each segment is an arrow carrying its flags, relative seq/ack and
  length; the calls behind it are written beside it, on the side of the socket that
  made them: ``connect()`` at the SYN (and where it returns, at the SYN/ACK),
  ``accept()`` returning at the final ACK of the handshake, ``shutdown``/``close`` at
  their FIN, the ``recv`` that returned 0 at the peer's FIN, sends and recvs at the
  data segments they carried. Calls with no segment of their own (the second of four
  recvs that emptied one segment) are notes on their column at their own time.
* Without a capture the calls alone are drawn: connect and sends as arrows towards the
  peer with their byte counts, recvs as arrows only when the peer is not traced
  (otherwise the peer's send already drew that arrow), everything else as notes.

The SVG is standalone (inline styles, no fonts or scripts fetched) so that a browser
opens it and a slide embeds it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from .errors import UsageError
from .events import CallEvent, format_addr
from .segments import Endpoint
from .show import call_label
from .timeline import JoinedSegment, join, load_segments
from .tracefile import Connection, Trace, load

_QUIET_OPS = frozenset({"socket", "settimeout", "setblocking", "setsockopt", "getsockopt",
                        "getsockname", "getpeername", "fileno", "detach", "dup"})


@dataclass(frozen=True, slots=True)
class Column:
    """An endpoint: ``127.0.0.1:7``, and which traced sockets live there."""

    key: str
    subtitle: str


@dataclass(frozen=True, slots=True)
class Arrow:
    """A segment (or, without capture, a call) from one column to another."""

    t: float  # seconds since the trace began
    src: int
    dst: int
    label: str
    role: str  # handshake, data, ack, fin, fin-ack, rst, call
    src_notes: tuple[str, ...] = ()
    dst_notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Note:
    """A call with no arrow of its own, on its column."""

    t: float
    col: int
    text: str


Row = Arrow | Note


@dataclass(frozen=True, slots=True)
class Ladder:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    captured: bool = False


# -- building -----------------------------------------------------------------------------


def _specific(addr: Any) -> str | None:
    """``host:port`` of an address with a real host and port, else None."""
    if not isinstance(addr, tuple) or len(addr) < 2 or not addr[1]:
        return None
    try:
        if ipaddress.ip_address(str(addr[0]).split("%", 1)[0]).is_unspecified:
            return None
    except ValueError:
        pass
    return format_addr(addr)


def _ep_key(ep: Endpoint) -> str:
    return format_addr(ep)


def _stream_conns(trace: Trace) -> list[Connection]:
    return [c for c in trace.connections.values()
            if c.kind in (None, "SOCK_STREAM") and c.family in ("AF_INET", "AF_INET6")
            and any(e.op != "socket" for e in c.events)]


def _sock_keys(conns: Sequence[Connection], joined: Sequence[JoinedSegment]) -> dict[int, str]:
    keys: dict[int, str] = {}
    for c in conns:
        k = _specific(c.laddr)
        if k is not None:
            keys[c.sock] = k
    for c in conns:  # a listener on 0.0.0.0 lives where its accepted sockets do
        if c.parent is not None and c.parent not in keys and c.sock in keys:
            keys[c.parent] = keys[c.sock]
    for js in joined:  # a refused connect's port is only known from its SYN
        if js.segment.is_syn:
            for ref in js.calls:
                keys.setdefault(ref.sock, _ep_key(js.segment.src))
    for c in conns:
        keys.setdefault(c.sock, f"sock {c.sock}")
    return keys


def _columns(conns: Sequence[Connection], keys: dict[int, str],
             joined: Sequence[JoinedSegment]) -> list[str]:
    order: list[str] = []

    def add(k: str | None) -> None:
        if k is not None and k not in order:
            order.append(k)

    for c in conns:
        if c.role == "client":
            add(keys[c.sock])
            add(_specific(c.raddr))
    for c in conns:
        add(keys[c.sock])
        add(_specific(c.raddr))
    for js in joined:
        add(_ep_key(js.segment.src))
        add(_ep_key(js.segment.dst))
    return order


def _subtitles(conns: Sequence[Connection], keys: dict[int, str]) -> dict[str, str]:
    roles = {"client": "client", "server": "accepted", "listener": "listening"}
    at: dict[str, list[str]] = {}
    for c in conns:
        at.setdefault(keys[c.sock], []).append(f"sock {c.sock} {roles.get(c.role, c.role)}")
    return {k: ", ".join(v) for k, v in at.items()}


def call_text(ev: CallEvent) -> str:
    """A call as a diagram note: ``sock 2 recv(1024) = 20``."""
    op = ev.op
    head = f"sock {ev.sock} "
    if ev.error is not None:
        return f"{head}{op}() -> {ev.error.type}"
    if op in ("connect", "connect_ex"):
        return f"{head}{op}()"
    if op == "accept":
        return f"{head}accept() = sock {ev.extra.get('accepted', '?')}"
    if ev.is_recv:
        size = ev.args.get("bufsize") or ev.args.get("nbytes") or ""
        tail = " (EOF)" if ev.nbytes == 0 else ""
        return f"{head}{op}({size}) = {ev.nbytes}{tail}"
    if ev.is_send:
        return f"{head}{op}() = {ev.nbytes}"
    return head + call_label(ev)


def _segment_label(js: JoinedSegment) -> str:
    s = js.segment
    return f"{s.flag_names} seq={s.rel_seq} ack={s.rel_ack} len={s.length}"


def _segment_rows(trace: Trace, joined: Sequence[JoinedSegment], keys: dict[int, str],
                  col: dict[str, int]) -> tuple[list[Row], set[int]]:
    epoch = float(trace.header.extra.get("epoch", 0.0))
    by_seq = {ev.seq: ev for ev in trace.events}
    where: dict[int, list[int]] = {}  # call seq -> indices of its segments
    for i, js in enumerate(joined):
        for ref in js.calls:
            where.setdefault(ref.seq, []).append(i)
    notes: dict[int, list[tuple[int, str]]] = {}  # segment index -> (sock, text)
    shown: set[int] = set()
    for seq, idx in where.items():
        ev = by_seq.get(seq)
        if ev is None or ev.sock not in keys:
            continue
        home = keys[ev.sock]
        text = call_text(ev)
        if ev.is_recv:
            # Drawn at the segment only if it was waiting for it; a recv called later
            # (the data had long arrived) is a note at its own time.
            seg = joined[idx[0]].segment
            if _ep_key(seg.dst) != home or epoch + ev.t > seg.time:
                continue
        shown.add(seq)
        if ev.op == "accept":
            done = [i for i in idx if joined[i].role == "handshake"] or idx
            new = ev.extra.get("accepted", "?")
            notes.setdefault(done[-1], []).append(
                (ev.sock, f"sock {ev.sock} accept() returns sock {new}"))
            continue
        spans = ev.op.startswith("connect") and len(idx) > 1
        first = f"sock {ev.sock} {ev.op}() ..." if spans else text
        notes.setdefault(idx[0], []).append((ev.sock, first))
        if spans:
            back = next((i for i in idx[1:] if _ep_key(joined[i].segment.dst) == home), None)
            if back is not None:
                ending = "returns" if ev.error is None else f"raises {ev.error.type}"
                notes.setdefault(back, []).append((ev.sock, f"sock {ev.sock} {ev.op}() "
                                                   f"{ending}"))
    rows: list[Row] = []
    for i, js in enumerate(joined):
        s = js.segment
        src, dst = _ep_key(s.src), _ep_key(s.dst)
        here = notes.get(i, [])
        rows.append(Arrow(
            t=s.time - epoch, src=col[src], dst=col[dst], label=_segment_label(js),
            role=js.role,
            src_notes=tuple(t for sock, t in here if keys.get(sock) == src),
            dst_notes=tuple(t for sock, t in here if keys.get(sock) != src),
        ))
    return rows, shown


def _call_rows(conns: Sequence[Connection], keys: dict[int, str], col: dict[str, int],
               shown: set[int], captured: bool) -> list[Row]:
    traced_keys = set(keys.values())
    rows: list[Row] = []
    for c in conns:
        here = col[keys[c.sock]]
        peer_key = _specific(c.raddr)
        peer = col.get(peer_key) if peer_key is not None else None
        for ev in c.events:
            if ev.seq in shown or ev.op in _QUIET_OPS:
                continue
            text = call_text(ev)
            ended = ev.t + ev.dur
            if not captured and peer is not None and peer != here:
                if ev.op in ("connect", "connect_ex"):
                    rows.append(Arrow(ev.t, here, peer, "connect", "call", src_notes=(text,)))
                    continue
                if ev.is_send and ev.error is None:
                    rows.append(Arrow(ev.t, here, peer, f"{ev.nbytes} bytes", "call",
                                      src_notes=(text,)))
                    continue
                if ev.is_recv and ev.error is None and peer_key not in traced_keys:
                    label = "EOF" if ev.nbytes == 0 else f"{ev.nbytes} bytes"
                    rows.append(Arrow(ended, peer, here, label, "call", dst_notes=(text,)))
                    continue
            at = ended if ev.is_recv or ev.op == "accept" else ev.t
            rows.append(Note(at, here, text))
    return rows


def build_ladder(trace: Trace, joined: Sequence[JoinedSegment] | None = None, *,
                 title: str | None = None) -> Ladder:
    """The ladder of a trace's TCP connections; ``joined`` from ``timeline.join``."""
    segs = list(joined or ())
    conns = _stream_conns(trace)
    keys = _sock_keys(conns, segs)
    order = _columns(conns, keys, segs)
    col = {k: i for i, k in enumerate(order)}
    subs = _subtitles(conns, keys)
    rows, shown = _segment_rows(trace, segs, keys, col)
    rows += _call_rows(conns, keys, col, shown, joined is not None)
    rows.sort(key=lambda r: r.t)
    columns = tuple(Column(k, subs.get(k, "not traced")) for k in order)
    return Ladder(title or trace.path, columns, tuple(rows), joined is not None)


def ladder_for(trace: Trace, capture_path: str | None = None) -> Ladder:
    """``build_ladder`` with the segments of ``capture_path`` (read from the file)."""
    if capture_path is None:
        return build_ladder(trace)
    joined = join(trace, load_segments(capture_path), keep_all=True)
    return build_ladder(trace, joined, title=f"{trace.path} + {capture_path}")


# -- text --------------------------------------------------------------------------------


@dataclass
class _TextLayout:
    left: int  # width of the left gutter (notes of column 0)
    gap: int  # distance between lifelines
    xs: list[int] = field(default_factory=list)


def _notes_of(row: Row, c: int) -> tuple[str, ...]:
    if isinstance(row, Note):
        return (row.text,) if row.col == c else ()
    out: tuple[str, ...] = ()
    if row.src == c:
        out += row.src_notes
    if row.dst == c:
        out += row.dst_notes
    return out


def render_text(ladder: Ladder, *, max_gap: int = 56) -> Iterator[str]:
    """The ladder as monospace text: a time column, one lifeline per endpoint."""
    n = len(ladder.columns)
    if n == 0:
        yield f"{ladder.title}: no TCP connection to draw"
        return
    labels = [r.label for r in ladder.rows if isinstance(r, Arrow)]
    heads = [c.key for c in ladder.columns] + [c.subtitle for c in ladder.columns]
    gap = min(max([len(x) + 8 for x in labels] + [len(h) + 4 for h in heads] + [24]),
              max_gap)
    left_notes = [", ".join(_notes_of(r, 0)) for r in ladder.rows]
    left = min(max([len(x) for x in left_notes] + [len(ladder.columns[0].key) // 2]), 60) + 2
    lay = _TextLayout(left, gap, [left + i * gap for i in range(n)])
    width = lay.xs[-1] + 1
    stamp = " " * 13  # "%9.3f ms "
    yield ladder.title
    for attr in ("key", "subtitle"):
        line = [" "] * (width + gap)
        for x, c in zip(lay.xs, ladder.columns, strict=True):
            text = str(getattr(c, attr))
            start = max(0, x - len(text) // 2)
            line[start:start + len(text)] = text
        yield (stamp + "".join(line)).rstrip()
    yield (stamp + _lifelines(lay, width)).rstrip()
    for row, lnote in zip(ladder.rows, left_notes, strict=True):
        canvas = list(_lifelines(lay, width))
        if isinstance(row, Arrow) and row.src != row.dst:
            _draw_arrow(canvas, lay.xs[row.src], lay.xs[row.dst], row.label, row.role)
        right = ", ".join(t if c == n - 1 else f"{ladder.columns[c].key}: {t}"
                          for c in range(1, n) for t in _notes_of(row, c))
        body = "".join(canvas)
        if lnote:
            body = lnote.rjust(left - 2)[-(left - 2):] + body[left - 2:]
        yield (f"{row.t * 1000:9.3f} ms " + body + ("  " + right if right else "")).rstrip()


def _lifelines(lay: _TextLayout, width: int) -> str:
    line = [" "] * width
    for x in lay.xs:
        line[x] = "|"
    return "".join(line)


def _draw_arrow(canvas: list[str], a: int, b: int, label: str, role: str) -> None:
    lo, hi = min(a, b), max(a, b)
    shaft = "=" if role == "rst" else ("." if role == "call" else "-")
    for x in range(lo + 1, hi):
        canvas[x] = shaft
    if b > a:
        canvas[hi - 1] = ">"
    else:
        canvas[lo + 1] = "<"
    room = hi - lo - 4
    text = f" {label} "[:max(room, 0)]
    start = lo + 2 + (room - len(text)) // 2
    canvas[start:start + len(text)] = text


# -- Mermaid -----------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    return text.replace("#", "#35;").replace(";", "#59;")


def render_mermaid(ladder: Ladder) -> str:
    """A Mermaid ``sequenceDiagram`` (GitHub and most Markdown viewers draw it)."""
    out = ["sequenceDiagram"]
    for i, c in enumerate(ladder.columns):
        out.append(f"    participant P{i} as {_mermaid_text(c.key)}")
    for row in ladder.rows:
        if isinstance(row, Note):
            out.append(f"    Note over P{row.col}: {_mermaid_text(row.text)}")
            continue
        for text in row.src_notes:
            out.append(f"    Note over P{row.src}: {_mermaid_text(text)}")
        kind = {"rst": "-x", "call": "-->>"}.get(row.role, "->>")
        out.append(f"    P{row.src}{kind}P{row.dst}: {_mermaid_text(row.label)}")
        for text in row.dst_notes:
            out.append(f"    Note over P{row.dst}: {_mermaid_text(text)}")
    return "\n".join(out) + "\n"


# -- SVG ---------------------------------------------------------------------------------

_COLORS = {"handshake": "#1f5fbf", "data": "#222222", "ack": "#888888", "fin": "#c26a00",
           "fin-ack": "#c26a00", "rst": "#c0392b", "call": "#6a3d9a"}
_CHAR_W = 7.3  # advance of a 12px monospace glyph (ASCII)
_ROW_H = 30
_FONT = "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace"


def _text_w(text: str) -> float:
    return sum(_CHAR_W * (2 if ord(ch) > 0x2E80 else 1) for ch in text)


def render_svg(ladder: Ladder) -> str:
    """A standalone SVG document of the ladder."""
    n = max(len(ladder.columns), 1)
    arrows = [r for r in ladder.rows if isinstance(r, Arrow)]
    gap = max([_text_w(a.label) + 60 for a in arrows] +
              [_text_w(c.key) + 40 for c in ladder.columns] +
              [_text_w(c.subtitle) + 30 for c in ladder.columns] + [200.0])
    left_w = max([_text_w(t) for r in ladder.rows for t in _notes_of(r, 0)] + [60.0])
    right_w = max([_text_w(t) for r in ladder.rows for c in range(1, n)
                   for t in _notes_of(r, c)] + [60.0])
    x0 = 90 + left_w + 20
    xs = [x0 + i * gap for i in range(n)]
    top = 100
    height = top + _ROW_H * (len(ladder.rows) + 1) + 40
    width = xs[-1] + 20 + right_w + 20
    legend = ("segments from the capture: flags, relative seq/ack, payload length; calls "
              "beside them" if ladder.captured else "calls only (no capture)")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{_FONT}" font-size="12">',
        f"<title>{escape(ladder.title)}</title>",
        "<defs>",
    ]
    for role, color in _COLORS.items():
        out.append(f'<marker id="head-{role}" viewBox="0 0 10 10" refX="10" refY="5" '
                   f'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
                   f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')
    out += ["</defs>", f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
            f'<text x="12" y="22" font-size="14" font-weight="bold">'
            f"{escape(ladder.title)}</text>",
            f'<text x="12" y="40" fill="#555555">{escape(legend)}</text>']
    bottom = height - 30
    for x, c in zip(xs, ladder.columns, strict=True):
        box_w = max(_text_w(c.key), _text_w(c.subtitle)) + 20
        out.append(f'<rect x="{x - box_w / 2:.1f}" y="52" width="{box_w:.1f}" height="38" '
                   'rx="4" fill="#eef3fb" stroke="#1f5fbf"/>')
        out.append(f'<text x="{x:.1f}" y="68" text-anchor="middle" font-weight="bold">'
                   f"{escape(c.key)}</text>")
        out.append(f'<text x="{x:.1f}" y="84" text-anchor="middle" fill="#555555" '
                   f'font-size="11">{escape(c.subtitle)}</text>')
        out.append(f'<line x1="{x:.1f}" y1="90" x2="{x:.1f}" y2="{bottom}" stroke="#999999" '
                   'stroke-dasharray="4 4"/>')
    out.append(f'<text x="12" y="{top - 4}" fill="#555555" font-size="11">time (ms)</text>')
    for i, row in enumerate(ladder.rows):
        y = top + _ROW_H * (i + 1)
        out.append(f'<text x="12" y="{y + 4}" fill="#555555" font-size="11">'
                   f"{row.t * 1000:.3f}</text>")
        if isinstance(row, Arrow) and row.src != row.dst:
            color = _COLORS.get(row.role, "#222222")
            xa, xb = xs[row.src], xs[row.dst]
            dash = ' stroke-dasharray="6 3"' if row.role == "call" else ""
            out.append(f'<line x1="{xa:.1f}" y1="{y}" x2="{xb:.1f}" y2="{y}" '
                       f'stroke="{color}" stroke-width="1.6"{dash} '
                       f'marker-end="url(#head-{row.role if row.role in _COLORS else "data"})"/>')
            out.append(f'<text x="{(xa + xb) / 2:.1f}" y="{y - 5}" text-anchor="middle" '
                       f'fill="{color}">{escape(row.label)}</text>')
        for k in range(n):
            notes = _notes_of(row, k)
            if not notes:
                continue
            text = escape(", ".join(notes))
            if k == 0:
                out.append(f'<text x="{xs[0] - 10:.1f}" y="{y + 4}" text-anchor="end" '
                           f'fill="#6a3d9a">{text}</text>')
            else:
                out.append(f'<text x="{xs[k] + 10:.1f}" y="{y + 4}" fill="#6a3d9a">'
                           f"{text}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- command line ------------------------------------------------------------------------


def render(ladder: Ladder, fmt: str) -> str:
    """The ladder in ``text``, ``mermaid`` or ``svg``."""
    if fmt == "text":
        return "\n".join(render_text(ladder)) + "\n"
    if fmt == "mermaid":
        return render_mermaid(ladder)
    if fmt == "svg":
        return render_svg(ladder)
    raise ValueError(f"unknown diagram format {fmt!r}")


def cli(args: argparse.Namespace) -> int:
    """``tracesock diagram TRACE [--capture CAP] [--format F] [-o FILE]``."""
    trace = load(args.trace)
    for w in trace.warnings:
        print(f"tracesock: warning: {w}", file=sys.stderr)
    text = render(ladder_for(trace, args.capture), args.format)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise UsageError(f"diagram: cannot write {args.output!r}: "
                             f"{exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
    return 0


__all__ = [
    "Arrow",
    "Column",
    "Ladder",
    "Note",
    "build_ladder",
    "call_text",
    "ladder_for",
    "render",
    "render_mermaid",
    "render_svg",
    "render_text",
]
