"""What happened on each TCP stream of a capture, per tshark (``tracesock analyze``).

Theory of operation. tshark is the independent reader: it dissects the file, numbers
the streams (``tcp.stream``), makes sequence numbers relative and runs Wireshark's
``tcp.analysis`` (retransmissions, duplicate ACKs, window problems...). It is run once
as ``tshark -T fields`` (tshark.py: one tab-separated line per frame, about 36 times
faster than pyshark's default per-packet XML), and everything here is I/O-free:
``parse_row`` turns a line's fields into a :class:`PacketRow`, ``analyze`` turns rows
into a :class:`CaptureAnalysis`:

* handshake: who sent the SYN (the opener), SYN to SYN/ACK time (what ``connect()``
  waits for: one round trip), SYN to final ACK (tshark's iRTT), each side's MSS and
  window scale options;
* data: segments and payload bytes in each direction;
* teardown: who sent the first FIN (the active close, which ends in TIME_WAIT; both
  sides do when the FINs cross), or who reset the connection;
* tshark's analysis flags, per segment and counted per stream.

A FT_NONE field such as ``tcp.analysis.retransmission`` prints ``1`` in ``-T fields``
output when present and nothing otherwise, so each flag is asked for by name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import TracesockError

Endpoint = tuple[str, int]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# tcp.analysis flags, by tshark field name (all exist since Wireshark 1.12).
ANALYSIS_FLAGS = (
    "retransmission", "fast_retransmission", "spurious_retransmission", "out_of_order",
    "lost_segment", "ack_lost_segment", "duplicate_ack", "window_update", "window_full",
    "zero_window", "zero_window_probe", "zero_window_probe_ack", "keep_alive",
    "keep_alive_ack", "reused_ports",
)
BASE_FIELDS = (
    "frame.number", "frame.time_epoch", "frame.cap_len", "ip.src", "ipv6.src", "ip.dst",
    "ipv6.dst", "tcp.srcport", "tcp.dstport", "tcp.stream", "tcp.flags", "tcp.seq",
    "tcp.ack", "tcp.len", "tcp.window_size_value", "tcp.options.mss_val",
    "tcp.options.wscale.shift",
)
FIELDS = BASE_FIELDS + tuple(f"tcp.analysis.{f}" for f in ANALYSIS_FLAGS)
COMMENT_FIELDS = ("frame.comment", "pkt_comment")  # Wireshark >= 3.6, older

TSHARK_PACKAGE = "tshark"
PROGRESS_MIN_BYTES = 1 << 20  # smaller files are done before a bar would be seen


class TsharkMissing(TracesockError):
    """tshark, which ``analyze`` runs, is not installed."""


class AnalysisError(TracesockError):
    """tshark could not read the capture."""


# -- rows -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketRow:
    """One TCP frame, as tshark dissected it (relative sequence numbers)."""

    frame: int
    time: float
    src: Endpoint
    dst: Endpoint
    stream: int
    flags: int
    seq: int
    ack: int
    length: int
    window: int | None = None
    mss: int | None = None
    wscale: int | None = None
    analysis: tuple[str, ...] = ()
    comment: str = ""

    @property
    def flag_names(self) -> str:
        names = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"))
        return ",".join(n for bit, n in names if self.flags & bit) or "none"


def _int(text: str) -> int | None:
    text = text.split(",", 1)[0]
    if not text:
        return None
    return int(text, 0)


def parse_row(fields: Sequence[str]) -> PacketRow | None:
    """A row from one line of ``tshark -T fields -e FIELDS... [-e comment]``; None if not TCP.

    ``fields`` are in the order of :data:`FIELDS`, optionally followed by the comment.
    """
    if len(fields) < len(FIELDS):
        return None
    (number, epoch, _caplen, ip_src, ip6_src, ip_dst, ip6_dst, sport, dport, stream, flags,
     seq, ack, length, window, mss, wscale) = fields[:len(BASE_FIELDS)]
    if not stream or not sport:
        return None
    flagged = fields[len(BASE_FIELDS):len(FIELDS)]
    return PacketRow(
        frame=int(number),
        time=float(epoch),
        src=((ip_src or ip6_src).split(",", 1)[0], int(sport)),
        dst=((ip_dst or ip6_dst).split(",", 1)[0], int(dport)),
        stream=int(stream),
        flags=_int(flags) or 0,
        seq=_int(seq) or 0,
        ack=_int(ack) or 0,
        length=_int(length) or 0,
        window=_int(window),
        mss=_int(mss),
        wscale=_int(wscale),
        analysis=tuple(name for name, v in zip(ANALYSIS_FLAGS, flagged, strict=True) if v),
        comment=fields[len(FIELDS)] if len(fields) > len(FIELDS) else "",
    )


# -- the analysis (I/O-free) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    """The three-way handshake as seen in the capture (frames are tshark's numbers)."""

    opener: Endpoint  # sent the SYN: the client, whose connect() started it
    listener: Endpoint
    syn_frame: int | None
    synack_frame: int | None
    ack_frame: int | None
    rtt: float | None  # SYN -> SYN/ACK: what connect() waits for
    initial_rtt: float | None  # SYN -> final ACK (tshark's iRTT)
    opener_mss: int | None = None
    listener_mss: int | None = None
    opener_wscale: int | None = None
    listener_wscale: int | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.syn_frame, self.synack_frame, self.ack_frame)


