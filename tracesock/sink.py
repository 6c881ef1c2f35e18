"""Where encoded trace lines go: a memory-mapped file that survives any death.

Theory of operation. The trace must lose nothing on SIGTERM, an uncaught exception or
``os._exit``, and at most the last incomplete line on SIGKILL, yet a ``write()`` per
event costs a system call on the traced program's hot path. A shared memory map gives
both: each line is copied into page cache pages that belong to the kernel the moment
the copy finishes, so a killed process leaves every finished line in the file. Space is
reserved ahead with ``posix_fallocate`` (so a full disk is an ``OSError`` at reservation
time, never a SIGBUS on a page store), and ``close()`` cuts the file back to the bytes
written. A process that died without ``close()`` leaves zero bytes after the last
line; the reader treats them as the end of the trace and says the run was cut short.

Files that cannot be mapped (a pipe, /dev/stdout) get a plain ``os.write`` per line.
"""

from __future__ import annotations

import mmap
import os
import stat
from typing import Protocol


class Sink(Protocol):
    def write(self, line: bytes) -> None: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


_FIRST = 1 << 20  # bytes reserved up front
_MAX_STEP = 64 << 20  # growth doubles up to this step


def open_sink(path: str) -> Sink:
    """Open ``path`` for a trace, mode 0600 (traces can hold secrets)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, 0)
            os.fchmod(fd, 0o600)
            return MmapSink(fd)
        return StreamSink(fd)
    except BaseException:
        os.close(fd)
        raise


class MmapSink:
    """Append-only lines into a growing shared mapping of a regular file."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0
        self._size = 0
        self._map: mmap.mmap | None = None
        self._grow(0)

    def _grow(self, need: int) -> None:
        step = min(max(self._size, _FIRST), _MAX_STEP)
        new_size = self._size + max(step, need)
        os.posix_fallocate(self._fd, self._size, new_size - self._size)
        if self._map is None:
            self._map = mmap.mmap(self._fd, new_size)
        else:
            self._map.resize(new_size)
        self._size = new_size

    def write(self, line: bytes) -> None:
        end = self._pos + len(line)
        if end > self._size:
            self._grow(end - self._size)
        assert self._map is not None
        self._map[self._pos : end] = line
        self._pos = end

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self._pos)
            finally:
                os.close(self._fd)
                self._fd = -1

    def abandon(self) -> None:
        """Forget the file without touching it (a forked child's copy of the sink)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StreamSink:
    """One ``os.write`` per line, for outputs that are not regular files."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        self.close()
