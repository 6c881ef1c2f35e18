"""``tracesock stats`` in one streaming pass: per-socket sums, whatever the trace's size.

Theory of operation. ``show.stats(trace)`` summarises a loaded Trace; this module gives
the same summary straight from the file, for traces too big to load. It reads with
BatchReader (one orjson call per batch of lines) and works on the parsed dicts: no
CallEvent is built and no payload is decoded (``nbytes`` is in the record). Memory holds
one aggregate per socket (and its recv chunk sizes, which the summary lists), never the
events.

Lines are checked as load() checks them (BatchReader: the same errors, with the line
number), and so is every record but the bulk: a send or recv that returned, whose
fields stats reads (seq, sock, op, nbytes, pid) are checked on the fast path and whose
other fields (payload text, times, args) stats does not read and does not check. Any
other record goes through ``event_from_record``, which raises load()'s error or not.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Collection
from typing import Any

import orjson

from ..trace import events
from ..trace.batches import BatchReader
from ..trace.events import RECV_OPS, SEND_OPS, format_addr

_ADDR_OPS = frozenset({"connect", "connect_ex", "sendto"})
# Sends and recvs whose sums need nothing but nbytes (sendto names its peer: slow path).
_MOVES_SEND = SEND_OPS - {"sendto"}
_MOVES_RECV = RECV_OPS


class SocketSums:
    """What stats keeps of one socket: its identity and running sums."""

    __slots__ = ("bytes_received", "bytes_sent", "calls", "connects", "errors", "family",
                 "kind", "laddr", "listens", "parent", "pids", "raddr", "recvs", "run_counts",
                 "run_sizes", "sends", "sock")

    def __init__(self, sock: int) -> None:
        self.sock = sock
        self.family: Any = None
        self.kind: Any = None
        self.laddr: Any = None
        self.raddr: Any = None
        self.parent: int | None = None
        self.calls = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.sends = 0
        # The recv chunk sizes, run-length encoded: a stream's chunks mostly repeat.
        self.recvs = 0
        self.run_sizes = array("q")
        self.run_counts = array("q")
        self.errors: list[str] = []
        self.pids: set[int] = set()
        self.listens = False
        self.connects = False

    @property
    def role(self) -> str:
        if self.parent is not None:
            return "server"
        if self.listens:
            return "listener"
        return "client" if self.connects else "socket"

    def add_chunk(self, n: int) -> None:
        self.recvs += 1
        if self.run_sizes and self.run_sizes[-1] == n:
            self.run_counts[-1] += 1
        else:
            self.run_sizes.append(n)
            self.run_counts.append(1)

    def chunks(self, limit: int | None = None) -> list[int]:
        """The recv chunk sizes in order (the first ``limit`` of them)."""
        out: list[int] = []
        for size, count in zip(self.run_sizes, self.run_counts, strict=True):
            if limit is not None and len(out) + count >= limit:
                return out + [size] * (limit - len(out))
            out += [size] * count
        return out

    def summary(self, chunk_limit: int | None = None) -> dict[str, Any]:
        """As show.connection_summary gives it for a loaded Connection (with the first
        ``chunk_limit`` recv chunk sizes only, if given)."""
        return {
            "sock": self.sock, "role": self.role, "family": self.family, "kind": self.kind,
            "laddr": format_addr(self.laddr), "raddr": format_addr(self.raddr),
            "parent": self.parent, "calls": self.calls, "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received, "sends": self.sends,
            "recvs": self.recvs, "recv_chunks": self.chunks(chunk_limit),
            "errors": self.errors, "pids": sorted(self.pids),
        }


def scan(path: str, socks: Collection[int] | None = None,
         pids: Collection[int] | None = None,
         progress: Callable[[int], None] | None = None,
         chunk_limit: int | None = None, keep_sums: bool = False) -> dict[str, Any]:
    """``show.stats()``'s summary of the trace at ``path``, read in one pass.

    ``socks``/``pids`` keep only the calls of those sockets or processes. ``progress``
    is called with the bytes read so far after each batch. ``chunk_limit`` lists only
    the first recv chunk sizes of each socket (format_stats shows 20); ``keep_sums``
    puts each socket's SocketSums in its connection's ``"_sums"`` (for write_json).
    Warnings are in the summary's ``"warnings"`` list (not printed by format_stats)."""
    reader = BatchReader(path)
    per: dict[int, SocketSums] = {}
    all_pids: set[int] = set()
    count = 0
    last_seq = -1
    sends, recvs = _MOVES_SEND, _MOVES_RECV
    for lineno, recs in reader.batches():
        for i, rec in enumerate(recs):
            # The fast path: a send or recv that returned, as most calls are.
            if type(rec) is dict and "error" not in rec:
                op = rec.get("op")
                if op in sends or op in recvs:
                    seq, sock, n, pid = rec.get("seq"), rec.get("sock"), rec.get("nbytes"), \
                        rec.get("pid")
                    if type(seq) is int and seq > last_seq and type(sock) is int \
                            and type(n) is int and (pid is None or type(pid) is int) \
                            and rec.get("type") == "call":
                        last_seq = seq
                        count += 1
                        if (socks is not None and sock not in socks) or \
                                (pids is not None and pid not in pids):
                            continue
                        sums = per.get(sock)
                        if sums is None:
                            sums = per[sock] = SocketSums(sock)
                        sums.calls += 1
                        if op in sends:
                            sums.bytes_sent += n
                            sums.sends += 1
                        else:
                            sums.bytes_received += n
                            sums.recvs += 1
                            runs = sums.run_sizes
                            if runs and runs[-1] == n:
                                sums.run_counts[-1] += 1
                            else:
                                runs.append(n)
                                sums.run_counts.append(1)
                        if pid is not None:
                            sums.pids.add(pid)
                            all_pids.add(pid)
                        continue
            # Anything else: checked in full, as load() checks it (and fails as it does).
            ev = reader.checked(lineno + i, rec, last_seq)
            if ev is None:
                continue
            last_seq = ev.seq
            _add(per, all_pids, dict(rec, laddr=ev.laddr, raddr=ev.raddr, args=ev.args),
                 socks, pids)
            count += 1
        if progress is not None:
            progress(reader.tell())
    reader.finished()
    conns = [s.summary(chunk_limit) for s in per.values()]
    if keep_sums:
        conns = [dict(c, _sums=s) for c, s in zip(conns, per.values(), strict=True)]
    if socks is not None or pids is not None:
        count = sum(c["calls"] for c in conns)
    return {
        "trace": path,
        "complete": reader.end is not None,
        "events": count,
        "sockets": len(conns),
        "pids": sorted(all_pids),
        "connections": conns,
        "warnings": reader.warnings,
    }


