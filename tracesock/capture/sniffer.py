"""Loopback capture with scapy: the traced connections' segments, joined with their calls.

Theory of operation. ``CaptureSession.start()`` opens one AF_PACKET socket (scapy's
``L2ListenSocket``) on the interface, lets the kernel filter and size the traffic, and
hands the socket to an ``AsyncSniffer`` thread that only appends ``(time, bytes)``
pairs: no dissection on the traced program's time. ``stop(trace_path)`` waits a short
bounded grace period, stops the thread, drains what the kernel still holds, and then,
with the finished trace in hand, keeps the segments of the traced connections, joins
each with its call (``timeline.join``) and writes pcapng with one comment per packet.

Each trap measured on loopback has its answer here:

* Loopback hands a packet socket every packet twice (once going out, once coming in,
  byte-identical). The BPF program starts with libpcap's ``inbound``, which tests the
  kernel's packet type, so the outgoing copy never leaves the kernel.
* scapy's default receive buffer overflows on a burst of a hundred-odd packets. The
  socket gets 4 MiB (``SO_RCVBUFFORCE`` as root, ``SO_RCVBUF`` up to
  ``net.core.rmem_max`` otherwise, with a warning when it comes out smaller).
* Filtering happens in the kernel, compiled by libpcap ("Cannot set filter" without
  it): by default TCP segments with SYN, FIN or RST set, plus segments without payload
  (the ACK that completes a handshake and the ACK of a FIN carry no flag a stateless
  filter could test; the other pure ACKs are dropped when joining). The snap length
  becomes the filter's return value, so truncation also happens in the kernel.
* ``AsyncSniffer.start()`` returns before the socket is read: ``start()`` waits for
  ``started_callback`` (bounded), and fails with the sniffer's own error if it died.
* Stopping as the program ends would lose the last FIN/ACK: ``stop()`` runs after the
  trace is closed and waits until the interface has been quiet for a moment (bounded),
  then drains the socket after the sniffer thread has stopped.
* Kernel drops are read from ``PACKET_STATISTICS`` and reported, never hidden.
* Capture needs root or CAP_NET_RAW; without it ``start()`` raises a one-line
  ``CaptureError`` saying how to grant it.
* Loopback is the default interface. For other destinations ``interface_for()`` asks
  scapy's routing table; passing an IP address as ``iface`` does the same.

scapy is imported inside the functions that need it (it takes a while to import and
is an optional dependency): ``import tracesock`` never imports it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CaptureError, TracesockError, UsageError
from ..errors import stderr_warn as _stderr_warn
from . import pcapng
from .segments import Segment, parse_frame, relativize, wire_length

Warn = Callable[[str], None]

DEFAULT_IFACE = "lo"
BUFFER_SIZE = 4 << 20
START_TIMEOUT = 5.0  # seconds start() waits for the sniffer thread
GRACE_QUIET = 0.05  # stop() waits until no packet came for this long...
GRACE_MAX = 0.5  # ...but never longer than this
_MAX_RECV = 0xFFFF  # scapy's receive size: the effective snap length can't exceed it

_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_SO_RCVBUFFORCE = 33

# Offsets: the TCP flags are byte 13 of the TCP header; FIN|SYN|RST = 7. IPv6 TCP is
# taken to follow the fixed 40-byte header (true of loopback and of almost all TCP).
_FLAGS4 = "(ip and tcp and tcp[13] & 7 != 0)"
_BARE4 = "(ip and tcp and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) = 0)"
_FLAGS6 = "(ip6 and ip6[6] = 6 and ip6[53] & 7 != 0)"
_BARE6 = "(ip6 and ip6[6] = 6 and ip6[4:2] - ((ip6[52] & 0xf0) >> 2) = 0)"


def capture_filter(*, capture_all: bool, inbound_only: bool) -> str:
    """The libpcap filter expression the kernel runs on each packet."""
    what = "tcp" if capture_all else f"({_FLAGS4} or {_BARE4} or {_FLAGS6} or {_BARE6})"
    return f"inbound and {what}" if inbound_only else what


def need_privilege_message() -> str:
    python = os.path.realpath(sys.executable)
    return ("packet capture needs root or the CAP_NET_RAW capability: run as root, or "
            f"grant it with 'sudo setcap cap_net_raw+ep {python}'")


def interface_for(destination: str) -> str:
    """The interface scapy's routing table sends traffic for ``destination`` through."""
    from scapy.config import conf
    from scapy.interfaces import network_name

    try:
        ip = ipaddress.ip_address(destination)
    except ValueError:
        raise UsageError(f"capture: {destination!r} is not an IP address") from None
    if ip.version == 6:
        import scapy.route6  # noqa: F401 - sets conf.route6

        iface = conf.route6.route(str(ip))[0]
    else:
        iface = conf.route.route(str(ip))[0]
    return str(network_name(iface))


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """What a capture saw: frames read, segments kept in the file, kernel drops."""

    path: str
    iface: str
    seen: int
    kept: int
    dropped: int


