"""Ladder diagrams drawn: text, Mermaid and SVG (the ladder itself is ladder.py).

The SVG is standalone (inline styles, no fonts or scripts fetched) so that a browser
opens it and a slide embeds it.
"""


from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape

from ..errors import UsageError
from ..trace.reader import load
from .ladder import Arrow, Column, Ladder, Note, Row, build_ladder, call_text, ladder_for

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


def state_label(ladder: Ladder, name: str) -> str:
    """A state as drawn: ``ESTABLISHED``, or ``ESTABLISHED?`` when inferred from calls."""
    return name + ("?" if ladder.states_inferred and name else "")


def states_legend(ladder: Ladder) -> str:
    """What the state marks on a ladder mean."""
    if ladder.states_inferred:
        return ("[STATE?] = TCP state after the call, inferred from the calls "
                "(no capture; transient states never show)")
    return "[STATE] = TCP state after the segment, from the capture"


def _changed(row: Row, last: dict[int, str]) -> dict[int, str]:
    """The states of ``row`` that differ from ``last`` (which is updated)."""
    out = {c: st for c, st in row.states if last.get(c) != st}
    last.update(out)
    return out


def _state_line(ladder: Ladder, lay: _TextLayout, width: int, states: dict[int, str]) -> str:
    line = list(_lifelines(lay, width + lay.gap))
    for c, name in states.items():
        text = f"[{state_label(ladder, name)}]"
        start = max(0, lay.xs[c] - len(text) // 2)
        line[start:start + len(text)] = text
    return "".join(line)


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
    last = {c: st for c, st in enumerate(ladder.initial_states) if st}
    if last:
        yield (stamp + _state_line(ladder, lay, width, last)).rstrip()
    else:
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
        if changed := _changed(row, last):
            yield (stamp + _state_line(ladder, lay, width, changed)).rstrip()
    if any(ladder.initial_states) or any(r.states for r in ladder.rows):
        yield states_legend(ladder)


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
    last = {c: st for c, st in enumerate(ladder.initial_states) if st}
    for k, st in last.items():
        out.append(f"    Note over P{k}: [{state_label(ladder, st)}]")

    def states(row: Row) -> None:
        for c, st in sorted(_changed(row, last).items()):
            out.append(f"    Note over P{c}: [{state_label(ladder, st)}]")

    for row in ladder.rows:
        if isinstance(row, Note):
            out.append(f"    Note over P{row.col}: {_mermaid_text(row.text)}")
            states(row)
            continue
        for text in row.src_notes:
            out.append(f"    Note over P{row.src}: {_mermaid_text(text)}")
        kind = {"rst": "-x", "call": "-->>"}.get(row.role, "->>")
        out.append(f"    P{row.src}{kind}P{row.dst}: {_mermaid_text(row.label)}")
        for text in row.dst_notes:
            out.append(f"    Note over P{row.dst}: {_mermaid_text(text)}")
        states(row)
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
    has_states = any(ladder.initial_states) or any(r.states for r in ladder.rows)
    row_h = _ROW_H + 12 if has_states else _ROW_H
    top = 118 if has_states else 100
    height = top + row_h * (len(ladder.rows) + 1) + (60 if has_states else 40)
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
    bottom = height - (50 if has_states else 30)
    last = {c: st for c, st in enumerate(ladder.initial_states) if st}
    pills = [_state_pill(ladder, xs[k], 106, st) for k, st in last.items()]
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
    out += pills
    out.append(f'<text x="12" y="{top - 4}" fill="#555555" font-size="11">time (ms)</text>')
    for i, row in enumerate(ladder.rows):
        y = top + row_h * (i + 1)
        for k, st in _changed(row, last).items():
            out.append(_state_pill(ladder, xs[k], y + 15, st))
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
    if has_states:
        out.append(f'<text x="12" y="{height - 16}" fill="#555555" font-size="11">'
                   f"{escape(states_legend(ladder))}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


_STATE_FILL = {"ESTABLISHED": "#d9f2d9", "CLOSED": "#eeeeee", "LISTEN": "#e0ecff",
               "TIME_WAIT": "#fde2c8", "CLOSE_WAIT": "#fff3c4", "LAST_ACK": "#fff3c4",
               "CLOSING": "#fde2c8"}


def _state_pill(ladder: Ladder, x: float, y: float, name: str) -> str:
    """A TCP state on a lifeline: a rounded box centred on ``x``, its middle at ``y``."""
    text = state_label(ladder, name)
    w = _text_w(text) * 0.85 + 14
    fill = _STATE_FILL.get(name, "#f3e6ff")
    dash = ' stroke-dasharray="3 2"' if ladder.states_inferred else ""
    return (f'<g class="state"><rect x="{x - w / 2:.1f}" y="{y - 8:.1f}" width="{w:.1f}" '
            f'height="15" rx="7" fill="{fill}" stroke="#777777"{dash}/>'
            f'<text x="{x:.1f}" y="{y + 3.5:.1f}" text-anchor="middle" font-size="10">'
            f"{escape(text)}</text></g>")


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