def _add(per: dict[int, SocketSums], all_pids: set[int], rec: dict[str, Any],
         socks: Collection[int] | None, pids: Collection[int] | None) -> None:
    sock = rec["sock"]
    pid = rec.get("pid")
    if (socks is not None and sock not in socks) or (pids is not None and pid not in pids):
        return
    s = per.get(sock)
    if s is None:
        s = per[sock] = SocketSums(sock)
    s.calls += 1
    op = rec["op"]
    if pid is not None:
        s.pids.add(pid)
        all_pids.add(pid)
    err = rec.get("error")
    moved = False
    if op in SEND_OPS:
        moved = op != "sendto"
        if err is None:
            s.bytes_sent += rec.get("nbytes") or 0
            s.sends += 1
    elif op in RECV_OPS:
        moved = True
        if err is None:
            n = rec.get("nbytes") or 0
            s.bytes_received += n
            s.add_chunk(n)
    if err is not None:
        s.errors.append(f"{op}: {err.get('type', '')!s}")
    if not moved or "family" in rec or "kind" in rec or "parent" in rec or "laddr" in rec \
            or "raddr" in rec:
        _identity(s, op, rec)


def _identity(s: SocketSums, op: str, rec: dict[str, Any]) -> None:
    if rec.get("family") is not None:
        s.family = rec["family"]
    if rec.get("kind") is not None:
        s.kind = rec["kind"]
    if op != "accept":
        if rec.get("laddr") is not None:
            s.laddr = events.decode_addr(rec["laddr"])
        if rec.get("raddr") is not None:
            s.raddr = events.decode_addr(rec["raddr"])
    if rec.get("parent") is not None:
        s.parent = rec["parent"]
    if op in ("listen", "accept"):
        s.listens = True
    elif op in ("connect", "connect_ex"):
        s.connects = True
    if s.raddr is None and op in _ADDR_OPS:
        args = rec.get("args") or {}
        s.raddr = events.decode_addr(args.get("address"))



_INDENT = "\n        "  # a recv chunk size's place in stats --json (indent 2, depth 4)


def write_json(summary: dict[str, Any], write: Callable[[str], object]) -> None:
    """The summary as ``json.dumps(summary, indent=2, ensure_ascii=False)`` writes it, in
    pieces: the recv chunk sizes (a million on a big trace) are written from their runs,
    never held as a list. ``summary`` comes from scan(..., chunk_limit=0, keep_sums=True)."""
    sums: list[SocketSums] = [c.pop("_sums") for c in summary["connections"]]
    try:
        text = orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # an integer past 64 bits, from a hand-made trace
        text = ""
    marker = '"recv_chunks": []'  # inside a JSON string its quotes would be escaped
    parts = text.split(marker)
    if len(parts) != len(sums) + 1:
        for c, s in zip(summary["connections"], sums, strict=True):
            c["recv_chunks"] = s.chunks()
        write(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    write(parts[0])
    for s, part in zip(sums, parts[1:], strict=True):
        write('"recv_chunks": [')
        first = True
        for size, count in zip(s.run_sizes, s.run_counts, strict=True):
            if first:
                write(f"{_INDENT}{size}")
                count -= 1
                first = False
            item = f",{_INDENT}{size}"
            while count > 0:
                n = min(count, 1 << 16)
                write(item * n)
                count -= n
        write("]" if first else "\n      ]")
        write(part)
