"""TLS: the plaintext of ``ssl`` sockets and objects, traced on the socket's own id.

Theory of operation. An ``SSLSocket`` reads and writes through OpenSSL straight on the
descriptor, so the traced ``socket.socket`` below it sees the handshake's socket and
none of the application data. While tracing, ``ssl.SSLContext.sslsocket_class`` (and
``sslobject_class``, which asyncio uses over memory BIOs) are swapped (in patching.py)
for the bound subclasses built here. ``SSLSocket._create`` detaches the plain socket;
the TLS socket takes over its trace id, so one id carries ``socket``, ``connect``,
``detach`` (the descriptor moving into TLS), ``do_handshake`` and the plaintext calls,
each marked ``"tls": true``.

The ``ssl`` methods call each other (``sendall`` loops on ``send``, ``recv`` calls
``read``): only the outermost call is recorded, one flag per direction per socket.

An ``SSLObject`` (asyncio's ``ssl=``) has no socket: it gets its own id, and its
``wrap_bio`` event names the transport's socket id (``"transport"``) when the stack
shows it, else ``null`` and a ``note``. The ciphertext stays on the transport's socket.

``keylog`` sets ``SSLContext.keylog_filename`` on each context that wraps a socket or
BIO while tracing (unless the program set one): NSS key log lines, for Wireshark.

Replay of TLS is in ``replay/tls.py``.
"""

from __future__ import annotations

import ssl
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from ..patching import transport_socket
from .borrowing import make_lendable
from .calls import buffer_bytes, buffer_len, record_call
from .recorder import Recorder

_SSLSocket = ssl.SSLSocket
_TLS = {"tls": True}
_NO_ARGS: dict[str, Any] = {}


def _keylog(context: Any, path: str | None) -> None:
    if path is not None and context is not None and context.keylog_filename is None:
        context.keylog_filename = path


def _handshake_fields(obj: Any) -> dict[str, Any]:
    cipher = obj.cipher()
    return {"tls": True, "version": obj.version(),
            "cipher": cipher[0] if cipher else None,
            "server_side": obj.server_side, "server_hostname": obj.server_hostname,
            "alpn": obj.selected_alpn_protocol()}


