"""TCP segments as plain data, parsed from captured frames without scapy.

Theory of operation. The capture side hands over raw link-layer frames with their
kernel timestamps; everything after that is pure functions on bytes: ``parse_frame``
peels the link header (Ethernet, Linux cooked v1/v2, raw IP, BSD loopback), the IPv4
or IPv6 header and the TCP header, and returns a :class:`Segment`, or None for
anything that is not TCP. Lengths come from the IP header, not from the captured bytes,
so a frame cut short by the snap length still reports its real payload length.

``relativize`` adds Wireshark-style relative sequence numbers: each direction of each
TCP connection counts from its initial sequence number (the SYN is 0, the first data
byte 1). A 4-tuple that is reused (Linux reuses TIME_WAIT ports on loopback) starts a
new count at its new SYN.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

Endpoint = tuple[str, int]

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_NAMES = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"),
               (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"))

# pcap link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, 0x8100


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment: who sent it to whom, when (epoch seconds), and its header."""

    time: float
    src: Endpoint
    dst: Endpoint
    flags: int
    seq: int
    ack: int
    length: int
    window: int = 0
    options: tuple[tuple[str, object], ...] = ()
    rel_seq: int = 0
    rel_ack: int = 0

    @property
    def flag_names(self) -> str:
        """``SYN,ACK``-style flag list, in the order people say them."""
        return ",".join(name for bit, name in _FLAG_NAMES if self.flags & bit) or "none"

    @property
    def is_syn(self) -> bool:
        return bool(self.flags & SYN) and not self.flags & ACK

    @property
    def is_synack(self) -> bool:
        return bool(self.flags & SYN) and bool(self.flags & ACK)

    @property
    def is_fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def is_rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def is_pure_ack(self) -> bool:
        """An ACK carrying nothing: no payload and no SYN/FIN/RST."""
        return self.flags & (SYN | FIN | RST) == 0 and self.length == 0

    @property
    def seq_space(self) -> int:
        """Sequence numbers this segment uses: payload, plus one each for SYN and FIN."""
        return self.length + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