class CaptureSession:
    """Sniffs one interface while a trace is recorded, then writes the joined pcapng.

    ``start()`` before the traced code runs, ``stop(trace_path)`` after its trace is
    closed. ``capture_all`` keeps data segments and pure ACKs too; ``iface`` is an
    interface name, or an IP address whose route picks it (default: loopback).
    """

    def __init__(
        self,
        path: str,
        *,
        capture_all: bool = False,
        iface: str | None = None,
        snaplen: int = 262144,
        warn: Warn = _stderr_warn,
    ) -> None:
        if snaplen < 96:
            raise UsageError("capture: snaplen must be at least 96 bytes (the headers)")
        self.path = path
        self.capture_all = capture_all
        self.snaplen = snaplen
        self._iface_arg = iface
        self._warn = warn
        self.iface = DEFAULT_IFACE
        self._frames: list[tuple[float, bytes]] = []
        self._sniffer: Any = None
        self._socket: Any = None
        self._linktype = 1  # Ethernet, which loopback also uses
        self.stats: CaptureStats | None = None
        # The idents of the threads this session runs (the sniffer's): they are
        # tracesock's, not the program's, so recording skips what they ask of the
        # clock (scapy stamps every packet with time.time()).
        self.threads: set[int] = set()

    # -- starting -----------------------------------------------------------------------

    def _resolve_iface(self) -> str:
        arg = self._iface_arg
        if arg is None:
            return DEFAULT_IFACE
        try:
            ipaddress.ip_address(arg)
        except ValueError:
            return arg
        return interface_for(arg)

    def _open_socket(self) -> Any:
        try:
            import scapy.layers.l2  # noqa: F401 - link types, else scapy warns it can't guess
            from scapy.arch.linux import L2ListenSocket
            from scapy.config import conf
            from scapy.data import ARPHRD_TO_DLT
            from scapy.error import Scapy_Exception
        except ImportError as exc:
            raise CaptureError(f"capture needs scapy ({exc}): pip install "
                               "'tracesock[capture]'") from None
        loopback = self.iface == DEFAULT_IFACE or self.iface.startswith("lo")
        expr = capture_filter(capture_all=self.capture_all, inbound_only=loopback)
        try:
            sock = L2ListenSocket(iface=self.iface, filter=expr, promisc=False)
        except PermissionError:
            raise CaptureError(need_privilege_message()) from None
        except Scapy_Exception as exc:
            raise CaptureError(f"cannot set the capture filter ({exc}); BPF filters need "
                               "libpcap (e.g. apt install libpcap0.8)") from None
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise CaptureError(need_privilege_message()) from None
            raise CaptureError(f"cannot capture on {self.iface!r}: "
                               f"{exc.strerror or exc}") from None
        try:
            sock.LL = conf.raw_layer  # keep bytes; parsing happens after the run
            hatype = sock.ins.getsockname()[3]
            self._linktype = int(ARPHRD_TO_DLT.get(hatype, 1))
            if self.snaplen < _MAX_RECV:
                _attach_filter(sock.ins, expr, self._linktype, self.snaplen)
            self._size_buffer(sock.ins)
        except BaseException:
            sock.close()
            raise
        return sock

    def _size_buffer(self, ins: socket.socket) -> None:
        try:
            ins.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, BUFFER_SIZE)
        except OSError:
            ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_SIZE)
        got = ins.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # the kernel doubles it
        if got < BUFFER_SIZE:
            self._warn(f"capture buffer is {got >> 10} KiB, not {BUFFER_SIZE >> 10} KiB "
                       "(raise net.core.rmem_max or run as root): bursts may be dropped")

    def start(self) -> None:
        """Open the capture and return once the sniffer is really reading."""
        if self._sniffer is not None:
            raise UsageError("capture: start() called twice")
        self.iface = self._resolve_iface()
        sock = self._open_socket()
        try:  # fail now, not after the whole run, if the file cannot be written
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            sock.close()
            raise CaptureError(f"cannot write the capture {self.path!r}: "
                               f"{exc.strerror or exc}") from None
        from scapy.sendrecv import AsyncSniffer

        ready = threading.Event()
        frames = self._frames
        threads = self.threads

        def started() -> None:  # in the sniffer thread, before it reads a packet
            threads.add(threading.get_ident())
            ready.set()

        def keep(pkt: Any) -> None:
            frames.append((float(pkt.time), bytes(pkt.load)))

        sniffer = AsyncSniffer(opened_socket=sock, store=False, prn=keep,
                               started_callback=started)
        sniffer.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.01):
            thread = sniffer.thread
            if time.monotonic() > deadline or thread is None or not thread.is_alive():
                sock.close()
                why = sniffer.exception or "it did not start in time"
                raise CaptureError(f"capture on {self.iface!r} failed to start: {why}")
        self._sniffer, self._socket = sniffer, sock
        _statistics(sock.ins)  # reading resets the counters: count from here on

    # -- stopping -----------------------------------------------------------------------

    def _grace(self) -> None:
        start = last_change = time.monotonic()
        seen = len(self._frames)
        while True:
            now = time.monotonic()
            if now - last_change >= GRACE_QUIET or now - start >= GRACE_MAX:
                return
            time.sleep(0.01)
            if len(self._frames) != seen:
                seen, last_change = len(self._frames), time.monotonic()

    def _halt(self) -> int:
        """Stop the sniffer, drain the socket, close it; the kernel's drop count."""
        sniffer, sock = self._sniffer, self._socket
        self._sniffer = self._socket = None
        try:
            sniffer.stop(join=True)
        except Exception as exc:
            self._warn(f"capture thread ended with an error: {exc}")
        try:
            for _ in range(1_000_000):  # bounded: the socket is no longer read elsewhere
                if not select.select([sock.ins], [], [], 0)[0]:
                    break
                pkt = sock.recv()
                if pkt is not None:
                    self._frames.append((float(pkt.time), bytes(pkt.load)))
            return _statistics(sock.ins)[1]
        finally:
            sock.close()

    def abort(self) -> None:
        """Stop capturing and write nothing."""
        if self._sniffer is not None:
            self._halt()
        self._frames.clear()

    def stop(self, trace_path: str) -> CaptureStats:
        """Stop capturing and write the traced connections' segments to ``self.path``."""
        if self._sniffer is None:
            raise UsageError("capture: stop() without a successful start()")
        self._grace()
        dropped = self._halt()
        frames, self._frames = self._frames, []
        from .join import join_file

        frames.sort(key=lambda f: f[0])
        index: dict[int, int] = {}
        parsed: list[Segment] = []
        for i, (t, data) in enumerate(frames):
            seg = parse_frame(data, self._linktype, t)
            if seg is not None:
                index[len(parsed)] = i
                parsed.append(seg)
        segs = relativize(parsed)
        where = {id(seg): index[n] for n, seg in enumerate(segs)}
        try:  # streamed: a long trace's calls are not loaded, its sockets' set-ups are
            joined = join_file(trace_path, segs, keep_all=self.capture_all)
        except CaptureError:
            raise
        except TracesockError as exc:
            raise CaptureError(f"capture not written: cannot read the trace to pick its "
                               f"connections ({exc})") from None
        out = []
        for js in joined:
            t, data = frames[where[id(js.segment)]]
            out.append(pcapng.Frame(t, self._linktype, data,
                                    wire_length(data, self._linktype), js.comment or None))
        pcapng.write(self.path, out, linktype=self._linktype,
                     snaplen=min(self.snaplen, _MAX_RECV), ifname=self.iface)
        if dropped:
            hint = ("the sniffer could not keep up with --capture-all; a smaller snap "
                    "length helps on bulk transfers" if self.capture_all else
                    "the sniffer could not keep up")
            self._warn(f"the kernel dropped {dropped} packets on {self.iface} during the "
                       f"capture, so {self.path} is missing segments ({hint})")
        self.stats = CaptureStats(self.path, self.iface, len(frames), len(out), dropped)
        return self.stats


