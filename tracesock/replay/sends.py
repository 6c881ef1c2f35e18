"""What the code sends, checked against what the recording sent (one Stream's side).

By default the concatenation is compared (send boundaries may differ: TCP has none);
``strict`` compares call by call, ``off`` not at all. A recorded ``send`` that the
kernel cut short returns the same count again. A mismatch names the connection, the
byte offset in the outgoing stream and the recorded call, with a short diff.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import ReplayMismatch
from .records import COUNTED, Record, a2b, diff, recorded_error

if TYPE_CHECKING:
    from .cassette import Cassette


class SendChecks:
    """The send side of a Stream (streams.py), which holds the state."""

    # Slots (as Stream's): the send-side state. Stream.__init__ sets them.
    __slots__ = ("out", "out_off", "sendq", "sends", "sent")
    cassette: Cassette
    sendq: deque[Record]
    out: bytes | None
    out_off: int
    sent: int
    sends: int

    def describe(self) -> str:
        raise NotImplementedError

    def _more(self, q: deque[Any]) -> bool:
        raise NotImplementedError

    def _head_send(self) -> Record | None:
        q = self.sendq
        if not q and not self._more(q):
            return None
        return q[0]

    def _expected(self, rec: Record) -> bytes:
        out = self.out
        if out is None:
            try:
                out = self.out = a2b(rec.get("data") or "")
            except (binascii.Error, TypeError):
                raise self.cassette.bad_record(rec, "'data' is not base64 text") from None
        return out

    def _send_concat(self, data: bytes, op: str) -> int:
        check = self.cassette.check != "off"
        total = len(data)
        pos = 0
        while pos < total:
            rec = self._head_send()
            if rec is None:
                if check:
                    raise ReplayMismatch(
                        f"{self.cassette.path}: {self.describe()}: the code sent "
                        f"{total - pos} bytes more than the recording (which sent "
                        f"{self.sent} bytes in all){self.cassette.incomplete()}; first extra "
                        f"bytes: {data[pos:pos + 40]!r}")
                self.sent += total - pos
                return total
            if "error" in rec:
                if pos:
                    return pos
                self.sendq.popleft()
                raise recorded_error(rec["error"])
            expected = self._expected(rec)
            length = rec.get("nbytes") or 0
            k = min(total - pos, length - self.out_off)
            if check:
                known = expected[self.out_off:self.out_off + k]
                if data[pos:pos + len(known)] != known:
                    self._mismatch(rec, expected, data, pos)
            pos += k
            self.out_off += k
            self.sent += k
            if self.out_off >= length:
                self.sendq.popleft()
                self.out = None
                self.out_off = 0
                if op in COUNTED and rec["op"] in COUNTED and pos < total:
                    return pos  # the recorded kernel took this much here: a short send
        return total

    def _mismatch(self, rec: Record, expected: bytes, data: bytes, pos: int) -> None:
        i = 0
        known = expected[self.out_off:]
        while i < len(known) and pos + i < len(data) and known[i] == data[pos + i]:
            i += 1
        raise ReplayMismatch(
            f"{self.cassette.path}: {self.describe()}: sent bytes differ from the recording "
            f"at byte {self.sent + i} of the outgoing stream (recorded {rec['op']} seq "
            f"{rec['seq']}, byte {self.out_off + i} of it)"
            + diff(expected, self.out_off + i, data, pos + i))

    def _send_call(self, data: bytes, op: str) -> int:
        check = self.cassette.check != "off"
        rec = self._head_send()
        where = f"{self.cassette.path}: {self.describe()}: send call #{self.sends}"
        if rec is None:
            if check:
                raise ReplayMismatch(f"{where} ({op} of {len(data)} bytes) has no recorded "
                                     f"counterpart{self.cassette.incomplete()}; first "
                                     f"bytes: {data[:40]!r}")
            self.sent += len(data)
            return len(data)
        if "error" in rec:
            self.sendq.popleft()
            raise recorded_error(rec["error"])
        expected = self._expected(rec)
        length = rec.get("nbytes") or 0
        self.sendq.popleft()
        self.out = None
        n = min(length, len(data)) if op in COUNTED else len(data)
        if check:
            if op != rec["op"] or (op in COUNTED and len(data) < length) or \
                    (op not in COUNTED and len(data) != length):
                raise ReplayMismatch(
                    f"{where} was {op} of {len(data)} bytes; the recording has {rec['op']} "
                    f"of {length} bytes there (seq {rec['seq']})")
            known = expected[:n]
            if data[:len(known)] != known:
                self.out_off = 0
                self._mismatch(rec, expected, data, 0)
        self.sent += n
        return n

    def unsent(self) -> ReplayMismatch | None:
        """The recorded bytes the code never sent, as the error to report (or None)."""
        # Sends of other processes (traces that followed children, "pid" on each call)
        # happen in those processes during replay (a forked child has its own copy of
        # the cassette): this process cannot see them, so it does not check them.
        top = self.cassette.pid
        left = [r for r in self.sendq if "error" not in r and r.get("nbytes")
                and r.get("pid", top) == top]
        if not left:
            return None
        off = self.out_off if left[0] is self.sendq[0] else 0
        missing = sum(r.get("nbytes") or 0 for r in left) - off
        rec = left[0]
        head = self._expected(rec)[off:off + 40]
        return ReplayMismatch(
            f"{self.cassette.path}: {self.describe()}: the code sent {self.sent} bytes but "
            f"the recording sent {self.sent + missing}; not sent, from byte {self.sent} "
            f"(recorded {rec['op']} seq {rec['seq']}): {head!r}")