class TracedSSLSocket(ssl.SSLSocket):
    """An ``ssl.SSLSocket`` that records its handshake and plaintext calls."""

    _ts_rec: ClassVar[Recorder]
    _ts_keylog: ClassVar[str | None] = None
    _ts_id = 0  # set per instance by _create
    # True until _create has set the id: SSLSocket._create itself calls recv(1) on
    # unconnected sockets (pre-handshake data check), which must pass through untraced.
    _ts_reading = True
    _ts_writing = True
    if TYPE_CHECKING:
        _sslobj: Any
        do_handshake_on_connect: bool

    @classmethod
    def bound_to(cls, recorder: Recorder, keylog: str | None = None) -> type[TracedSSLSocket]:
        attrs = {"_ts_rec": recorder, "_ts_keylog": keylog, "__module__": "ssl",
                 "__qualname__": "SSLSocket"}
        return type("SSLSocket", (cls,), attrs)

    @classmethod
    def _create(cls, sock: Any, server_side: bool = False,
                do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                server_hostname: Any = None, context: Any = None,
                session: Any = None) -> TracedSSLSocket:
        rec = cls._ts_rec
        sid = getattr(sock, "_ts_id", None) if getattr(sock, "_ts_rec", None) is rec else None
        if sid is None:  # a socket made before tracing began: give it an id here
            sid = rec.new_id()
            rec.event(sid, "socket", rec.now(), {"fd": sock.fileno(),
                                                 "note": "created before tracing"})
        _keylog(context, cls._ts_keylog)
        # Handshake ourselves, after the id is set, so that it is recorded on this id.
        self: TracedSSLSocket = super()._create(  # type: ignore[misc]
            sock, server_side, False, suppress_ragged_eofs, server_hostname, context, session)
        self._ts_id = sid
        self._ts_reading = self._ts_writing = False  # from now on, record
        self.do_handshake_on_connect = do_handshake_on_connect
        if do_handshake_on_connect and self._connected:  # type: ignore[attr-defined]
            try:
                if self.gettimeout() == 0.0:
                    raise ValueError("do_handshake_on_connect should not be specified "
                                     "for non-blocking sockets")
                self.do_handshake()
            except (OSError, ValueError):
                self.close()
                raise
        return self

    # -- helpers ------------------------------------------------------------------------

    def _ts_addrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, getter in (("laddr", self.getsockname), ("raddr", self.getpeername)):
            try:
                out[key] = getter()
            except OSError:
                out[key] = None
        return out

    def _ts_read(self, op: str, call: Any, args: dict[str, Any], buffer: Any,
                 *call_args: Any) -> Any:
        if self._ts_reading:  # an inner call of an outer traced one (recv -> read)
            return call(*call_args)
        rec = self._ts_rec
        tls = _TLS if self._sslobj is not None else None
        self._ts_reading = True
        start = rec.now()
        try:
            result = call(*call_args)
        except BaseException as exc:
            rec.failure(self._ts_id, op, start, exc, {"args": args, **(tls or _NO_ARGS)})
            raise
        finally:
            self._ts_reading = False
        if buffer is None:
            rec.transfer(self._ts_id, op, start, len(result), result, args, tls)
        else:
            rec.transfer(self._ts_id, op, start, result,
                         memoryview(buffer).cast("B")[:result] if rec.payload else None,
                         args, tls)
        return result

    def _ts_write(self, op: str, call: Any, data: Any, *call_args: Any) -> Any:
        if self._ts_writing:
            return call(data, *call_args)
        rec = self._ts_rec
        tls = _TLS if self._sslobj is not None else None
        self._ts_writing = True
        start = rec.now()
        try:
            result = call(data, *call_args)
        except BaseException as exc:
            rec.failure(self._ts_id, op, start, exc,
                        {"args": {"size": buffer_len(data)}, **(tls or _NO_ARGS)})
            raise
        finally:
            self._ts_writing = False
        n = buffer_len(data) if result is None else result
        rec.transfer(self._ts_id, op, start, n, buffer_bytes(data), _NO_ARGS, tls)
        return result

    def _ts_simple(self, op: str, call: Any, fields: Any, *call_args: Any) -> Any:
        return record_call(self._ts_rec, self._ts_id, op, lambda _: fields(self), call,
                           *call_args, on_error=_TLS)

    # -- set-up -------------------------------------------------------------------------

    def do_handshake(self, block: bool = False) -> None:
        self._ts_simple("do_handshake", super().do_handshake, _handshake_fields, block)

    def connect(self, addr: Any) -> None:
        rec = self._ts_rec
        start = rec.now()
        try:
            super().connect(addr)
        except BaseException as exc:
            rec.failure(self._ts_id, "connect", start, exc, {"args": {"address": addr}})
            raise
        rec.event(self._ts_id, "connect", start, {"args": {"address": addr},
                                                   **self._ts_addrs()})

    def connect_ex(self, addr: Any) -> int:
        rec = self._ts_rec
        start = rec.now()
        try:
            code = super().connect_ex(addr)
        except BaseException as exc:  # the handshake after connecting can raise
            rec.failure(self._ts_id, "connect_ex", start, exc, {"args": {"address": addr}})
            raise
        rec.event(self._ts_id, "connect_ex", start, {"args": {"address": addr},
                                                      "result": code, **self._ts_addrs()})
        return code

    def accept(self) -> tuple[Any, Any]:
        rec = self._ts_rec
        start = rec.now()
        try:
            sock, addr = super().accept()
        except BaseException as exc:
            rec.failure(self._ts_id, "accept", start, exc, {})
            raise
        rec.event(self._ts_id, "accept", start, {"accepted": getattr(sock, "_ts_id", None),
                                                  "raddr": addr, "tls": True})
        return sock, addr

    # -- plaintext ----------------------------------------------------------------------

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        try:  # the lookup the call makes anyway, where a borrower's self fails
            read = self._ts_read
        except AttributeError:  # lent to another class (borrowing.py)
            return _SSLSocket.read(self, len, buffer)
        return read("read", super().read, {"bufsize": len}, buffer, len, buffer)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            read = self._ts_read
        except AttributeError:
            return _SSLSocket.recv(self, buflen, flags)
        args = {"bufsize": buflen, "flags": flags} if flags else {"bufsize": buflen}
        data: bytes = read("recv", super().recv, args, None, buflen, flags)
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        try:
            read = self._ts_read
        except AttributeError:
            return _SSLSocket.recv_into(self, buffer, nbytes, flags)
        args = {"bufsize": nbytes or buffer_len(buffer)}
        n: int = read("recv_into", super().recv_into, args, buffer, buffer, nbytes, flags)
        return n

    def write(self, data: Any) -> int:
        try:
            write = self._ts_write
        except AttributeError:
            return _SSLSocket.write(self, data)
        n: int = write("write", super().write, data)
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            write = self._ts_write
        except AttributeError:
            return _SSLSocket.send(self, data, flags)
        n: int = write("send", super().send, data, flags)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            write = self._ts_write
        except AttributeError:
            return _SSLSocket.sendall(self, data, flags)
        write("sendall", super().sendall, data, flags)

    # -- teardown -----------------------------------------------------------------------

    def unwrap(self) -> Any:
        return self._ts_simple("unwrap", super().unwrap, lambda s: {"tls": True})

    def _real_close(self) -> None:
        if "_ts_id" not in self.__dict__:  # closing inside _create, before the id was set
            super()._real_close()  # type: ignore[misc]
            return
        rec = self._ts_rec
        start = rec.now()
        fd = self.fileno()
        super()._real_close()  # type: ignore[misc]
        rec.event(self._ts_id, "close", start, {"fd": fd, "tls": True})


