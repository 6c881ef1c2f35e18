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
from typing import Any

from ..errors import UsageError
from ..record.tracing import trace
from ..trace.reader import Trace, load
from .report import report_fragment
from .show import format_stats, stats, timeline

NAMESPACE_NAME = "_tracesock"

def trace_html(trace: Trace, capture_path: str | None = None) -> str:
    """A Trace as HTML: the report of ``tracesock report`` (report.py) as one ``<div>``.

    Suitable as ``Trace._repr_html_`` (then without a capture). Where the front-end does
    not run scripts, only the timeline's filters stay inert.
    """
    return report_fragment(trace, capture_path)


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