def normalize_host(host: str) -> str:
    """Canonical text of an IP address (IPv4-mapped IPv6 becomes IPv4); others unchanged."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _tcp_options(raw: bytes) -> tuple[tuple[str, object], ...]:
    out: list[tuple[str, object]] = []
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw):
            break
        size = raw[i + 1]
        if size < 2 or i + size > len(raw):
            break
        body = raw[i + 2 : i + size]
        if kind == 2 and size == 4:
            out.append(("MSS", struct.unpack("!H", body)[0]))
        elif kind == 3 and size == 3:
            out.append(("WScale", body[0]))
        elif kind == 4:
            out.append(("SAckOK", None))
        elif kind == 5:
            out.append(("SAck", len(body) // 8))
        elif kind == 8 and size == 10:
            out.append(("Timestamp", struct.unpack("!II", body)))
        else:
            out.append((f"opt{kind}", body.hex()))
        i += size
    return tuple(out)


def _network(frame: bytes, linktype: int) -> tuple[int, int] | None:
    """(ethertype, offset of the IP header) of a frame, or None."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        (etype,) = struct.unpack_from("!H", frame, 12)
        off = 14
        while etype == _ETH_VLAN and len(frame) >= off + 4:
            (etype,) = struct.unpack_from("!H", frame, off + 2)
            off += 4
        return etype, off
    if linktype == LINKTYPE_LINUX_SLL:
        return (struct.unpack_from("!H", frame, 14)[0], 16) if len(frame) >= 16 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return (struct.unpack_from("!H", frame, 0)[0], 20) if len(frame) >= 20 else None
    if linktype == LINKTYPE_NULL:
        if len(frame) < 4:
            return None
        family = int.from_bytes(frame[:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(frame[:4], "big")
        return (_ETH_IPV4 if family == 2 else _ETH_IPV6), 4
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            return None
        return (_ETH_IPV4 if frame[0] >> 4 == 4 else _ETH_IPV6), 0
    return None


def parse_frame(frame: bytes, linktype: int, time: float) -> Segment | None:
    """The TCP segment in a captured frame, or None (not TCP, or too short to tell)."""
    net = _network(frame, linktype)
    if net is None:
        return None
    etype, off = net
    if etype == _ETH_IPV4:
        if len(frame) < off + 20 or frame[off + 9] != 6:
            return None
        ihl = (frame[off] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", frame, off + 2)
        src_ip = str(ipaddress.IPv4Address(frame[off + 12 : off + 16]))
        dst_ip = str(ipaddress.IPv4Address(frame[off + 16 : off + 20]))
        tcp = off + ihl
        ip_payload = total - ihl
    elif etype == _ETH_IPV6:
        # Extension headers are not followed: TCP is expected right after the header.
        if len(frame) < off + 40 or frame[off + 6] != 6:
            return None
        (ip_payload,) = struct.unpack_from("!H", frame, off + 4)
        src_ip = normalize_host(str(ipaddress.IPv6Address(frame[off + 8 : off + 24])))
        dst_ip = normalize_host(str(ipaddress.IPv6Address(frame[off + 24 : off + 40])))
        tcp = off + 40
    else:
        return None
    if len(frame) < tcp + 20:
        return None
    sport, dport, seq, ack, offflags, window = struct.unpack_from("!HHIIHH", frame, tcp)
    hlen = (offflags >> 12) * 4
    options = _tcp_options(frame[tcp + 20 : tcp + hlen]) if hlen > 20 else ()
    return Segment(time=time, src=(src_ip, sport), dst=(dst_ip, dport), flags=offflags & 0xFF,
                   seq=seq, ack=ack, length=max(ip_payload - hlen, 0), window=window,
                   options=options)


def wire_length(frame: bytes, linktype: int) -> int:
    """The frame's length on the wire, from its IP header (at least the bytes present)."""
    net = _network(frame, linktype)
    if net is None:
        return len(frame)
    etype, off = net
    if etype == _ETH_IPV4 and len(frame) >= off + 4:
        (total,) = struct.unpack_from("!H", frame, off + 2)
        return max(len(frame), off + int(total))
    if etype == _ETH_IPV6 and len(frame) >= off + 6:
        (payload,) = struct.unpack_from("!H", frame, off + 4)
        return max(len(frame), off + 40 + int(payload))
    return len(frame)


def flow_key(seg: Segment) -> tuple[Endpoint, Endpoint]:
    """The connection's 4-tuple with the endpoints in a fixed order (either direction)."""
    return (seg.src, seg.dst) if seg.src <= seg.dst else (seg.dst, seg.src)


def relativize(segments: Iterable[Segment]) -> list[Segment]:
    """The segments (in the given order) with ``rel_seq``/``rel_ack`` filled in."""
    isn: dict[tuple[Endpoint, Endpoint], int] = {}  # (src, dst) -> initial seq of src
    out: list[Segment] = []
    for seg in segments:
        here, back = (seg.src, seg.dst), (seg.dst, seg.src)
        if seg.flags & SYN:
            if seg.is_syn and isn.get(here) != seg.seq:
                isn.pop(back, None)  # a new connection on a reused 4-tuple
            isn[here] = seg.seq
        else:
            isn.setdefault(here, (seg.seq - 1) & 0xFFFFFFFF)
        base = isn[here]
        rel_ack = (seg.ack - isn[back]) & 0xFFFFFFFF if back in isn and seg.flags & ACK else 0
        out.append(dataclasses.replace(seg, rel_seq=(seg.seq - base) & 0xFFFFFFFF,
                                       rel_ack=rel_ack))
    return out


__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "Endpoint",
    "Segment",
    "flow_key",
    "normalize_host",
    "parse_frame",
    "relativize",
    "wire_length",
]
