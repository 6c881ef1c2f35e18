"""How tracesock gets into a program: the ONE place that swaps ``socket.socket``.

Theory of operation. While a trace (or a replay) is active, ``socket.socket`` is a
stand-in class, so everything that builds sockets through the module attribute
(``socket.create_connection``, ``socketpair``, ``fromfd``, ``http.client``,
``socketserver``, ``asyncio``, ``ftplib``, ``smtplib``...) gets one. The
``ssl.SSLContext`` socket and object classes are swapped alongside, and replay swaps
``socket.getaddrinfo`` too; and ``os.urandom``, ``os.getrandom``, ``os.getpid``/``getppid``
(and, opt-in, ``time.time``/``time_ns``), which recording writes down and replay gives
back (``record/entropy.py``, ``replay/entropy.py``). With ``time.time``, ``datetime.datetime``
and ``datetime.date`` become the stand-ins below. The originals are
put back in ``finally``, whatever the block raised. This module knows none of the classes and
functions it installs: record/ and replay/ hand them in (``record/patch.py``,
``replay/session.py``).

Also here, because they are how tracesock reaches into code it does not own:

- the stand-in machinery: while ``socket.socket`` is replaced, ``isinstance(x,
  socket.socket)`` must keep meaning the real class (sockets made before the swap, or
  by ``ssl``, are real sockets too), and ``repr`` must still read ``<socket.socket
  ...>``. A class made by :func:`bound_subclass` with ``stand_in`` does both; its
  subclasses that are not stand-ins behave as ordinary classes;
- exec'd Python children: an environment variable and, first on ``PYTHONPATH``, the
  bootstrap folder whose ``sitecustomize`` starts tracing or replaying in the child;
- the socket under an asyncio transport, found on the stack where ``ssl`` makes an
  ``SSLObject`` for it.
"""

from __future__ import annotations

import copyreg
import datetime
import json
import operator
import os
import random
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

ORIGINAL_SOCKET = socket.socket
BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

T = TypeVar("T", bound=type)


@contextmanager
def classes_replaced(socket_class: type[socket.socket], sslsocket_class: Any,
                     sslobject_class: Any, *,
                     getaddrinfo: Callable[..., Any] | None = None) -> Iterator[None]:
    """Replace ``socket.socket``, ``ssl.SSLContext.sslsocket_class`` and
    ``sslobject_class`` (and ``socket.getaddrinfo`` when given) for the block."""
    ctx = ssl.SSLContext
    original = socket.socket, socket.getaddrinfo, ctx.sslsocket_class, ctx.sslobject_class
    socket.socket = socket_class  # type: ignore[misc]
    if getaddrinfo is not None:
        socket.getaddrinfo = getaddrinfo
    ctx.sslsocket_class = sslsocket_class
    ctx.sslobject_class = sslobject_class
    try:
        yield
    finally:
        (socket.socket, socket.getaddrinfo,  # type: ignore[misc]
         ctx.sslsocket_class, ctx.sslobject_class) = original


# The program's own nondeterministic inputs, by the name record/ and replay/ give them,
# and every place that name is reached through (random keeps its own urandom).
ENTROPY_SOURCES: dict[str, tuple[tuple[Any, str], ...]] = {
    "urandom": ((os, "urandom"), (random, "_urandom")),
    "getrandom": ((os, "getrandom"),) if hasattr(os, "getrandom") else (),
    "getpid": ((os, "getpid"),),
    "getppid": ((os, "getppid"),),
    "time": ((time, "time"),),
    "time_ns": ((time, "time_ns"),),
}


