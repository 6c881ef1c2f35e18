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

Replay (``ReplaySSLSocket``): ``wrap_socket`` skips the handshake and returns the
replayed socket itself, given the TLS methods: plaintext in, plaintext out, no
certificates and no network. ``wrap_bio`` over a replayed asyncio transport
(``ReplaySSLObject``) is a pass-through too, and the transport's socket is fed the
SSLObject's recorded plaintext (PlaintextStream, below).
"""

from __future__ import annotations

import errno
import os
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .cassette import Stream
from .errors import ReplayError
from .recorder import Recorder, buffer_bytes, buffer_len
from .replay import ReplaySocket
from .sockets import record_call

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
        return self._ts_read("read", super().read, {"bufsize": len}, buffer, len, buffer)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        args = {"bufsize": buflen, "flags": flags} if flags else {"bufsize": buflen}
        data: bytes = self._ts_read("recv", super().recv, args, None, buflen, flags)
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        args = {"bufsize": nbytes or buffer_len(buffer)}
        n: int = self._ts_read("recv_into", super().recv_into, args, buffer, buffer, nbytes,
                               flags)
        return n

    def write(self, data: Any) -> int:
        n: int = self._ts_write("write", super().write, data)
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        n: int = self._ts_write("send", super().send, data, flags)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._ts_write("sendall", super().sendall, data, flags)

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


def _transport_socket(frame: Any, ours: Callable[[Any], bool]) -> Any:
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


def _transport_socket_id(rec: Recorder) -> int | None:
    """The trace id of the socket under the asyncio transport that is wrapping a BIO."""
    sock = _transport_socket(sys._getframe(2),
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


# -- replay -----------------------------------------------------------------------------


class _ReplayTLSAnswers:
    """What replay says about a TLS session it never had: no certificate, no cipher."""

    __slots__ = ()

    def pending(self) -> int:
        return 0

    def version(self) -> str | None:
        return None

    def cipher(self) -> None:
        return None

    def shared_ciphers(self) -> None:
        return None

    def compression(self) -> None:
        return None

    def selected_alpn_protocol(self) -> None:
        return None

    def getpeercert(self, binary_form: bool = False) -> Any:
        return None if binary_form else {}


class _ReplayTLSMethods(_ReplayTLSAnswers):
    """What an SSLSocket has beyond a socket, for a replayed socket: plaintext as is."""

    __slots__ = ()
    server_side = False

    def do_handshake(self, block: bool = False) -> None:
        return None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        sock: Any = self
        if buffer is None:
            return sock.recv(len)
        return sock.recv_into(buffer, len)

    def write(self, data: Any) -> int:
        sock: Any = self
        n: int = sock.send(data)
        return n

    def unwrap(self) -> Any:
        return self


class ReplaySSLSocket:
    """Stands in for ``SSLContext.sslsocket_class`` during replay: no handshake, the
    replayed socket (plaintext) comes back with the TLS methods added."""

    @classmethod
    def _create(cls, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                suppress_ragged_eofs: bool = True, server_hostname: Any = None,
                context: Any = None, session: Any = None) -> Any:
        base: Any = type(sock)
        sock.__class__ = type(base)(base.__name__, (_ReplayTLSMethods, base),
                                    {"__slots__": (), "server_hostname": server_hostname,
                                     "__module__": base.__module__})
        return sock


# TLS over memory BIOs (asyncio ssl=). Recorded, the transport's socket carries the
# ciphertext and the SSLObject, an id of its own whose wrap_bio names that socket, the
# plaintext. Replayed, the SSLObject is a pass-through (ReplaySSLObject) and the replayed
# socket carries the plaintext: at wrap_bio it is given a PlaintextStream, which answers
# its recvs from the recorded reads of the SSLObject. asyncio's SSL protocol reads in a
# loop until SSLWantReadError and hands what it got to the app as ONE data_received:
# recorded reads up to the next recorded SSLWantReadError are one recv, so the app sees
# the chunks it saw. A recorded read of b'' (close_notify) is the socket's FIN; when the
# SSLObject's reads run out, the socket's own recorded FIN or error (never its ciphertext)
# ends the stream. Writes are checked against the SSLObject's recorded writes, in write().


class PlaintextStream(Stream):
    """A replayed transport socket's stream under TLS over memory BIOs: the recorded
    plaintext of the SSLObject (``bio``), then the end of the socket's own (``transport``)."""

    _RUN = 1 << 30  # recv size while collecting a run: the whole recorded read

    def __init__(self, bio: Stream, transport: Stream) -> None:
        super().__init__(bio.cassette, transport.sid)
        self.bio = bio
        self.transport = transport
        self.family, self.kind = transport.family, transport.kind
        self.laddr, self.raddr = transport.laddr, transport.raddr
        self.claimed = True
        self.buf = b""  # what the last run gave that the code has not read yet
        self.held: bytes | BaseException | None = None  # what ended the last run
        self.bio_ready = False

    def attach(self, notify: Callable[[bool], None]) -> None:
        with self.cassette.lock:
            self.notify = notify
            self.bio.attach(self._bio_readable)
            self._tell()

    def _bio_readable(self, ready: bool) -> None:
        self.bio_ready = ready
        self._tell()

    def _tell(self) -> None:
        with self.cassette.lock:
            ready = self._due() and not self.done
            if ready is not self.ready:
                self.ready = ready
                if self.notify is not None:
                    self.notify(ready)

    def _due(self) -> bool:
        if self.buf or self.held is not None:
            return True
        bio = self.bio
        if not self.bio_ready:
            return False
        if bio.eof or not bio.exhausted():
            return True
        return bio.all_sent()  # the transport's end: once the code has sent all it sent

    def recv(self, bufsize: int, peek: bool = False, nonblocking: bool = False,
             dgram: bool = False) -> bytes:
        # Not under the cassette's lock: the bio's recv paces itself with realtime=.
        if self.done:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        try:
            if not self.buf:
                self.buf = self._run(nonblocking)
            out = self.buf[:bufsize]
            if not peek:
                self.buf = self.buf[len(out):]
            return out
        finally:
            self._tell()

    def _run(self, nonblocking: bool) -> bytes:
        """The recorded reads up to the next SSLWantReadError, joined (b'' at the end)."""
        held, self.held = self.held, None
        if isinstance(held, BaseException):
            raise held
        if held is not None:
            return held
        parts: list[bytes] = []
        while True:
            try:
                chunk = self._read(nonblocking)
            except ssl.SSLWantReadError:  # the end of a run: where asyncio stopped reading
                if parts:
                    break
                continue
            except BlockingIOError:
                if parts:
                    break
                raise
            except (OSError, ReplayError) as exc:
                if parts:
                    self.held = exc
                    break
                raise
            if not chunk:
                if parts:
                    self.held = b""
                    break
                return b""
            parts.append(chunk)
        return b"".join(parts)

    def _read(self, nonblocking: bool) -> bytes:
        bio = self.bio
        if bio.eof or not bio.exhausted():  # after close_notify, recv gives b'' again
            return bio.recv(self._RUN, False, nonblocking)
        # The SSLObject's reads ran out: the socket's own FIN or error ends the stream
        # (its ciphertext was dropped), after the code has sent all it sent.
        if nonblocking and not bio.all_sent():
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return self.transport.recv(self._RUN)

    def write(self, data: Any) -> int:
        """Plaintext the code writes through the SSLObject: checked against its recorded
        writes (a ReplayError also goes to the replay's errors: asyncio catches it)."""
        try:
            n = self.bio.send(data, "write")
        except ReplayError as exc:
            self.cassette.errors.append(exc)
            raise
        self._tell()
        return n

    def send(self, data: Any, op: str) -> int:
        # The plaintext asyncio flushes from the outgoing BIO: checked already, in write().
        if self.done:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return memoryview(data).nbytes

    def close(self) -> None:
        with self.cassette.lock:
            self.done = True
            self.notify = None
            self.bio.close()
            self.transport.close()