def _transport_socket_id(rec: Recorder) -> int | None:
    """The trace id of the socket under the asyncio transport that is wrapping a BIO."""
    sock = transport_socket(sys._getframe(2),
                             lambda s: getattr(s, "_ts_rec", None) is rec)
    return None if sock is None else getattr(sock, "_ts_id", None)


class TracedSSLObject(ssl.SSLObject):
    """An ``ssl.SSLObject`` (TLS over memory BIOs, as asyncio does it), traced."""

    _ts_rec: ClassVar[Recorder]
    _ts_keylog: ClassVar[str | None] = None
    _ts_id = 0

    @classmethod
    def bound_to(cls, recorder: Recorder, keylog: str | None = None) -> type[TracedSSLObject]:
        attrs = {"_ts_rec": recorder, "_ts_keylog": keylog, "__module__": "ssl",
                 "__qualname__": "SSLObject"}
        return type("SSLObject", (cls,), attrs)

    @classmethod
    def _create(cls, incoming: Any, outgoing: Any,
                server_side: bool = False, server_hostname: Any = None, session: Any = None,
                context: Any = None) -> TracedSSLObject:
        rec = cls._ts_rec
        _keylog(context, cls._ts_keylog)
        self: TracedSSLObject = super()._create(  # type: ignore[misc]
            incoming, outgoing, server_side, server_hostname, session, context)
        self._ts_id = sid = rec.new_id()
        transport = _transport_socket_id(rec)
        fields: dict[str, Any] = {"tls": True, "transport": transport,
                                  "server_side": server_side,
                                  "server_hostname": server_hostname}
        if transport is None:
            fields["note"] = "TLS over memory BIOs; the transport's socket is not known"
        rec.event(sid, "wrap_bio", rec.now(), fields)
        return self

    def do_handshake(self) -> None:
        rec = self._ts_rec
        start = rec.now()
        try:
            super().do_handshake()
        except BaseException as exc:
            rec.failure(self._ts_id, "do_handshake", start, exc, {"tls": True})
            raise
        rec.event(self._ts_id, "do_handshake", start, _handshake_fields(self))

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        rec = self._ts_rec
        start = rec.now()
        args = {"bufsize": len}
        try:
            result: Any = super().read(len, buffer)
        except BaseException as exc:
            rec.failure(self._ts_id, "read", start, exc, {"args": args, "tls": True})
            raise
        if buffer is None:
            rec.transfer(self._ts_id, "read", start, buffer_len(result), result, args, _TLS)
        else:
            rec.transfer(self._ts_id, "read", start, result,
                         memoryview(buffer).cast("B")[:result] if rec.payload else None,
                         args, _TLS)
        return result

    def write(self, data: Any) -> int:
        rec = self._ts_rec
        start = rec.now()
        try:
            n = super().write(data)
        except BaseException as exc:
            rec.failure(self._ts_id, "write", start, exc,
                        {"args": {"size": buffer_len(data)}, "tls": True})
            raise
        rec.transfer(self._ts_id, "write", start, n, buffer_bytes(data), _NO_ARGS, _TLS)
        return n

    def unwrap(self) -> None:
        rec = self._ts_rec
        start = rec.now()
        try:
            super().unwrap()
        except BaseException as exc:
            rec.failure(self._ts_id, "unwrap", start, exc, {"tls": True})
            raise
        rec.event(self._ts_id, "unwrap", start, {"tls": True})


__all__ = ["TracedSSLObject", "TracedSSLSocket"]


# A method copied onto another class is ssl.SSLSocket's there (borrowing.py); the
# plaintext ones check for themselves, at no cost on their own sockets.
make_lendable(TracedSSLSocket, ssl.SSLSocket,
              skip=("read", "recv", "recv_into", "write", "send", "sendall"))
