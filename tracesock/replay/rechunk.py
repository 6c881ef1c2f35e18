"""The re-chunking fuzzer: the same bytes, delivered in every way TCP may cut them.

A recording shows one chunking; the next run, another network or a loaded machine
gives others, and code that assumes "one recv = one message" breaks there. These
helpers split a byte string into chunk lists: whole, every single split point, one
byte at a time, splits inside multi-byte UTF-8 characters, and seeded random splits.
Feed a chunking to the code through ``ReplaySocket.from_chunks(chunks)`` (a connected
socket whose recvs return exactly those chunks), or take the bytes from a recording
with :func:`incoming`.

``parametrize()`` makes a pytest parametrization of all of them and ``strategy()`` a
Hypothesis strategy; both import their library only when called, so ``import
tracesock`` loads neither.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..trace.reader import Connection

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy


@dataclass(frozen=True)
class Chunking:
    """One way to deliver ``b''.join(chunks)``; ``name`` is a readable test id."""

    name: str
    chunks: tuple[bytes, ...]


def split_at(data: bytes, points: Iterable[int]) -> tuple[bytes, ...]:
    """``data`` cut at the given offsets (sorted, duplicates and ends ignored)."""
    cuts = sorted({p for p in points if 0 < p < len(data)})
    edges = [0, *cuts, len(data)]
    return tuple(data[a:b] for a, b in itertools.pairwise(edges)) if data else ()


def whole(data: bytes) -> Chunking:
    return Chunking("whole", split_at(data, ()))


def byte_by_byte(data: bytes) -> Chunking:
    return Chunking("bytewise", tuple(data[i:i + 1] for i in range(len(data))))


def single_splits(data: bytes) -> Iterator[Chunking]:
    """Two chunks, for every split point."""
    for i in range(1, len(data)):
        yield Chunking(f"split@{i}", split_at(data, (i,)))


def utf8_splits(data: bytes) -> Iterator[Chunking]:
    """Splits that cut a multi-byte UTF-8 character (before each continuation byte)."""
    for i in range(1, len(data)):
        if data[i] & 0xC0 == 0x80:
            yield Chunking(f"utf8@{i}", split_at(data, (i,)))


def random_splits(data: bytes, *, seed: int = 0, count: int = 20,
                  max_pieces: int = 8) -> Iterator[Chunking]:
    """``count`` seeded random chunkings of 2..max_pieces pieces (same seed, same cuts)."""
    rng = random.Random(seed)
    if len(data) < 2:
        return
    for n in range(count):
        k = rng.randint(1, min(max_pieces - 1, len(data) - 1))
        points = rng.sample(range(1, len(data)), k)
        yield Chunking(f"random{seed}-{n}", split_at(data, points))


def chunkings(data: bytes, *, seed: int = 0, random_count: int = 20,
              every_split: bool = True) -> Iterator[Chunking]:
    """All of the above, each distinct chunk list once, in that order."""
    seen: set[tuple[bytes, ...]] = set()
    sources: list[Iterable[Chunking]] = [[whole(data), byte_by_byte(data)], utf8_splits(data)]
    if every_split:
        sources.append(single_splits(data))
    sources.append(random_splits(data, seed=seed, count=random_count))
    for source in sources:
        for c in source:
            if c.chunks not in seen:
                seen.add(c.chunks)
                yield c


def incoming(conn: Connection) -> bytes:
    """Everything a recorded connection received, joined (to re-chunk it)."""
    return b"".join(e.data or b"" for e in conn.events if e.is_recv and e.error is None)


def parametrize(data: bytes, argname: str = "chunks", **options: Any) -> Any:
    """``@pytest.mark.parametrize`` over :func:`chunkings` of ``data`` (lists of bytes)."""
    import pytest

    cases = list(chunkings(data, **options))
    return pytest.mark.parametrize(argname, [list(c.chunks) for c in cases],
                                   ids=[c.name for c in cases])


def strategy(data: bytes) -> SearchStrategy[list[bytes]]:
    """A Hypothesis strategy of chunk lists joining to ``data`` (shrinks to fewer cuts)."""
    from hypothesis import strategies as st

    if len(data) < 2:
        return st.just([data] if data else [])
    points = st.lists(st.integers(1, len(data) - 1), unique=True, max_size=len(data) - 1)
    return points.map(lambda p: list(split_at(data, p)))



__all__ = ["Chunking", "byte_by_byte", "chunkings", "incoming", "parametrize",
           "random_splits", "single_splits", "split_at", "strategy", "utf8_splits", "whole"]
