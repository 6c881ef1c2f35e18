"""Sent bytes compared with parts ignored: ``replay(..., ignore=[regex, ...])``.

Theory of operation. Some bytes a program sends stay different from run to run even with
its randomness given back (a request id from a counter shared with other processes, a
timestamp from ``datetime.now()``). With ``ignore`` patterns, what the code sends and
what the recording sent are both *normalized*: every match of any pattern becomes one
fixed placeholder, so the two may differ in length there. The normalized concatenations
are compared (sends.py), incrementally: bytes compared equal are *settled* and dropped,
except the last few sent and a match that reaches the end of either side's bytes so
far (the next send may extend it, or complete a match it only begins). A mismatch is
still reported in real bytes: the normalized offset where they differ is mapped back
into each side's own bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import UsageError

PLACEHOLDER = b"\0tracesock-ignored\0"

# (normalized start, raw start, raw end) of each match replaced by the placeholder
Spans = list[tuple[int, int, int]]


class Ignoring:
    """The ``ignore`` patterns of one replay, compiled into one bytes regex."""

    def __init__(self, patterns: Iterable[str | bytes]) -> None:
        parts = []
        for pattern in patterns:
            raw = pattern.encode("utf-8") if isinstance(pattern, str) else bytes(pattern)
            try:
                re.compile(raw)
            except re.error as exc:
                raise UsageError(f"ignore: {pattern!r} is not a valid regex: {exc}") from None
            parts.append(b"(?:" + raw + b")")
        if not parts:
            raise UsageError("ignore: no patterns given")
        self.count = len(parts)
        self.regex = re.compile(b"|".join(parts))

    def normalize(self, data: bytes) -> tuple[bytes, Spans]:
        """``data`` with each (non-empty) match replaced by the placeholder, and where."""
        out = bytearray()
        spans: Spans = []
        pos = 0
        for m in self.regex.finditer(data):
            start, end = m.span()
            if start == end:
                continue
            out += data[pos:start]
            spans.append((len(out), start, end))
            out += PLACEHOLDER
            pos = end
        out += data[pos:]
        return bytes(out), spans


def raw_offset(spans: Spans, at: int) -> int:
    """Where normalized offset ``at`` falls in the bytes that were normalized."""
    shift = 0
    for norm_start, raw_start, raw_end in spans:
        if at < norm_start:
            break
        if at < norm_start + len(PLACEHOLDER):
            return raw_start
        shift = raw_end - norm_start - len(PLACEHOLDER)
    return at + shift


def first_difference(a: bytes, b: bytes) -> int:
    """The first offset where ``a`` and ``b`` differ (the shorter length if one is a
    prefix of the other)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def real_diff(expected: bytes, e_at: int, actual: bytes, a_at: int) -> str:
    """records.diff() for two sides whose bytes before the difference may differ (in
    ignored matches): each shows its own, right-aligned so the difference lines up."""
    e_head = repr(expected[max(0, e_at - 24):e_at])[:-1]
    a_head = repr(actual[max(0, a_at - 24):a_at])[:-1]
    width = max(len(e_head), len(a_head))
    exp = e_head.rjust(width) + repr(expected[e_at:e_at + 24])[2:]
    act = a_head.rjust(width) + repr(actual[a_at:a_at + 24])[2:]
    return f"\n  expected: {exp}\n  actual:   {act}\n            {' ' * width}^"
