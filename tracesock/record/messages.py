"""TracedSocket's less common calls: scatter/gather messages, files, datagrams into buffers.

A mixin of TracedSocket (sockets.py), kept apart so that each module reads in one
sitting; the methods are the same thin adapters: clock, real call, record.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .calls import buffer_len

if TYPE_CHECKING:
    from .recorder import Recorder


class MessageCalls(socket.socket):
    """sendmsg, sendfile, recvfrom_into and recvmsg, recorded."""

    __slots__ = ()
    if TYPE_CHECKING:
        _ts_rec: Recorder
        _ts_id: int

    def sendmsg(self, buffers: Iterable[Any], ancdata: Any = (), flags: int = 0,
                address: Any = None, /) -> int:
        rec = self._ts_rec
        bufs = list(buffers)
        args: dict[str, Any] = {"buffers": len(bufs)}
        if flags:
            args["flags"] = flags
        if address is not None:
            args["address"] = address
        start = rec.now()
        try:
            if address is None:
                n = super().sendmsg(bufs, ancdata, flags)
            else:
                n = super().sendmsg(bufs, ancdata, flags, address)
        except BaseException as exc:
            rec.failure(self._ts_id, "sendmsg", start, exc, {"args": args})
            raise
        joined = b"".join(bytes(memoryview(b).cast("B")) for b in bufs) if rec.payload else None
        rec.transfer(self._ts_id, "sendmsg", start, n, joined, args)
        return n

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        rec = self._ts_rec
        args: dict[str, Any] = {"offset": offset, "count": count}
        start = rec.now()
        try:
            n = super().sendfile(file, offset, count)
        except BaseException as exc:
            rec.failure(self._ts_id, "sendfile", start, exc, {"args": args})
            raise
        rec.transfer(self._ts_id, "sendfile", start, n, None, args)
        return n

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0,
                      /) -> tuple[int, Any]:
        rec = self._ts_rec
        start = rec.now()
        args: dict[str, Any] = {"bufsize": nbytes or buffer_len(buffer)}
        if flags:
            args["flags"] = flags
        try:
            n, address = super().recvfrom_into(buffer, nbytes, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "recvfrom_into", start, exc, {"args": args})
            raise
        args["from"] = address
        rec.transfer(self._ts_id, "recvfrom_into", start, n,
                     memoryview(buffer).cast("B")[:n] if rec.payload else None, args)
        return n, address

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0,
                /) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        rec = self._ts_rec
        start = rec.now()
        args: dict[str, Any] = {"bufsize": bufsize}
        if ancbufsize:
            args["ancbufsize"] = ancbufsize
        if flags:
            args["flags"] = flags
        try:
            result = super().recvmsg(bufsize, ancbufsize, flags)
        except BaseException as exc:
            rec.failure(self._ts_id, "recvmsg", start, exc, {"args": args})
            raise
        data, ancdata, msg_flags, address = result
        args["msg_flags"] = msg_flags
        if address is not None:
            args["from"] = address
        if ancdata:
            args["ancdata"] = len(ancdata)
        rec.transfer(self._ts_id, "recvmsg", start, len(data), data, args)
        return result
