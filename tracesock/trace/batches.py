"""Reading a trace a batch of lines at a time, for readers that keep up with a
million events a second (replay): one orjson call per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import TraceFormatError
from .reader import TraceReader, _is_json


class BatchReader(TraceReader):
    """TraceReader's header checks and end-of-file rules, read a batch of lines at a time.

    One orjson call per batch parses the lines as a JSON array; per-line parsing is the
    fallback that finds the line to blame when the batch does not parse.
    """

    def batches(self, size: int = 1 << 16) -> Iterator[tuple[int, list[Any]]]:
        """(line number of the first record, parsed records) for each batch of lines.
        Records are checked where they are used (Cassette.pull), in the same loop."""
        f = self._file
        lineno = 2
        with f:
            while True:
                lines = f.readlines(size)
                if not lines:
                    break
                cut = lines.pop() if not lines[-1].endswith(b"\n") else None
                try:
                    recs = orjson.loads(b"[" + b",".join(lines) + b"]") if lines else []
                except orjson.JSONDecodeError:
                    recs = self._one_by_one(lines, lineno)
                yield lineno, recs
                lineno += len(lines)
                if cut is not None:
                    if b"\0" not in cut and _is_json(cut):
                        # A whole last line without its newline: a record, as
                        # TraceReader reads it.
                        yield lineno, self._one_by_one([cut], lineno)
                        return
                    stripped = cut.rstrip(b"\0")
                    if stripped.endswith(b"\n"):  # a whole line followed by padding
                        yield lineno, self._one_by_one([stripped], lineno)
                        lineno += 1
                        stripped = b""
                    self._tail(f, lineno, stripped)
                    return

    def _one_by_one(self, lines: list[bytes], lineno: int) -> list[Any]:
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise TraceFormatError(f"{self.path}:{lineno + i}: not valid JSON "
                                       f"({exc})") from None
        return out