@dataclass(frozen=True, slots=True)
class Direction:
    """Segments from one endpoint to the other."""

    src: Endpoint
    dst: Endpoint
    segments: int
    data_segments: int
    bytes: int  # payload, each byte once (retransmissions not counted again)
    retransmitted_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Teardown:
    """How the stream ended: ``fin`` (both FINs seen), ``half`` (one FIN), ``rst``, ``open``."""

    kind: str
    active_closer: Endpoint | None = None  # sent the first FIN
    passive_closer: Endpoint | None = None
    time_wait: tuple[Endpoint, ...] = ()  # who ends in TIME_WAIT
    reset_by: Endpoint | None = None
    fin_frames: tuple[int, ...] = ()
    rst_frame: int | None = None
    simultaneous: bool = False


@dataclass(frozen=True, slots=True)
class StreamAnalysis:
    stream: int
    client: Endpoint
    server: Endpoint
    packets: int
    start: float
    duration: float
    handshake: Handshake | None
    directions: tuple[Direction, ...]
    teardown: Teardown
    analysis_flags: dict[str, int]
    rows: tuple[PacketRow, ...] = field(repr=False, default=())

    @property
    def refused(self) -> bool:
        """A SYN answered by RST: no process listened on the port."""
        hs = self.handshake
        return (hs is not None and hs.synack_frame is None and
                self.teardown.reset_by == self.server)


@dataclass(frozen=True, slots=True)
class CaptureAnalysis:
    path: str
    packets: int  # frames in the file (TCP or not)
    tcp_packets: int
    streams: tuple[StreamAnalysis, ...]


def _handshake(rows: Sequence[PacketRow]) -> Handshake | None:
    syn = next((r for r in rows if r.flags & SYN and not r.flags & ACK), None)
    if syn is None:
        return None
    synack = next((r for r in rows if r.flags & SYN and r.flags & ACK and r.src == syn.dst),
                  None)
    ack = None
    if synack is not None:
        ack = next((r for r in rows if r.frame > synack.frame and r.src == syn.src
                    and r.flags & ACK and not r.flags & (SYN | RST)), None)
    return Handshake(
        opener=syn.src, listener=syn.dst,
        syn_frame=syn.frame,
        synack_frame=synack.frame if synack else None,
        ack_frame=ack.frame if ack else None,
        rtt=(synack.time - syn.time) if synack else None,
        initial_rtt=(ack.time - syn.time) if ack else None,
        opener_mss=syn.mss, listener_mss=synack.mss if synack else None,
        opener_wscale=syn.wscale, listener_wscale=synack.wscale if synack else None,
    )


