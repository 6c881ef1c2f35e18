"""Classes that stand in for ``socket.socket`` while tracing or replaying.

While ``socket.socket`` is replaced, ``isinstance(x, socket.socket)`` must keep meaning
the real class (sockets made before the swap, or by ``ssl``, are real sockets too), and
``repr`` must still read ``<socket.socket ...>``. A class made by :func:`stand_in` does
both; its subclasses that are not stand-ins behave as ordinary classes.
"""

from __future__ import annotations

import socket
from typing import Any, TypeVar, cast

ORIGINAL_SOCKET = socket.socket

T = TypeVar("T", bound=type)


class StandInMeta(type):
    """Metaclass: a class whose own ``_stand_in`` is true answers for ``socket.socket``."""

    def __instancecheck__(cls, obj: object) -> bool:
        if cls.__dict__.get("_stand_in", False):
            return isinstance(obj, ORIGINAL_SOCKET)
        return type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        if cls.__dict__.get("_stand_in", False):
            return issubclass(sub, ORIGINAL_SOCKET)
        return type.__subclasscheck__(cls, sub)


def bound_subclass(cls: T, attrs: dict[str, Any], *, stand_in: bool) -> T:
    """A subclass of ``cls`` with ``attrs``; with ``stand_in`` it impersonates
    ``socket.socket`` (name, module, isinstance checks) for the time it replaces it."""
    body: dict[str, Any] = {"__slots__": (), "_stand_in": stand_in, **attrs}
    if stand_in:
        body.update(__module__="socket", __qualname__="socket")
    return cast(T, StandInMeta("socket" if stand_in else cls.__name__, (cls,), body))
