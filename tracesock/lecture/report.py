"""``tracesock report``: one self-contained HTML page of a trace (and its capture).

Theory of operation. The page holds everything inline, so it opens from a file, a mail
or a USB stick with no network: CSS in a ``<style>``, the ladder (diagram.py's SVG, with
TCP states), two charts drawn here as SVG (the size of each recv() per connection, and
the bytes sent and received over time per connection), the per-connection stats of
show.py, and the call timeline as a table that a few lines of inline JavaScript filter
by socket and by operation (``report.html#sock=2&op=recv`` opens filtered). Nothing is
fetched: no ``src=`` or ``href=`` to a URL.

``report_fragment`` is the page's body alone (a ``<div class="tracesock">``), used as the
notebook's HTML view; ``report_document`` wraps it in a full HTML document. Element ids
carry a per-report prefix so that several reports live in one notebook.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from html import escape

from ..errors import TracesockError, UsageError
from ..trace.reader import Connection, Trace, load
from .diagram import render_svg
from .ladder import ladder_for
from .show import format_call, stats

_CSS = """
.tracesock { font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace;
  font-size: 12px; line-height: 1.35; color: #222; }
.tracesock h2 { font-size: 14px; margin: 1em 0 0.3em; }
.tracesock table { border-collapse: collapse; margin: 0.3em 0; }
.tracesock th { text-align: left; background: #eef3fb; padding: 2px 8px; }
.tracesock td { padding: 1px 8px; border-top: 1px solid #eee; vertical-align: top; }
.tracesock tr.err td { color: #c0392b; }
.tracesock .scroll { overflow-x: auto; }
.tracesock .charts { display: flex; flex-wrap: wrap; gap: 16px; }
.tracesock select { font: inherit; margin-right: 1em; }
"""

_JS = """
(function () {
  var root = document.getElementById("%(id)s");
  if (!root) { return; }
  var sock = root.querySelector(".f-sock"), op = root.querySelector(".f-op");
  var rows = root.querySelectorAll("tr.call");
  var count = root.querySelector(".f-count");
  function apply() {
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var ok = (!sock.value || r.dataset.sock === sock.value) &&
               (!op.value || r.dataset.op === op.value);
      r.style.display = ok ? "" : "none";
      if (ok) { shown++; }
    }
    count.textContent = shown + " of " + rows.length + " calls";
    root.dataset.shown = String(shown);
  }
  // report.html#sock=2&op=recv opens with those filters (links in slides, the tests)
  var want = {};
  (window.location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("=");
    if (p.length === 2) { want[p[0]] = decodeURIComponent(p[1]); }
  });
  [[sock, want.sock], [op, want.op]].forEach(function (sv) {
    for (var i = 0; sv[1] !== undefined && i < sv[0].options.length; i++) {
      if (sv[0].options[i].value === sv[1]) { sv[0].value = sv[1]; }
    }
  });
  sock.addEventListener("change", apply);
  op.addEventListener("change", apply);
  apply();
  root.dataset.ready = "1";
})();
"""

_PALETTE = ("#1f5fbf", "#c26a00", "#2e8b57", "#6a3d9a", "#c0392b", "#008b8b", "#8b6914")


def _conns_with_data(trace: Trace) -> list[Connection]:
    return [c for c in trace.connections.values()
            if any(e.is_send or e.is_recv for e in c.events)]


def _axes(w: int, h: int, x_label: str, y_label: str, y_max: float, x_max: float) -> list[str]:
    return [f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
            f'<line x1="50" y1="{h - 30}" x2="{w - 10}" y2="{h - 30}" stroke="#555"/>',
            f'<line x1="50" y1="10" x2="50" y2="{h - 30}" stroke="#555"/>',
            f'<text x="{w - 10}" y="{h - 8}" text-anchor="end">{escape(x_label)} '
            f"(max {x_max:g})</text>",
            f'<text x="4" y="12">{escape(y_label)}</text>',
            f'<text x="46" y="24" text-anchor="end">{y_max:g}</text>',
            f'<text x="46" y="{h - 30}" text-anchor="end">0</text>']


def _legend(conns: Sequence[Connection], h: int, tail: str = "") -> list[str]:
    """One line per socket in its colour, under the plot (``_height`` leaves room)."""
    return [f'<text x="50" y="{h + 6 + 14 * i}" fill="{_PALETTE[i % len(_PALETTE)]}">'
            f"sock {c.sock} ({c.role}){tail}</text>" for i, c in enumerate(conns)]


def _height(conns: Sequence[Connection], h: int) -> int:
    return h + 14 * len(conns) + 4


def recv_chart(trace: Trace, w: int = 460, h: int = 220) -> str:
    """A bar per recv() call, its height the bytes it returned, one colour per socket."""
    conns = [c for c in _conns_with_data(trace) if c.recv_chunks]
    bars = [(i, n) for i, c in enumerate(conns) for n in c.recv_chunks]
    y_max = max([n for _, n in bars] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart recv-chart" width="{w}" '
           f'height="{_height(conns, h)}" font-size="10" font-family="sans-serif">',
           f'<rect width="{w}" height="{_height(conns, h)}" fill="#ffffff"/>',
           *_axes(w, h, "recv() calls in order", "bytes per recv()", y_max, len(bars))]
    step = (w - 70) / max(len(bars), 1)
    for k, (i, n) in enumerate(bars):
        bh = (h - 45) * n / y_max
        out.append(f'<rect x="{52 + k * step:.1f}" y="{h - 30 - bh:.1f}" '
                   f'width="{max(step - 2, 1):.1f}" height="{bh:.1f}" '
                   f'fill="{_PALETTE[i % len(_PALETTE)]}"><title>sock {conns[i].sock}: '
                   f"{n} bytes</title></rect>")
    if not bars:
        out.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">no recv() calls</text>')
    out += _legend(conns, h)
    out.append("</svg>")
    return "\n".join(out)


def bytes_chart(trace: Trace, w: int = 460, h: int = 220) -> str:
    """Cumulative bytes sent (solid) and received (dashed) over time, per socket."""
    conns = _conns_with_data(trace)
    t0 = min((c.events[0].t for c in conns if c.events), default=0.0)  # first data socket
    series: list[tuple[int, bool, list[tuple[float, int]]]] = []
    for i, c in enumerate(conns):
        for sending in (True, False):
            total, pts = 0, [(0.0, 0)]
            for e in c.events:
                if (e.is_send if sending else e.is_recv) and e.nbytes:
                    total += e.nbytes
                    pts.append(((e.t + e.dur - t0) * 1000, total))
            if total:
                series.append((i, sending, pts))
    t_max = max([p[0] for _, _, pts in series for p in pts] + [1e-3])
    y_max = max([p[1] for _, _, pts in series for p in pts] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bytes-chart" width="{w}" '
           f'height="{_height(conns, h)}" font-size="10" font-family="sans-serif">',
           f'<rect width="{w}" height="{_height(conns, h)}" fill="#ffffff"/>',
           *_axes(w, h, f"ms after {t0 * 1000:.3f} ms", "bytes so far", y_max,
                 round(t_max, 3))]
    for i, sending, pts in series:
        coords: list[str] = []
        prev_y = h - 30.0
        for t, n in pts:
            x = 50 + (w - 60) * t / t_max
            y = h - 30 - (h - 45) * n / y_max
            coords += [f"{x:.1f},{prev_y:.1f}", f"{x:.1f},{y:.1f}"]
            prev_y = y
        dash = "" if sending else ' stroke-dasharray="5 3"'
        out.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke-width="1.8" '
                   f'stroke="{_PALETTE[i % len(_PALETTE)]}"{dash}><title>sock {conns[i].sock} '
                   f'{"sent" if sending else "received"}</title></polyline>')
    if not series:
        out.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">no bytes moved</text>')
    out += _legend(conns, h, ": solid sent, dashed received")
    out.append("</svg>")
    return "\n".join(out)


def _stats_table(trace: Trace) -> str:
    summary = stats(trace)
    cols = ("sock", "role", "kind", "laddr", "raddr", "calls", "bytes_sent", "sends",
            "bytes_received", "recvs", "recv_chunks", "errors")
    out = ['<table class="stats"><tr>' + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for c in summary["connections"]:
        cells = []
        for key in cols:
            value = c[key]
            if isinstance(value, list):
                value = ", ".join(map(str, value[:40])) + (", ..." if len(value) > 40 else "")
            cells.append(f"<td>{escape(str(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _timeline_table(trace: Trace) -> str:
    events = sorted(trace.events, key=lambda e: (e.t, e.seq))
    socks = sorted({e.sock for e in events})
    ops = sorted({e.op for e in events})
    out = ['<div class="filters">socket <select class="f-sock"><option value="">all</option>'
           + "".join(f'<option value="{s}">sock {s}</option>' for s in socks)
           + '</select>operation <select class="f-op"><option value="">all</option>'
           + "".join(f'<option value="{escape(o)}">{escape(o)}</option>' for o in ops)
           + f'</select><span class="f-count">{len(events)} calls</span></div>',
           '<table class="timeline"><tr><th>ms</th><th>pid</th><th>call</th></tr>']
    for e in events:
        err = ' err' if e.error is not None else ""
        out.append(f'<tr class="call{err}" data-sock="{e.sock}" data-op="{escape(e.op)}">'
                   f"<td>{e.t * 1000:.3f}</td><td>{e.pid or ''}</td>"
                   f"<td>{escape(format_call(e))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def report_fragment(trace: Trace, capture_path: str | None = None) -> str:
    """The report as one ``<div class="tracesock">`` with its style and script inline."""
    rid = f"tracesock-{uuid.uuid4().hex[:12]}"  # unique per report: a notebook holds many
    head = f"{escape(trace.path)}: {len(trace.events)} calls"
    if capture_path is not None:
        head += f" + capture {escape(capture_path)}"
    parts = [f'<div class="tracesock" id="{rid}">', f"<style>{_CSS}</style>",
             f"<div><b>{head}</b>{'' if trace.complete else ' (trace incomplete)'}</div>",
             "<h2>connections</h2>", _stats_table(trace),
             "<h2>ladder diagram</h2>"]
    try:
        svg = render_svg(ladder_for(trace, capture_path))
    except TracesockError as exc:  # e.g. an old trace without epoch, with a capture
        parts.append(f"<pre>(no diagram: {escape(str(exc))})</pre>")
    else:
        parts.append(f'<div class="scroll ladder">{svg}</div>')
    parts += ["<h2>recv() sizes and bytes over time</h2>",
              f'<div class="charts">{recv_chart(trace)}{bytes_chart(trace)}</div>',
              "<h2>timeline</h2>", _timeline_table(trace)]
    parts += [f"<pre>warning: {escape(w)}</pre>" for w in trace.warnings]
    parts.append(f"<script>{_JS % {'id': rid}}</script>")
    parts.append("</div>")
    return "\n".join(parts)


def report_document(trace: Trace, capture_path: str | None = None) -> str:
    """A complete, self-contained HTML document of the report."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>tracesock report: {escape(trace.path)}</title></head>\n<body>\n"
            + report_fragment(trace, capture_path) + "\n</body></html>\n")


def write_report(trace_path: str, capture_path: str | None, output: str) -> None:
    trace = load(trace_path)
    for w in trace.warnings:
        print(f"tracesock: warning: {w}", file=sys.stderr)
    html = report_document(trace, capture_path)
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(html)
    except OSError as exc:
        raise UsageError(f"report: cannot write {output!r}: {exc.strerror or exc}") from None


def cli(args: argparse.Namespace) -> int:
    """``tracesock report TRACE [--capture CAP] -o report.html``."""
    write_report(args.trace, args.capture, args.output)
    return 0


__all__ = ["bytes_chart", "recv_chart", "report_document", "report_fragment", "write_report"]