def _teardown(rows: Sequence[PacketRow]) -> Teardown:
    fins: dict[Endpoint, PacketRow] = {}
    for r in rows:
        if r.flags & FIN and r.src not in fins and "retransmission" not in r.analysis:
            fins[r.src] = r
    rst = next((r for r in rows if r.flags & RST), None)
    ordered = sorted(fins.values(), key=lambda r: r.frame)
    frames = tuple(r.frame for r in ordered)
    if rst is not None:
        active = ordered[0].src if ordered else None
        return Teardown("rst", active_closer=active, reset_by=rst.src, fin_frames=frames,
                        rst_frame=rst.frame)
    if not ordered:
        return Teardown("open")
    first = ordered[0]
    if len(ordered) == 1:
        return Teardown("half", active_closer=first.src, passive_closer=first.dst,
                        fin_frames=frames)
    second = ordered[1]
    # The FINs crossed if the second was sent before its sender had the first one.
    first_end = first.seq + first.length + 1
    crossed = not (second.flags & ACK) or second.ack < first_end
    waiting = (first.src, second.src) if crossed else (first.src,)
    return Teardown("fin", active_closer=first.src, passive_closer=second.src,
                    time_wait=waiting, fin_frames=frames, simultaneous=crossed)


def _is_retransmission(r: PacketRow) -> bool:
    return any(f.endswith("retransmission") for f in r.analysis)


def analyze_stream(stream: int, rows: Sequence[PacketRow]) -> StreamAnalysis:
    """The analysis of one TCP stream from its rows (in frame order)."""
    hs = _handshake(rows)
    first = rows[0]
    client, server = (hs.opener, hs.listener) if hs else (first.src, first.dst)
    directions = []
    for src, dst in ((client, server), (server, client)):
        mine = [r for r in rows if r.src == src]
        data = [r for r in mine if r.length]
        again = sum(r.length for r in data if _is_retransmission(r))
        directions.append(Direction(src, dst, len(mine), len(data),
                                    sum(r.length for r in data) - again, again))
    flags = Counter(f for r in rows for f in r.analysis)
    return StreamAnalysis(
        stream=stream, client=client, server=server, packets=len(rows),
        start=first.time, duration=rows[-1].time - first.time, handshake=hs,
        directions=tuple(directions), teardown=_teardown(rows),
        analysis_flags=dict(sorted(flags.items())), rows=tuple(rows),
    )


def analyze(rows: Iterable[PacketRow | None], path: str = "") -> CaptureAnalysis:
    """Group rows by tshark's stream number and analyse each stream. None rows count as
    frames that are not TCP."""
    streams: dict[int, list[PacketRow]] = {}
    frames = 0
    for row in rows:
        frames += 1
        if row is not None:
            streams.setdefault(row.stream, []).append(row)
    analysed = tuple(analyze_stream(n, sorted(rs, key=lambda r: r.frame))
                     for n, rs in sorted(streams.items()))
    return CaptureAnalysis(path, frames, sum(s.packets for s in analysed), analysed)


def endpoint_text(ep: Endpoint | None) -> str:
    if ep is None:
        return "-"
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_json(result: CaptureAnalysis) -> dict[str, Any]:
    """Plain JSON-able dict of the analysis (endpoints as "host:port")."""
    def conv(value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) \
                and isinstance(value[1], int):
            return endpoint_text(value)
        if isinstance(value, (list, tuple)):
            return [conv(v) for v in value]
        if isinstance(value, dict):
            return {k: conv(v) for k, v in value.items()}
        return value

    streams = []
    for s in result.streams:
        d = conv(asdict(s))
        d["refused"] = s.refused
        if s.handshake is not None:
            d["handshake"]["complete"] = s.handshake.complete
        for r in d["rows"]:
            r["flag_names"] = ",".join(
                n for bit, n in ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"),
                                 (ACK, "ACK")) if r["flags"] & bit)
        d["segments"] = d.pop("rows")
        streams.append(d)
    return {"capture": result.path, "packets": result.packets,
            "tcp_packets": result.tcp_packets, "streams": streams}
