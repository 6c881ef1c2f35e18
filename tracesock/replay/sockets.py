"""ReplaySocket: a socket that answers from the recording, with no network.

Theory of operation. While replaying, ``socket.socket`` is a ReplaySocket class bound
to a Cassette (session.py installs it). A ReplaySocket
is a real ``socket.socket``: isinstance checks hold and it has a real descriptor, one
end of a private ``socketpair()``. No payload goes through that descriptor: recv
returns the recorded chunk straight from the cassette. The descriptor is there for
select(), poll() and selectors: while the recorded stream is readable (its next recv
is due, or an accept is waiting) one token byte sits in it, and the cassette tells the
socket when to write or drain that byte. The other direction is always writable.

Sockets built from an existing descriptor (``socketpair()``, ``fromfd()``) are plain
local sockets with nothing to replay: the stand-in class hands back a real socket.
"""

from __future__ import annotations

import _socket
import base64
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from ..errors import ReplayError, TracesockError, UsageError
from ..patching import ORIGINAL_SOCKET, StandInMeta, bound_subclass
from ..trace.events import decode_addr
from ..trace.reader import Connection
from .cassette import Cassette
from .records import Record, recorded_error
from .streams import Stream

_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_PEEK = int(socket.MSG_PEEK)  # plain ints: enum arithmetic costs a microsecond per recv
_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0))


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class ReplaySocket(socket.socket, metaclass=StandInMeta):
    """A ``socket.socket`` that answers from a recording instead of the network.

    Inside ``tracesock.replay(path)`` every ``socket.socket(...)`` is one. For unit
    tests, build one from a loaded trace with :meth:`from_connection`, or from chunks
    with :meth:`from_chunks`.
    """

    __slots__ = ("_rs_bound", "_rs_cas", "_rs_dgram", "_rs_family", "_rs_kind",
                 "_rs_nonblocking", "_rs_opts", "_rs_peer", "_rs_proto", "_rs_stream")
    _rs_cassette: Cassette | None = None
    _stand_in = False

    def __new__(cls, family: int = -1, type: int = -1, proto: int = -1,
                fileno: int | None = None, **_: Any) -> ReplaySocket:
        if fileno is not None and cls._stand_in:
            # socketpair(), fromfd(): a descriptor the code already has, nothing to replay.
            return ORIGINAL_SOCKET(family, type, proto, fileno)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                 fileno: int | None = None, *, cassette: Cassette | None = None,
                 _stream: Stream | None = None) -> None:
        cas = cassette if cassette is not None else self._rs_cassette
        if cas is None:
            raise UsageError("ReplaySocket needs a recording: create sockets inside "
                             "'with tracesock.replay(path):' or use "
                             "ReplaySocket.from_connection(...)")
        if fileno is not None:
            raise UsageError("a ReplaySocket cannot wrap an existing file descriptor")
        kind = socket.SOCK_STREAM if type == -1 else type & ~_FLAGS
        ours, peer = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._rs_peer = peer
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM, 0, ours.detach())
        self._rs_cas = cas
        self._rs_stream: Stream | None = None
        self._rs_family = socket.AddressFamily(socket.AF_INET if family == -1 else family)
        self._rs_kind = socket.SocketKind(kind)
        self._rs_dgram = kind == socket.SOCK_DGRAM
        self._rs_nonblocking = self.gettimeout() == 0.0
        self._rs_proto = 0 if proto == -1 else proto
        self._rs_bound: Any = None
        self._rs_opts: dict[tuple[int, int], Any] = {}
        if type != -1 and type & getattr(socket, "SOCK_NONBLOCK", 0):
            self.setblocking(False)
        if _stream is not None:
            self._rs_attach(_stream)

    @classmethod
    def bound_to(cls, cassette: Cassette, *, stand_in: bool = False) -> type[ReplaySocket]:
        """A subclass whose sockets replay from ``cassette``; with ``stand_in`` it also
        impersonates ``socket.socket`` while it replaces it."""
        return bound_subclass(cls, {"_rs_cassette": cassette}, stand_in=stand_in)

    @classmethod
    def from_connection(cls, conn: Connection, *,
                        connections: Mapping[int, Connection] | None = None,
                        check: str = "concat", realtime: bool | float = False,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> ReplaySocket:
        """A socket replaying one connection of a loaded Trace (``trace.connections[n]``).

        It is already matched: recv and send work at once (connect() is accepted and
        answered as recorded). For a listener, pass ``connections=trace.connections``
        so that accept() can hand out the accepted connections.
        """
        evs: Iterable[Any] = conn.events
        if connections:
            evs = [e for c in connections.values() for e in c.events]
            if conn.sock not in connections:
                evs = [*evs, *conn.events]
        cas = Cassette.from_events(evs, path=f"<connection #{conn.sock}>", check=check,
                                   speed=speed_factor(realtime), clock=clock, sleep=sleep)
        st = cas.take(conn.sock)
        return cls(_family(conn.family), _kind(conn.kind), cassette=cas, _stream=st)

    @classmethod
    def from_chunks(cls, chunks: Iterable[bytes], *, family: int = socket.AF_INET,
                    type: int = socket.SOCK_STREAM, eof: bool = True) -> ReplaySocket:
        """A connected socket whose recvs return exactly ``chunks`` (then ``b''`` when
        ``eof``); sends are accepted unchecked. The re-chunking fuzzer builds on this."""
        recs: list[Record] = [{"type": "call", "seq": 1, "t": 0.0, "sock": 1, "op": "socket"},
                              {"type": "call", "seq": 2, "t": 0.0, "sock": 1, "op": "connect",
                               "args": {"address": ["127.0.0.1", 9]}}]
        pieces = [bytes(c) for c in chunks]
        if eof:
            pieces.append(b"")
        for i, chunk in enumerate(pieces):
            if not chunk and i < len(pieces) - 1:
                raise UsageError("an empty chunk means end of stream; only the last may be")
            recs.append({"type": "call", "seq": i + 3, "t": 0.0, "sock": 1, "op": "recv",
                         "nbytes": len(chunk), "args": {"bufsize": len(chunk)},
                         "data": base64.b64encode(chunk).decode("ascii")})
        cas = Cassette(iter([(1, recs)]), path="<chunks>", check="off")
        return cls(family, type, cassette=cas, _stream=cas.take(1))

    # -- identity -----------------------------------------------------------------------

    @property
    def family(self) -> socket.AddressFamily:
        return self._rs_family

    @property
    def type(self) -> socket.SocketKind:
        return self._rs_kind

    @property
    def proto(self) -> int:
        return self._rs_proto

    @property
    def stream(self) -> Stream | None:
        """The recorded socket this one replays (None until connect/bind matched it)."""
        return self._rs_stream

    def _rs_attach(self, st: Stream) -> None:
        self._rs_stream = st
        st.attach(self._rs_notify)

    def _rs_notify(self, ready: bool) -> None:
        # One token byte in our descriptor while readable: select() sees what recv gives.
        if ready:
            self._rs_peer.send(b"\0")
        else:
            _socket.socket.recv(self, 1)

    def _rs_claim(self, how: str, address: Any) -> Stream:
        st = self._rs_stream
        if st is None:
            try:
                st = self._rs_cas.claim(how, self._rs_family.name, self._rs_kind.name, address)
            except TracesockError:
                # Not an OSError, so create_connection() would not close us: this socket
                # can never be replayed anyway.
                self.close()
                raise
            self._rs_attach(st)
        return st

    def _rs_connected(self) -> Stream:
        st = self._rs_stream
        if st is None:
            raise _oserror(errno.EBADF if self.fileno() == -1 else errno.ENOTCONN)
        return st

    # -- connection set-up --------------------------------------------------------------

    def _rs_connect(self, address: Any) -> OSError | None:
        st = self._rs_claim("connect", address)
        rec = st.take_setup(("connect", "connect_ex"))
        if rec is None:
            raise ReplayError(f"{self._rs_cas.path}: {st.describe()}: connect() called, but "
                              "the recording has no (further) connect for this socket")
        if self._rs_cas.speed:
            self._rs_cas.pace(st, rec)
        if rec.get("result"):
            return _oserror(int(rec["result"]))
        if "error" in rec:
            return recorded_error(rec["error"])
        return None

    def connect(self, address: Any, /) -> None:
        exc = self._rs_connect(address)
        if exc is not None:
            raise exc

    def connect_ex(self, address: Any, /) -> int:
        exc = self._rs_connect(address)
        if exc is None:
            return 0
        if exc.errno is None:
            raise exc
        return exc.errno

    def bind(self, address: Any, /) -> None:
        st = self._rs_claim("bind", address)
        rec = st.take_setup(("bind",))
        if rec is not None and "error" in rec:
            raise recorded_error(rec["error"])
        self._rs_bound = address

    def listen(self, *backlog: int) -> None:
        st = self._rs_stream
        if st is None:
            raise ReplayError(f"{self._rs_cas.path}: listen() before bind() cannot be "
                              "matched to a recorded listener")
        rec = st.listen()
        if rec is not None and "error" in rec:
            raise recorded_error(rec["error"])

    def accept(self) -> tuple[socket.socket, Any]:
        st = self._rs_stream
        if st is None or not st.listening:
            raise _oserror(errno.EINVAL)
        while (got := st.accept()) is None:
            self._rs_wait()
        child, address = got
        sock = type(self)(self._rs_family, self._rs_kind, self._rs_proto, cassette=self._rs_cas,
                          _stream=child)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, address

    def _rs_wait(self) -> None:
        # Nothing left to accept: block as a kernel would, until timeout or close().
        timeout = self.gettimeout()
        if timeout == 0.0:
            raise _oserror(errno.EAGAIN)
        ready, _, _ = select.select([self.fileno()], [], [], timeout)
        if getattr(self, "_closed", False) or self.fileno() == -1:
            raise _oserror(errno.EBADF)
        if not ready:
            raise TimeoutError("timed out")

    # -- sending ------------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0, /) -> int:
        return self._rs_connected().send(data, "send")

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        self._rs_connected().send(data, "sendall")

    def sendto(self, data: Any, flags_or_addr: Any, addr: Any = None, /) -> int:
        address = flags_or_addr if addr is None else addr
        return self._rs_claim("sendto", address).send(data, "sendto")

    def sendmsg(self, buffers: Iterable[Any], ancdata: Any = (), flags: int = 0,
                address: Any = None, /) -> int:
        data = b"".join(memoryview(b).cast("B").tobytes() for b in buffers)
        st = self._rs_connected() if address is None else self._rs_claim("sendto", address)
        return st.send(data, "sendmsg")

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        st = self._rs_connected()
        if offset:
            file.seek(offset)
        total = 0
        while count is None or total < count:
            block = file.read(8192 if count is None else min(8192, count - total))
            if not block:
                break
            st.send(block, "sendfile")
            total += len(block)
        if total:
            file.seek(offset + total)
        return total

    # -- receiving ----------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        st = self._rs_stream
        if st is None:
            st = self._rs_connected()
        if flags:
            return st.recv(bufsize, bool(flags & _PEEK),
                           bool(flags & _DONTWAIT) or self._rs_nonblocking, self._rs_dgram)
        return st.recv(bufsize, False, self._rs_nonblocking, self._rs_dgram)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        data = self.recv(nbytes or view.nbytes, flags)
        n = len(data)
        view[:n] = data
        return n

    def _rs_from(self) -> Any:
        st = self._rs_connected()
        rec = st.last
        address = rec.get("args", {}).get("from") if rec is not None else None
        if address is None and self._rs_kind == socket.SOCK_DGRAM:
            return st.raddr
        return decode_addr(address)

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        data = self.recv(bufsize, flags)
        return data, self._rs_from()

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0,
                      /) -> tuple[int, Any]:
        n = self.recv_into(buffer, nbytes, flags)
        return n, self._rs_from()

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0,
                /) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        data = self.recv(bufsize, flags)
        return data, [], 0, self._rs_from()

    # -- state --------------------------------------------------------------------------

    def settimeout(self, value: float | None, /) -> None:
        super().settimeout(value)
        self._rs_nonblocking = value == 0.0

    def setblocking(self, flag: bool, /) -> None:
        super().setblocking(flag)
        self._rs_nonblocking = not flag

    def getsockname(self) -> Any:
        if self.fileno() == -1:
            raise _oserror(errno.EBADF)
        st = self._rs_stream
        if st is not None and st.laddr is not None:
            return st.laddr
        if self._rs_bound is not None:
            return self._rs_bound
        if self._rs_family == socket.AF_INET6:
            return ("::", 0, 0, 0)
        return ("0.0.0.0", 0) if self._rs_family == socket.AF_INET else ""

    def getpeername(self) -> Any:
        st = self._rs_connected()
        if st.raddr is None:
            raise _oserror(errno.ENOTCONN)
        return st.raddr

    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None,
                   /) -> None:
        # Options are remembered, not applied: the descriptor is a Unix socket, and TCP
        # options would fail on it (http.client sets TCP_NODELAY).
        self._rs_opts[(level, optname)] = value

    def getsockopt(self, level: int, optname: int, buflen: int | None = None, /) -> Any:
        if level == socket.SOL_SOCKET and optname == socket.SO_ERROR:
            value: Any = 0
        elif level == socket.SOL_SOCKET and optname == socket.SO_TYPE:
            value = int(self._rs_kind)
        else:
            value = self._rs_opts.get((level, optname), 0)
        if buflen is not None:
            return value if isinstance(value, bytes) else bytes(buflen)
        return value

    def shutdown(self, how: int, /) -> None:
        self._rs_connected().shutdown(how)

    def detach(self) -> int:
        raise ReplayError("detach() on a replayed socket: there is no real connection to "
                          "hand over (TLS via ssl.wrap_socket cannot be replayed at the "
                          "socket level)")

    def dup(self) -> NoReturn:
        raise ReplayError("dup() on a replayed socket is not supported")

    def _real_close(self, _ss: Any = _socket.socket) -> None:
        st = self._rs_stream
        if st is not None:
            st.close()
        self._rs_peer.close()  # wakes a select() or accept() waiting on our end
        _ss.close(self)


def _family(name: str | None) -> int:
    return int(socket.AddressFamily[name]) if name else socket.AF_INET


def _kind(name: str | None) -> int:
    return int(socket.SocketKind[name]) if name else socket.SOCK_STREAM


def speed_factor(realtime: bool | float) -> float:
    if isinstance(realtime, bool):
        return 1.0 if realtime else 0.0
    if realtime <= 0:
        raise UsageError(f"realtime must be True, False or a speed factor > 0, not {realtime}")
    return float(realtime)


__all__ = ["ReplaySocket", "speed_factor"]