def plaintext_for(sock: ReplaySocket) -> PlaintextStream:
    """Make replayed ``sock`` carry the plaintext of the recorded SSLObject over it."""
    transport = sock.stream
    if transport is None:
        raise ReplayError("TLS over memory BIOs on a replayed socket that matched no "
                          "recorded connection")
    bio = transport.cassette.tls_over(transport)
    plain = PlaintextStream(bio, transport)
    transport.carry_ciphertext()
    sock._rs_attach(plain)  # the replayed socket answers from the plaintext from now on
    return plain


class ReplaySSLObject(_ReplayTLSAnswers, ssl.SSLObject):
    """Stands in for ``SSLContext.sslobject_class`` during replay. Over a replayed socket
    (asyncio ``ssl=``, ``start_tls``): a pass-through, no handshake and no certificate;
    ``read`` hands back what came into the incoming BIO (the recorded plaintext),
    ``write`` checks the plaintext against the recording and puts it in the outgoing
    BIO. Anywhere else (BIOs the program pumps itself) a real ``SSLObject``."""

    _rs_incoming: ssl.MemoryBIO
    _rs_outgoing: ssl.MemoryBIO
    _rs_plain: PlaintextStream
    _rs_server_side: bool
    _rs_server_hostname: str | None
    _rs_context: Any

    @classmethod
    def _create(cls, incoming: Any, outgoing: Any, server_side: bool = False,
                server_hostname: Any = None, session: Any = None,
                context: Any = None) -> Any:
        sock = _transport_socket(sys._getframe(2), lambda s: isinstance(s, ReplaySocket))
        if sock is None:
            return ssl.SSLObject._create(incoming, outgoing, server_side,  # type: ignore[attr-defined]
                                         server_hostname, session, context)
        self = cls.__new__(cls)
        self._rs_incoming, self._rs_outgoing = incoming, outgoing
        self._rs_server_side = server_side
        self._rs_server_hostname = server_hostname
        self._rs_context = context
        try:
            self._rs_plain = plaintext_for(sock)
        except ReplayError:
            sock.close()  # asyncio would leave it open, and it can never be replayed
            raise
        return self

    @property
    def context(self) -> Any:
        return self._rs_context

    @context.setter
    def context(self, ctx: Any) -> None:
        self._rs_context = ctx

    @property
    def session(self) -> Any:
        return None

    @session.setter
    def session(self, session: Any) -> None:
        pass  # no session to resume: nothing was negotiated

    @property
    def session_reused(self) -> bool:
        return False

    @property
    def server_side(self) -> bool:
        return self._rs_server_side

    @property
    def server_hostname(self) -> str | None:
        return self._rs_server_hostname

    def do_handshake(self) -> None:
        return None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = self._rs_incoming.read(len)
        if not data and not self._rs_incoming.eof:
            raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ,
                                       "The operation did not complete (read)")
        if buffer is None:
            return data
        n = memoryview(data).nbytes
        memoryview(buffer).cast("B")[:n] = data
        return n

    def write(self, data: Any) -> int:
        n = self._rs_plain.write(data)  # a mismatch reaches the app as connection_lost(exc)
        self._rs_outgoing.write(memoryview(data)[:n])
        return n

    def unwrap(self) -> None:
        return None

    def selected_npn_protocol(self) -> None:
        return None

    def get_channel_binding(self, cb_type: str = "tls-unique") -> None:
        return None

    def verify_client_post_handshake(self) -> None:
        return None


__all__ = ["PlaintextStream", "ReplaySSLObject", "ReplaySSLSocket", "TracedSSLObject",
           "TracedSSLSocket"]
