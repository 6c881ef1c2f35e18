"""Jupyter: the ``%%tracesock`` cell magic and an HTML view of a Trace.

``%load_ext tracesock`` (or ``tracesock.notebook``) registers the cell magic::

    %%tracesock --capture
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ...

The cell runs as usual (IPython's own ``run_cell``, so its output, its last
expression and its traceback look as they always do) inside ``trace()``; once it has
finished, the trace is loaded and shown under the cell: a per-socket summary, the
timeline (calls and, with ``--capture``, segments) and the ladder diagram as inline SVG.
The loaded Trace is left in the namespace as ``_tracesock``.

Sockets are traced the way ``trace()`` always traces: ``socket.socket`` is replaced while
the cell runs, so names bound before (``from socket import socket``) are not traced.
IPython is only imported here, never by ``import tracesock``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from collections.abc import Iterable
from html import escape
from typing import Any

from ..errors import TracesockError, UsageError
from ..record.tracing import trace
from ..trace.reader import Trace, load
from .diagram import ladder_for, render_svg
from .show import format_stats, stats, timeline

NAMESPACE_NAME = "_tracesock"

_STYLE = ("font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; "
          "font-size: 12px; line-height: 1.35;")


def _pre(lines: Iterable[str]) -> str:
    return f'<pre style="{_STYLE} margin: 0.3em 0;">' + escape("\n".join(lines)) + "</pre>"


def trace_html(trace: Trace, capture_path: str | None = None) -> str:
    """A Trace as HTML: summary, timeline and ladder diagram (inline SVG, no scripts).

    Suitable as ``Trace._repr_html_`` (then without a capture).
    """
    parts = [f'<div class="tracesock" style="{_STYLE}">']
    head = f"{escape(trace.path)}: {len(trace.events)} calls"
    if capture_path is not None:
        head += f" + capture {escape(capture_path)}"
    parts.append(f"<div><b>{head}</b></div>")
    summary = stats(trace)
    if summary["connections"]:
        parts.append('<table style="border-collapse: collapse; margin: 0.3em 0;">')
        cols = ("sock", "role", "laddr", "raddr", "bytes_sent", "bytes_received",
                "recv_chunks", "errors")
        parts.append("<tr>" + "".join(f'<th style="text-align: left; padding: 0 0.8em 0 0;">'
                                      f"{escape(c)}</th>" for c in cols) + "</tr>")
        for c in summary["connections"]:
            cells = []
            for key in cols:
                value = c[key]
                if isinstance(value, list):
                    value = ", ".join(map(str, value))
                cells.append(f'<td style="padding: 0 0.8em 0 0;">{escape(str(value))}</td>')
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    if capture_path is not None:
        from .timeline import render_with_capture

        lines = list(render_with_capture(trace, capture_path))
    else:
        lines = list(timeline(trace))
    parts.append("<details open><summary>timeline</summary>" + _pre(lines) + "</details>")
    try:
        svg = render_svg(ladder_for(trace, capture_path))
    except TracesockError as exc:  # e.g. an old trace without epoch, with a capture
        parts.append(_pre([f"(no diagram: {exc})"]))
    else:
        parts.append("<details open><summary>ladder diagram</summary>"
                     f'<div style="overflow-x: auto;">{svg}</div></details>')
    for w in trace.warnings:
        parts.append(_pre([f"warning: {w}"]))
    parts.append("</div>")
    return "\n".join(parts)


def trace_text(trace: Trace) -> str:
    """Plain-text counterpart of trace_html (what a terminal front-end shows)."""
    return "\n".join([*format_stats(stats(trace)), *timeline(trace)])


class _HTML:
    """What the magic displays: HTML for notebooks, text for terminals."""

    def __init__(self, html: str, text: str) -> None:
        self._html = html
        self._text = text

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self._text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%tracesock", add_help=False, exit_on_error=False)
    p.add_argument("--capture", action="store_true",
                   help="also capture the cell's TCP segments (needs CAP_NET_RAW)")
    p.add_argument("--out", metavar="DIR",
                   help="keep cell-N.jsonl (and .pcapng) in DIR (default: a temporary folder)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not display the result")
    return p


def parse_magic_line(line: str) -> argparse.Namespace:
    try:
        args, extra = _parser().parse_known_args(shlex.split(line))
    except (argparse.ArgumentError, ValueError) as exc:
        raise UsageError(f"%%tracesock: {exc}") from None
    if extra:
        raise UsageError(f"%%tracesock: unknown option(s) {' '.join(extra)} "
                         "(usage: %%tracesock [--capture] [--out DIR] [--quiet])")
    return args


class TracesockMagic:
    """The ``%%tracesock`` cell magic bound to one IPython shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.cells = 0

    def __call__(self, line: str, cell: str) -> None:
        try:
            args = parse_magic_line(line)
        except UsageError as exc:
            print(exc)
            return
        out = args.out or tempfile.mkdtemp(prefix="tracesock-")
        os.makedirs(out, exist_ok=True)
        self.cells += 1
        stem = os.path.join(out, f"cell-{self.cells}-{time.strftime('%H%M%S')}")
        trace_path, cap = f"{stem}.jsonl", (f"{stem}.pcapng" if args.capture else None)
        with trace(trace_path, capture=cap, capture_all=True, argv=["%%tracesock", line]):
            self.shell.run_cell(cell, store_history=False)
        loaded = load(trace_path)
        captured = cap if cap is not None and os.path.exists(cap) else None
        self.shell.user_ns[NAMESPACE_NAME] = loaded
        if not args.quiet:
            from IPython.display import display

            display(_HTML(  # type: ignore[no-untyped-call]
                trace_html(loaded, captured), trace_text(loaded)))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tracesock``: register the ``%%tracesock`` cell magic."""
    ipython.register_magic_function(TracesockMagic(ipython), magic_kind="cell",
                                    magic_name="tracesock")


__all__ = [
    "NAMESPACE_NAME",
    "TracesockMagic",
    "load_ipython_extension",
    "parse_magic_line",
    "trace_html",
    "trace_text",
]
