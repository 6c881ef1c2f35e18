"""Where encoded trace lines go: a memory-mapped file that survives any death.

Theory of operation. The trace must lose nothing on SIGTERM, an uncaught exception or
``os._exit``, and at most the last incomplete line on SIGKILL, yet a ``write()`` per
event costs a system call on the traced program's hot path. A shared memory map gives
both: each line is copied into page cache pages that belong to the kernel the moment
the copy finishes, so a killed process leaves every finished line in the file. Space is
reserved before any store (``posix_fallocate`` here, ``madvise(MADV_POPULATE_WRITE)`` in
the compiled journal), so a full disk is an ``OSError`` at reservation time, never a
SIGBUS on a page store; ``close()`` cuts the file back to the bytes written. A process
that died without ``close()`` leaves zero bytes after the last line; the reader treats
them as the end of the trace and says the run was cut short.

Files that cannot be mapped (a pipe, /dev/stdout) get a plain ``os.write`` per line.

With the compiled journal (recorder.py, _journal.c), the sink only maps the windows
(:meth:`MmapSink.hand_over`, :meth:`MmapSink.map_next`) and cuts the file at the end
(:meth:`MmapSink.finish`); the journal copies the lines into them. It asks for the next
window when the current one is half used, so a line waits in process memory only if a
window could not be mapped in that time. Those windows are mapped over a sparse
extension of the file, and the journal makes their pages ready itself, 256 KiB at a time
as its writes reach them, with ``madvise(MADV_POPULATE_WRITE)``: that reserves the space as
``posix_fallocate`` would (a full disk is an error from madvise, never a SIGBUS), and no
more pages are paid for than the trace needs.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable
from typing import Protocol


class Sink(Protocol):
    """Where lines go. ``write`` may refuse a line with ValueError when it has no room
    left in its current buffer; ``spill`` then always takes it (the slow path)."""

    def write(self, line: bytes, /) -> object: ...

    def spill(self, line: bytes, /) -> None: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


# Getting a page ready (reserved, and mapped writable so that no store faults) costs
# about 2.3 us here, tmpfs or ext4 alike: most of what a traced call costs per byte. It
# is paid for every page made ready, whether a line ever lands there or not, so pages
# are made ready just ahead of the writer: windows that Python fills are 1 MiB (the
# first one is made ready before the program starts), and the compiled journal's
# windows are mapped 8 MiB at a time but made ready by the journal itself, 256 KiB ahead
# (mapping alone costs ~15 us). Windows that grew to 32 MiB, each made ready whole, left
# ~14 MiB (~9 ms) of pages unused at the end of an 18 MB ping-pong trace. A line longer
# than a window gets a window of its size.
_WINDOW = 1 << 20
_JOURNAL_WINDOW = 8 << 20
_MIN_WINDOW = 16 << 10  # the smallest window tried when the disk is nearly full
_PAGE = mmap.PAGESIZE
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# MAP_POPULATE maps a shared file's pages read-only, so the first store to each page still
# faults (about 1 us, once per 4 KiB). madvise(MADV_POPULATE_WRITE) (Linux 5.14) maps them
# writable up front, in one pass (with MAP_POPULATE too it would be two); an older kernel
# gets MAP_POPULATE alone.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def open_sink(path: str) -> Sink:
    """Open ``path`` for a trace, mode 0600 (traces can hold secrets).

    A regular file (or a new one) is mapped; anything else (a pipe, a FIFO, a terminal)
    is opened write-only, so that a reader going away is an EPIPE, not a hang.
    """
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        regular = True
    if not regular:
        return StreamSink(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)
        return MmapSink(fd)
    except BaseException:
        os.close(fd)
        raise


class MmapSink:
    """Append-only lines into a regular file, through a window mapped over its tail.

    The file is reserved (fallocate) and mapped one window at a time; a line that does
    not fit in the current window is split across it and the next one.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._window: mmap.mmap | None = None
        self._window_start = 0  # file offset of the current window
        self._window_end = 0
        self._populate_write = True  # the kernel has MADV_POPULATE_WRITE (Linux 5.14)
        self.write: Callable[[bytes], object]
        self._open_window()

    def _open_window(self, at_least: int = 0) -> None:
        """Map the next window, every page of it ready."""
        start = self._window_end
        size = max(_WINDOW, _pages(at_least))
        while True:
            try:
                os.posix_fallocate(self._fd, start, size)
                break
            except OSError as exc:
                # A nearly full disk: take a smaller window while one fits.
                if exc.errno != errno.ENOSPC or size <= _MIN_WINDOW:
                    raise
                size //= 2
        window = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED, offset=start)
        try:
            window.madvise(_MADV_POPULATE_WRITE)
        except (OSError, ValueError):  # an older kernel: MAP_POPULATE's read-only mapping
            self._populate_write = False
            window.close()
            window = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED | _POPULATE, offset=start)
        if self._window is not None:
            self._window.close()
        self._window = window
        self._window_start, self._window_end = start, start + size
        # The hot path: mmap.write itself, a C call that copies the line, or raises
        # ValueError (writing nothing) when the window has no room left for it.
        self.write = window.write

    def fileno(self) -> int:
        """The file's descriptor (for the journal's long lines, written with pwrite())."""
        return self._fd

    @property
    def written(self) -> int:
        """Bytes of lines in the file so far."""
        if self._window is None:
            return self._window_end
        return self._window_start + self._window.tell()

    def spill(self, line: bytes) -> None:
        """Write ``line`` across the end of this window and into the next ones."""
        view = memoryview(line)
        done = 0
        while True:
            window = self._window
            assert window is not None
            take = min(len(view) - done, len(window) - window.tell())
            window.write(view[done : done + take])
            done += take
            if done == len(view):
                return
            self._open_window()

    def close(self) -> None:
        written = self.written
        if self._window is not None:
            self._window.close()
            self._window = None
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, written)
            finally:
                os.close(self._fd)
                self._fd = -1

    def abandon(self) -> None:
        """Forget the file without touching it (a forked child's copy of the sink)."""
        if self._window is not None:
            self._window.close()
            self._window = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- handing the windows to a journal (recorder.py's compiled path) -----------------

    def hand_over(self) -> tuple[mmap.mmap, int, int]:
        """Give up the current window: return it, the file offset where it starts and
        the write position in it. From now on the caller writes the lines, into this
        window and those from :meth:`map_next`."""
        window, self._window = self._window, None
        assert window is not None
        self.write = self._handed_over
        return window, self._window_start, window.tell()

    def _handed_over(self, line: bytes) -> None:
        raise ValueError("this sink's windows were handed over to a journal")

    def map_next(self, at_least: int = 0) -> tuple[mmap.mmap, int]:
        """Map the range of the file after the last window, at least ``at_least`` bytes
        long; return it with the length of its ready part. On a kernel with
        MADV_POPULATE_WRITE none of it is ready: the file is only extended over it
        (sparse), and the caller makes pages ready as it needs them, where running out
        of space is an error from madvise, not a SIGBUS. Elsewhere it is ready whole."""
        self.write = self._handed_over
        if not self._populate_write:
            self._open_window(at_least)
            window, self._window = self._window, None
            assert window is not None
            return window, len(window)
        start = self._window_end
        size = max(_JOURNAL_WINDOW, _pages(at_least))
        os.ftruncate(self._fd, start + size)
        window = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED, offset=start)
        self._window_start, self._window_end = start, start + size
        return window, 0

    def finish(self, written: int, waiting: bytes = b"") -> None:
        """Close the file after a journal wrote ``written`` bytes through the windows and
        had ``waiting`` bytes left with no window: those go right after, then the file
        is cut to its lines."""
        if self._fd < 0:
            return
        try:
            view = memoryview(waiting)
            while view:
                n = os.pwrite(self._fd, view, written)
                written += n
                view = view[n:]
        finally:
            try:
                os.ftruncate(self._fd, written)
            finally:
                os.close(self._fd)
                self._fd = -1


def _pages(n: int) -> int:
    """``n`` bytes rounded up to whole pages."""
    return -(-n // _PAGE) * _PAGE


class StreamSink:
    """One ``os.write`` per line, for outputs that are not regular files."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def spill(self, line: bytes) -> None:
        self.write(line)

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