def _statistics(ins: socket.socket) -> tuple[int, int]:
    """(packets, drops) since the last call (the kernel resets them on read)."""
    try:
        raw = ins.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
    except OSError:
        return 0, 0
    packets, drops = struct.unpack("II", raw)
    return int(packets), int(drops)


def _attach_filter(ins: socket.socket, expr: str, linktype: int, snaplen: int) -> None:
    """Compile ``expr`` with libpcap so that it also truncates to ``snaplen``; attach it."""
    import ctypes

    from scapy.data import SO_ATTACH_FILTER
    from scapy.libs.structures import bpf_program, sock_fprog
    from scapy.libs.winpcapy import pcap_close, pcap_compile, pcap_freecode, pcap_open_dead

    handle = pcap_open_dead(linktype, snaplen)
    prog = bpf_program()
    try:
        if pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, -1) == -1:
            raise CaptureError(f"libpcap rejected the capture filter {expr!r}")
        fprog = sock_fprog(prog.bf_len, prog.bf_insns)
        ins.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        pcap_freecode(ctypes.byref(prog))
    finally:
        pcap_close(handle)


__all__ = [
    "BUFFER_SIZE",
    "CaptureSession",
    "CaptureStats",
    "capture_filter",
    "interface_for",
    "need_privilege_message",
]
