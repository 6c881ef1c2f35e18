"""TLS in replay: the plaintext the recording holds, with no handshake and no network.

Theory of operation. While replaying, ``ssl.SSLContext.sslsocket_class`` is
``ReplaySSLSocket``: ``wrap_socket`` skips the handshake and returns the replayed socket
itself, given the TLS methods: plaintext in, plaintext out, no certificates and no
network. ``wrap_bio`` over a replayed asyncio transport (``ReplaySSLObject``) is a
pass-through too, and the transport's socket is fed the SSLObject's recorded plaintext
(``PlaintextStream``). The recording's TLS records carry ``"tls": true`` (record/tls.py).
"""

from __future__ import annotations

import errno
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ReplayError
from ..patching import transport_socket
from .sockets import ReplaySocket
from .streams import Stream


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
        sock = transport_socket(sys._getframe(2), lambda s: isinstance(s, ReplaySocket))
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


__all__ = ["PlaintextStream", "ReplaySSLObject", "ReplaySSLSocket", "plaintext_for"]
