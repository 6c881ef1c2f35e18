"""Types of the compiled journal (tracesock/_journal.c)."""

from collections.abc import Callable
from typing import Any

from _typeshed import ReadableBuffer, WriteableBuffer

class Journal:
    seq: int
    lost: int
    closed: bool
    held: bool
    needs_window: bool
    waiting: int
    failure: int
    def __init__(
        self, slow: Callable[..., None], refill: Callable[[], None], t0: float,
        payload: bool = ..., fd: int = ..., offset: int = ...,
    ) -> None: ...
    def transfer(
        self, sock: int, op: str, start: float, nbytes: int, data: Any, args: Any,
        extra: Any = ..., /,
    ) -> None: ...
    def append_call(self, line: bytes, /) -> int: ...
    def append_raw(self, line: ReadableBuffer, /) -> None: ...
    def add_window(self, buffer: WriteableBuffer, pos: int = ..., ready: int = ..., /) -> None: ...
    def detach(self) -> tuple[int, bytes]: ...
    def stop(self) -> None: ...

def socket_methods(
    socket_type: type, real: dict[str, Any], python: dict[str, Any], failed: Callable[..., None],
    /,
) -> dict[str, Any]: ...
