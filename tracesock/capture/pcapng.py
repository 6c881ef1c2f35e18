"""A small pcapng writer and reader (pcap too, for reading), with per-packet comments.

tracesock writes its captures itself rather than through scapy so that reading one
back (``tracesock show --capture``) needs no scapy import, and so the file layout is
ours to test: one Section Header Block, one Interface Description Block (nanosecond
timestamps), then an Enhanced Packet Block per frame whose ``opt_comment`` names the
call the segment belongs to. Wireshark shows it as the packet comment; tshark as the
``frame.comment`` field (``pkt_comment`` before Wireshark 4).

Format reference: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import CaptureError

_SHB, _IDB, _PB, _SPB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000002, 0x00000003, 0x00000006
_BOM = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_USERAPPL, _IF_NAME, _IF_TSRESOL = 4, 2, 9
_PCAP_US, _PCAP_NS = 0xA1B2C3D4, 0xA1B23C4D


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: epoch time, link type, the bytes kept, and its comment."""

    time: float
    linktype: int
    data: bytes
    wire_len: int
    comment: str | None = None


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(opts: Iterable[tuple[int, bytes]]) -> bytes:
    out = b"".join(struct.pack("<HH", code, len(value)) + _pad(value) for code, value in opts)
    return out + struct.pack("<HH", _OPT_END, 0) if out else b""


def _block(kind: int, body: bytes) -> bytes:
    size = 12 + len(body)
    return struct.pack("<II", kind, size) + body + struct.pack("<I", size)


def encode(frames: Iterable[Frame], *, linktype: int, snaplen: int, ifname: str,
           application: str = "tracesock") -> Iterator[bytes]:
    """The blocks of a pcapng file holding ``frames`` (all of one link type)."""
    yield _block(_SHB, struct.pack("<IHHq", _BOM, 1, 0, -1)
                 + _options([(_SHB_USERAPPL, application.encode())]))
    yield _block(_IDB, struct.pack("<HHI", linktype, 0, snaplen)
                 + _options([(_IF_NAME, ifname.encode()), (_IF_TSRESOL, b"\x09")]))
    for f in frames:
        ns = round(f.time * 1e9)
        opts = _options([(_OPT_COMMENT, f.comment.encode())] if f.comment else [])
        yield _block(_EPB, struct.pack("<IIIII", 0, ns >> 32, ns & 0xFFFFFFFF, len(f.data),
                                       max(f.wire_len, len(f.data)))
                     + _pad(f.data) + opts)


def write(path: str, frames: Iterable[Frame], *, linktype: int, snaplen: int,
          ifname: str) -> None:
    """Write ``frames`` to ``path`` as pcapng (mode 0600: captures can hold secrets)."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            for block in encode(frames, linktype=linktype, snaplen=snaplen, ifname=ifname):
                out.write(block)
    except OSError as exc:
        raise CaptureError(f"cannot write the capture {path!r}: {exc.strerror or exc}") from None


# -- reading ------------------------------------------------------------------------------


def _tsresol(value: bytes) -> float:
    v = value[0]
    return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v


def _parse_options(raw: bytes, endian: str) -> Iterator[tuple[int, bytes]]:
    i = 0
    while i + 4 <= len(raw):
        code, size = struct.unpack_from(endian + "HH", raw, i)
        if code == _OPT_END:
            return
        yield code, raw[i + 4 : i + 4 + size]
        i += 4 + size + (-size % 4)


def _read_pcapng(f: BinaryIO, path: str) -> Iterator[Frame]:
    endian = "<"
    ifaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
    while True:
        head = f.read(8)
        if not head:
            return
        if len(head) < 8:
            raise CaptureError(f"{path}: truncated pcapng block header")
        if head[:4] == struct.pack("<I", _SHB):
            bom = f.read(4)
            endian = "<" if bom == struct.pack("<I", _BOM) else ">"
            (size,) = struct.unpack(endian + "I", head[4:])
            body = bom + f.read(size - 12)
            ifaces = []
            if len(body) != size - 8:
                raise CaptureError(f"{path}: truncated pcapng section header")
            continue
        kind, size = struct.unpack(endian + "II", head)
        if size < 12 or size % 4:
            raise CaptureError(f"{path}: bad pcapng block length {size}")
        body = f.read(size - 8)
        if len(body) != size - 8:
            raise CaptureError(f"{path}: truncated pcapng block (the capture was cut short)")
        body = body[:-4]
        if kind == _IDB:
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            unit = 1e-6
            for code, value in _parse_options(body[8:], endian):
                if code == _IF_TSRESOL and value:
                    unit = _tsresol(value)
            ifaces.append((linktype, unit))
        elif kind == _EPB:
            ifid, hi, lo, caplen, wirelen = struct.unpack_from(endian + "IIIII", body, 0)
            if ifid >= len(ifaces):
                raise CaptureError(f"{path}: packet refers to undeclared interface {ifid}")
            linktype, unit = ifaces[ifid]
            data = body[20 : 20 + caplen]
            comment = None
            for code, value in _parse_options(body[20 + caplen + (-caplen % 4) :], endian):
                if code == _OPT_COMMENT:
                    comment = value.decode("utf-8", "replace")
            yield Frame(((hi << 32) | lo) * unit, linktype, data, wirelen, comment)
        elif kind in (_SPB, _PB) and ifaces:
            # Simple/obsolete packet blocks: kept for completeness (SPB has no timestamp).
            if kind == _SPB:
                (wirelen,) = struct.unpack_from(endian + "I", body, 0)
                yield Frame(0.0, ifaces[0][0], body[4 : 4 + wirelen], wirelen)
            else:
                ifid, _drops, hi, lo, caplen, wirelen = struct.unpack_from(
                    endian + "HHIIII", body, 0)
                linktype, unit = ifaces[min(ifid, len(ifaces) - 1)]
                yield Frame(((hi << 32) | lo) * unit, linktype, body[20 : 20 + caplen], wirelen)


def _read_pcap(f: BinaryIO, path: str, magic: bytes) -> Iterator[Frame]:
    for endian in "<>":
        (m,) = struct.unpack(endian + "I", magic)
        if m in (_PCAP_US, _PCAP_NS):
            break
    unit = 1e-9 if m == _PCAP_NS else 1e-6
    rest = f.read(20)
    if len(rest) < 20:
        raise CaptureError(f"{path}: truncated pcap header")
    linktype = struct.unpack_from(endian + "I", rest, 16)[0] & 0x0FFFFFFF
    while True:
        rec = f.read(16)
        if len(rec) < 16:
            return
        sec, frac, caplen, wirelen = struct.unpack(endian + "IIII", rec)
        data = f.read(caplen)
        if len(data) < caplen:
            return
        yield Frame(sec + frac * unit, linktype, data, wirelen)


def read(path: str) -> Iterator[Frame]:
    """The frames of a pcapng (or classic pcap) file, in file order, with comments."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise CaptureError(f"cannot read the capture {path!r}: {exc.strerror or exc}") from None
    with f:
        magic = f.read(4)
        if magic == struct.pack("<I", _SHB):
            f.seek(0)
            yield from _read_pcapng(f, path)
        elif magic in {struct.pack(e + "I", m) for e in "<>" for m in (_PCAP_US, _PCAP_NS)}:
            yield from _read_pcap(f, path, magic)
        else:
            raise CaptureError(f"{path}: not a pcapng or pcap file "
                               f"(starts with {magic.hex() or 'nothing'})")


__all__ = ["Frame", "encode", "read", "write"]