def urandom_size(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """The size of a call ``os.urandom(*args, **kwargs)`` that can succeed, or None: the
    stand-ins then call the real function, which raises what it raises (nothing to write
    down or give back: the program got no bytes)."""
    if kwargs or len(args) != 1:
        return None
    try:
        size = operator.index(args[0])
    except TypeError:
        return None
    return size if size >= 0 else None


def getrandom_args(args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(size, flags)`` of a call ``os.getrandom(*args, **kwargs)`` that can succeed, or
    None (as :func:`urandom_size`)."""
    def bind(size: Any, flags: Any = 0) -> tuple[Any, Any]:
        return size, flags
    try:
        size, flags = (operator.index(a) for a in bind(*args, **kwargs))
    except TypeError:
        return None
    return (size, flags) if size >= 0 else None


@contextmanager
def entropy_replaced(functions: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """Replace each of ``ENTROPY_SOURCES`` named in ``functions`` (``os.urandom``...)
    with the function given for it, for the block; with ``time``, also the ``datetime``
    module's ``datetime`` and ``date`` classes (the stand-ins below)."""
    targets = [(owner, attr, fn) for name, fn in functions.items()
               for owner, attr in ENTROPY_SOURCES[name]]
    reducers: dict[type, Callable[[Any], Any]] = {}
    if "time" in functions:
        targets += [(datetime, "datetime", DatetimeStandIn), (datetime, "date", DateStandIn)]
        reducers = {REAL_DATETIME: _reduce_as(DatetimeStandIn),
                    REAL_DATE: _reduce_as(DateStandIn)}
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
    saved_reducers = {real: copyreg.dispatch_table.get(real) for real in reducers}
    try:
        for owner, attr, fn in targets:
            setattr(owner, attr, fn)
        copyreg.dispatch_table.update(reducers)
        yield
    finally:
        for real, reducer in saved_reducers.items():
            if reducer is None:
                copyreg.dispatch_table.pop(real, None)
            else:
                copyreg.dispatch_table[real] = reducer
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


# -- the wall clock of datetime ------------------------------------------------------------
#
# CPython's datetime (the C one) reads the system clock itself, not through ``time.time``,
# so recording or replaying ``time.time`` alone leaves ``datetime.now()`` real. While
# ``time.time`` is replaced, the ``datetime`` module's ``datetime`` and ``date`` are these
# stand-ins: ``now``/``utcnow``/``today`` derive from ``time.time()`` (the one installed
# then), and everything else is the real class's. What they return, and what building
# one returns, are instances of the real classes (``type(x) is`` the real class, reprs
# as usual); ``isinstance``/``issubclass`` against a stand-in mean the real class. A real
# instance pickles as usual (as ``datetime.datetime(state)``) through ``copyreg``: pickle
# refuses a class that is not what its module attribute names, the stand-in is then.
# Code that took the class before the block (``from datetime import datetime`` at import
# time) keeps the real one, and so the real clock; so do ``time.localtime()``,
# ``time.gmtime()`` and ``time.strftime()`` without a time.

REAL_DATETIME, REAL_DATE = datetime.datetime, datetime.date


class _ClockMeta(type):
    """A class whose own ``_real`` is set answers ``isinstance``/``issubclass`` for it."""

    def __instancecheck__(cls, obj: object) -> bool:
        real = cls.__dict__.get("_real")
        return isinstance(obj, real) if real else type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        real = cls.__dict__.get("_real")
        return issubclass(sub, real) if real else type.__subclasscheck__(cls, sub)


def _new(real: type) -> Any:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls.__dict__.get("_real") is real:  # the stand-in itself: a real instance
            return real(*args, **kwargs)
        return real.__new__(cls, *args, **kwargs)  # a class the program derived from it
    return __new__


def _reduce_as(stand_in: type) -> Callable[[Any], Any]:
    def reduce(value: Any) -> Any:
        return (stand_in, value.__reduce_ex__(2)[1])
    return reduce


def _maker(cls: Any) -> Any:
    """What makes the value: the real class for a stand-in, else the program's own."""
    return cls.__dict__.get("_real") or cls


class DatetimeStandIn(datetime.datetime, metaclass=_ClockMeta):
    __slots__ = ()
    __module__, __qualname__, _real = "datetime", "datetime", REAL_DATETIME
    __new__ = _new(REAL_DATETIME)

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> Any:
        return _maker(cls).fromtimestamp(time.time(), tz)

    @classmethod
    def utcnow(cls) -> Any:
        now = _maker(cls).fromtimestamp(time.time(), datetime.timezone.utc)
        return now.replace(tzinfo=None)

    @classmethod
    def today(cls) -> Any:
        return _maker(cls).fromtimestamp(time.time())


class DateStandIn(datetime.date, metaclass=_ClockMeta):
    __slots__ = ()
    __module__, __qualname__, _real = "datetime", "date", REAL_DATE
    __new__ = _new(REAL_DATE)

    @classmethod
    def today(cls) -> Any:
        return _maker(cls).fromtimestamp(time.time())


# -- stand-in classes ---------------------------------------------------------------------


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


# -- exec'd Python children ---------------------------------------------------------------


@contextmanager
def child_environment(name: str, config: Mapping[str, Any]) -> Iterator[None]:
    """Set ``name`` and put the bootstrap first on PYTHONPATH, for exec'd Python children."""
    saved = {k: os.environ.get(k) for k in (name, "PYTHONPATH")}
    os.environ[name] = json.dumps({**config, "root": _PACKAGE_PARENT,
                                   "python": list(sys.version_info[:2])})
    paths = [BOOTSTRAP]  # tracesock itself is found through "root", only by the bootstrap
    if saved["PYTHONPATH"]:
        paths.append(saved["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def program_argv() -> list[str]:
    """This process's command line, as the kernel has it."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(getattr(sys, "argv", []))


# -- asyncio transports -------------------------------------------------------------------


def transport_socket(frame: Any, ours: Callable[[Any], bool]) -> Any:
    """The socket under the asyncio transport for which an SSLObject is being made (``ours``
    tells a socket of this trace or replay from others), from the frames that make it:
    ``_make_ssl_transport(rawsock, ...)`` (``ssl=`` on a connection or an accepted one),
    a protocol's own ``_transport``, or ``start_tls(transport, ...)``."""
    for _ in range(8):
        if frame is None:
            return None
        f_locals = frame.f_locals
        rawsock = f_locals.get("rawsock")
        if ours(rawsock):
            return rawsock
        for transport in (getattr(f_locals.get("self"), "_transport", None),
                          f_locals.get("transport")):
            if transport is None or not hasattr(transport, "get_extra_info"):
                continue
            try:
                sock = transport.get_extra_info("socket")
            except Exception:
                return None
            real = getattr(sock, "_sock", sock)
            return real if ours(real) else None
        frame = frame.f_back
    return None
