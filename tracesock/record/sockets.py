"""TracedSocket: a ``socket.socket`` subclass that reports every call to a Recorder.

It is a thin adapter: each wrapped method reads the clock, calls the real method,
and tells the recorder what came back (or what was raised, which is then re-raised
unchanged). Every wrapped method is listed here or in the mixin ``messages.py``
(sendmsg, sendfile, recvfrom_into, recvmsg); anything not listed is inherited untouched
from ``socket.socket`` (no ``__getattr__`` catch-all). Copied onto another class, a
method is ``socket.socket``'s there (``borrowing.py``).

``makefile()`` objects read and write through ``recv_into``/``send`` on the socket, so
those calls are traced as the calls they really are. ``close()`` while makefile objects
still hold the descriptor is recorded with ``"fd_closed": false``, and the later real
close of the descriptor as a ``close_fd`` event (the lecture notes' point that
``close()`` does not always close).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..patching import StandInMeta, bound_subclass
from .borrowing import make_lendable
from .calls import (
    LEVEL_NAMES,
    OPT_NAMES,
    SHUT_NAMES,
    buffer_bytes,
    buffer_len,
    enum_name,
    record_call,
    sendto_args,
)
from .compiled import install as install_compiled
from .messages import MessageCalls
from .recorder import Recorder

_socket_close = socket.socket.close
# The C methods themselves: calling them directly skips building a super() object on
# the hot path.
_send = socket.socket.send
_sendall = socket.socket.sendall
_recv = socket.socket.recv
_recv_into = socket.socket.recv_into
_sendto = socket.socket.sendto


_socket_makefile: Any = socket.socket.makefile

class TracedSocket(MessageCalls, metaclass=StandInMeta):
    """Drop-in ``socket.socket`` that records every call.

    ``TracedSocket(AF_INET, SOCK_STREAM, recorder=rec)`` records into ``rec``. Inside
    ``tracesock.trace()`` every ``socket.socket(...)`` is already a TracedSocket bound to
    that trace's recorder, so existing code needs no change.
    """

    # _ts_jnl: the compiled journal's own slot (see journal_of() in _journal.c).
    __slots__ = ("_ts_close_pending", "_ts_id", "_ts_jnl", "_ts_rec")
    _ts_recorder: Recorder | None = None
    _stand_in = False

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        recorder: Recorder | None = None,
        _parent: int | None = None,
    ) -> None:
        rec = recorder if recorder is not None else self._ts_recorder
        if rec is None:
            raise UsageError(
                "TracedSocket needs a recorder: pass recorder=tracesock.Recorder.open(path) "
                "or create sockets inside 'with tracesock.trace(path):'"
            )
        self._ts_rec = rec
        self._ts_id = sid = rec.new_id()
        self._ts_close_pending = False
        start = rec.now()
        try:
            super().__init__(family, type, proto, fileno)
        except BaseException as exc:
            rec.failure(sid, "socket", start,
                        exc, {"args": {"family": family, "type": type, "proto": proto}})
            raise
        fields: dict[str, Any] = {"fd": self.fileno(), "family": enum_name(self.family),
                                  "kind": enum_name(self.type), "proto": self.proto}
        if fileno is not None:
            fields["laddr"] = self._ts_name(self.getsockname)
            fields["raddr"] = self._ts_name(self.getpeername)
        if _parent is not None:
            fields["parent"] = _parent
        rec.event(sid, "socket", start, fields)

    @classmethod
    def bound_to(cls, recorder: Recorder, *, stand_in: bool = False) -> type[TracedSocket]:
        """A subclass whose sockets record into ``recorder`` without being told.

        With ``stand_in`` it also impersonates ``socket.socket`` (name, module,
        isinstance checks) for the time it replaces it.
        """
        return bound_subclass(cls, {"_ts_recorder": recorder}, stand_in=stand_in)

    # socket.socket's private bookkeeping, which close() and makefile() rely on.
    if TYPE_CHECKING:
        _io_refs: int
        _closed: bool

    @property
    def trace_id(self) -> int:
        """This socket's id in the trace (the ``sock`` field of its events)."""
        return self._ts_id

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _ts_name(getter: Any) -> Any:
        try:
            return getter()
        except OSError:
            return None

    def _ts_addrs(self) -> dict[str, Any]:
        return {"laddr": self._ts_name(self.getsockname),
                "raddr": self._ts_name(self.getpeername)}

    # -- connection set-up --------------------------------------------------------------

    def connect(self, address: Any, /) -> None:
        rec = self._ts_rec
        start = rec.now()
        try:
            super().connect(address)
        except BaseException as exc:
            fields = {"args": {"address": address}, "laddr": self._ts_name(self.getsockname)}
            rec.failure(self._ts_id, "connect", start, exc, fields)
            raise
        rec.event(self._ts_id, "connect", start, {"args": {"address": address},
                                                   **self._ts_addrs()})

    def connect_ex(self, address: Any, /) -> int:
        rec = self._ts_rec
        start = rec.now()
        try:
            code = super().connect_ex(address)
        except BaseException as exc:
            rec.failure(self._ts_id, "connect_ex", start, exc, {"args": {"address": address}})
            raise
        fields: dict[str, Any] = {"args": {"address": address}, "result": code,
                                  **self._ts_addrs()}
        if code:
            fields["error"] = {"type": "errno", "errno": code,
                               "message": os.strerror(code),
                               "name": errno.errorcode.get(code, str(code))}
        rec.event(self._ts_id, "connect_ex", start, fields)
        return code

    def bind(self, address: Any, /) -> None:
        args = {"args": {"address": address}}
        record_call(self._ts_rec, self._ts_id, "bind",
                    lambda _: {**args, "laddr": self._ts_name(self.getsockname)},
                    super().bind, address, on_error=args)

    def listen(self, *backlog: int) -> None:
        record_call(self._ts_rec, self._ts_id, "listen",
                    {"args": {"backlog": backlog[0]} if backlog else {}},
                    super().listen, *backlog)

    def accept(self) -> tuple[socket.socket, Any]:
        # Mirrors socket.socket.accept, building the accepted socket as a TracedSocket
        # bound to the same recorder, with this socket as its parent.
        rec = self._ts_rec
        start = rec.now()
        try:
            fd, addr = self._accept()  # type: ignore[attr-defined]
        except BaseException as exc:
            rec.failure(self._ts_id, "accept", start, exc, {})
            raise
        # socket.socket.accept builds the module's current ``socket`` class, not
        # type(self) (a subclass may take other arguments): do the same.
        cls = socket.socket
        if cls.__dict__.get("_ts_recorder") is not rec:
            cls = TracedSocket
        sock: TracedSocket = cls(self.family, self.type, self.proto, fileno=fd,  # type: ignore[call-arg,assignment]
                                 recorder=rec, _parent=self._ts_id)
        rec.event(self._ts_id, "accept", start,
                  {"accepted": sock._ts_id, "fd": fd, "raddr": addr,
                   "laddr": sock._ts_name(sock.getsockname)})
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, addr

    # -- sending ------------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0, /) -> int:
        try:
            rec = self._ts_rec
        except AttributeError:  # lent to another class (borrowing.py)
            return _send(self, data, flags)
        start = rec.now()
        try:
            n = _send(self, data, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "send", start, exc, {"args": {"size": buffer_len(data)}})
            raise
        rec.transfer(self._ts_id, "send", start, n, buffer_bytes(data),
                     {"flags": flags} if flags else {})
        return n

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        try:
            rec = self._ts_rec
        except AttributeError:
            return _sendall(self, data, flags)
        start = rec.now()
        try:
            _sendall(self, data, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "sendall", start, exc, {"args": {"size": buffer_len(data)}})
            raise
        rec.transfer(self._ts_id, "sendall", start, buffer_len(data), buffer_bytes(data),
                     {"flags": flags} if flags else {})

    def sendto(self, data: Any, *args: Any) -> int:
        # sendto(data, address) or sendto(data, flags, address): the C method parses the
        # arguments (and words its own errors); the record reads them afterwards.
        rec = self._ts_rec
        start = rec.now()
        try:
            n = _sendto(self, data, *args)
        except BaseException as exc:
            rec.failure(self._ts_id, "sendto", start, exc, {"args": sendto_args(args)})
            raise
        rec.transfer(self._ts_id, "sendto", start, n, buffer_bytes(data), sendto_args(args))
        return n

    # -- receiving ----------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        try:
            rec = self._ts_rec
        except AttributeError:
            return _recv(self, bufsize, flags)
        start = rec.now()
        try:
            data = _recv(self, bufsize, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "recv", start, exc, {"args": {"bufsize": bufsize}})
            raise
        rec.transfer(self._ts_id, "recv", start, len(data), data,
                     {"bufsize": bufsize, "flags": flags} if flags else {"bufsize": bufsize})
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        try:
            rec = self._ts_rec
        except AttributeError:
            return _recv_into(self, buffer, nbytes, flags)
        start = rec.now()
        args: dict[str, Any] = {"bufsize": nbytes or buffer_len(buffer)}
        if flags:
            args["flags"] = flags
        try:
            n = _recv_into(self, buffer, nbytes, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "recv_into", start, exc, {"args": args})
            raise
        rec.transfer(self._ts_id, "recv_into", start, n,
                     memoryview(buffer).cast("B")[:n] if rec.payload else None, args)
        return n

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        rec = self._ts_rec
        start = rec.now()
        args: dict[str, Any] = {"bufsize": bufsize}
        if flags:
            args["flags"] = flags
        try:
            data, address = super().recvfrom(bufsize, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "recvfrom", start, exc, {"args": args})
            raise
        args["from"] = address
        rec.transfer(self._ts_id, "recvfrom", start, len(data), data, args)
        return data, address

    # -- state and teardown -------------------------------------------------------------

    def _ts_simple(self, op: str, args: dict[str, Any], call: Any, *call_args: Any) -> Any:
        return record_call(self._ts_rec, self._ts_id, op, {"args": args}, call, *call_args)

    def shutdown(self, how: int, /) -> None:
        self._ts_simple("shutdown", {"how": SHUT_NAMES.get(how, how)}, super().shutdown, how)

    def settimeout(self, value: float | None, /) -> None:
        self._ts_simple("settimeout", {"timeout": value}, super().settimeout, value)

    def setblocking(self, flag: bool, /) -> None:
        self._ts_simple("setblocking", {"blocking": bool(flag)}, super().setblocking, flag)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None,
                   /) -> None:
        args: dict[str, Any] = {"level": LEVEL_NAMES.get(level, level),
                                "option": OPT_NAMES.get(level, {}).get(optname, optname),
                                "value": value}
        if optlen is None:
            self._ts_simple("setsockopt", args, super().setsockopt, level, optname, value)
        else:
            args["optlen"] = optlen
            self._ts_simple("setsockopt", args, super().setsockopt, level, optname, value,
                            optlen)

    def makefile(self, mode: str = "r", buffering: int | None = None, *,
                 encoding: str | None = None, errors: str | None = None,
                 newline: str | None = None) -> Any:
        return self._ts_simple(
            "makefile", {"mode": mode},
            lambda: _socket_makefile(self, mode, buffering, encoding=encoding, errors=errors,
                                     newline=newline))

    def detach(self) -> int:
        fd: int = self._ts_simple("detach", {}, super().detach)
        return fd

    def dup(self) -> TracedSocket:
        rec = self._ts_rec
        start = rec.now()
        try:
            fd = os.dup(self.fileno())
        except BaseException as exc:
            rec.failure(self._ts_id, "dup", start, exc, {})
            raise
        # socket.socket.dup builds self.__class__ with four arguments: do the same
        # (a bound class knows its recorder; otherwise say it).
        cls = type(self)
        if getattr(cls, "_ts_recorder", None) is rec or not issubclass(cls, TracedSocket):
            sock = cls(self.family, self.type, self.proto, fileno=fd)
        else:
            sock = cls(self.family, self.type, self.proto, fileno=fd, recorder=rec)
        rec.event(self._ts_id, "dup", start, {"new": getattr(sock, "_ts_id", None), "fd": fd})
        sock.settimeout(self.gettimeout())
        return sock

    def close(self) -> None:
        rec = self._ts_rec
        start = rec.now()
        fd = self.fileno()
        deferred = self._io_refs > 0
        if deferred:
            self._ts_close_pending = True
        _socket_close(self)
        rec.event(self._ts_id, "close", start, {"fd": fd, "fd_closed": not deferred})

    def _decref_socketios(self) -> None:
        # socket.socket calls self.close() here; record the release of the descriptor
        # as what it is (close_fd), not as a second close() by the program.
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            rec = self._ts_rec
            start = rec.now()
            fd = self.fileno()
            _socket_close(self)
            if self._ts_close_pending and self._io_refs <= 0:
                self._ts_close_pending = False
                rec.event(self._ts_id, "close_fd", start, {"fd": fd})


__all__ = ["TracedSocket"]


# A method copied onto another class is socket.socket's there (borrowing.py); with the
# compiled journal built, the four hottest methods are C methods (compiled.py).
_HOT = ("send", "sendall", "recv", "recv_into")
make_lendable(TracedSocket, socket.socket, skip=_HOT)
make_lendable(MessageCalls, socket.socket)
install_compiled(TracedSocket, {n: TracedSocket.__dict__[n] for n in _HOT})
