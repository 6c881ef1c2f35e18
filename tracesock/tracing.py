"""``trace()``: record every socket a block of code creates, into one trace file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .patching import socket_class_patched
from .recorder import Recorder
from .sockets import TracedSocket


class Tracing:
    """What ``trace()`` yields: the recorder, the output path and the socket class."""

    def __init__(self, path: str, recorder: Recorder, socket_class: type[TracedSocket]):
        self.path = path
        self.recorder = recorder
        self.socket_class = socket_class


@contextmanager
def trace(
    path: str,
    *,
    payload: bool = True,
    max_payload: int | None = None,
    redact: Iterable[str] = (),
    argv: Iterable[str] | None = None,
    **recorder_options: Any,
) -> Iterator[Tracing]:
    """Trace every socket created inside the block into ``path`` (JSONL, mode 0600).

    ``socket.socket`` is restored and the file finished when the block ends, even
    when it raises. Sockets still open afterwards are no longer recorded.
    """
    recorder = Recorder.open(path, payload=payload, max_payload=max_payload, redact=redact,
                             argv=argv, **recorder_options)
    try:
        with socket_class_patched(recorder) as cls:
            yield Tracing(path, recorder, cls)
    finally:
        recorder.close()
