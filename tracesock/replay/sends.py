"""What the code sends, checked against what the recording sent (one Stream's side).

By default the concatenation is compared (send boundaries may differ: TCP has none);
``strict`` compares call by call, ``off`` not at all; ``ignore`` patterns make both sides
compare with their matches blanked out (ignoring.py). A recorded ``send`` that the
kernel cut short returns the same count again. A mismatch names the connection, the
byte offset in the outgoing stream and the recorded call, with a short diff.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import ReplayMismatch
from .ignoring import PLACEHOLDER, Spans, first_difference, raw_offset, real_diff
from .records import COUNTED, Record, a2b, diff, recorded_error

if TYPE_CHECKING:
    from .cassette import Cassette

UNFINISHED = 256  # bytes of a match the code may send in pieces, before it is a mismatch
# With ignore patterns, the last bytes sent are never settled (compared for good): the
# next send may make them part of a match ("X-Id: " then "12345").
KEEP = UNFINISHED


class SendChecks:
    """The send side of a Stream (streams.py), which holds the state."""

    # Slots (as Stream's): the send-side state. Stream.__init__ sets them.
    __slots__ = ("ig_done", "ig_rec", "ig_recs", "ig_sent", "out", "out_off", "sendq",
                 "sends", "sent")
    cassette: Cassette
    sendq: deque[Record]
    out: bytes | None
    out_off: int
    sent: int
    sends: int
    # With ignore patterns (ignoring.py): what the code sent and the recorded sends taken
    # since both last matched whole (``sent`` counts recorded bytes, as recv waits on it).
    ig_sent: bytes
    ig_rec: bytes
    ig_recs: list[Record]
    ig_done: int  # the bytes of ig_rec counted in ``sent`` already

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

    def _send_ignoring(self, data: bytes) -> int:
        """``_send_concat`` with the ``ignore`` patterns: the normalized concatenations
        must agree; counts are not cut short. Recorded sends are taken whole; ``sent``
        (recorded bytes, what recv waits on) follows the part matched so far."""
        ig = self.cassette.ignore
        assert ig is not None
        self.ig_sent += data
        actual, a_spans = ig.normalize(self.ig_sent)
        recorded, r_spans, r_len = self._normalize_recorded(actual)
        while True:
            at = first_difference(actual, recorded)
            if at == len(actual):
                break
            # More of the recording is needed: it is shorter, or the code's bytes match a
            # pattern where the recorded ones (so far) do not, maybe for want of the rest
            # (not if the window left recorded bytes out: it reaches far past ``at``).
            if at < len(recorded) and not (_span_at(a_spans, at) and r_len == len(
                    self.ig_rec) and not _span_from(r_spans, at)):
                break
            rec = self._head_send()
            if rec is None:
                break
            if "error" in rec:
                before = self.ig_sent[:len(self.ig_sent) - len(data)]
                if ig.normalize(before)[0] != ig.normalize(self.ig_rec)[0]:
                    break  # the recorded error came after bytes this call still owes
                self.sendq.popleft()
                self.ig_sent = before
                raise recorded_error(rec["error"])
            self.ig_rec += self._expected(rec)
            self.ig_recs.append(rec)
            self.sendq.popleft()
            self.out = None
            recorded, r_spans, r_len = self._normalize_recorded(actual)
        if at < len(actual):
            if at == len(recorded):
                extra = self.ig_sent[raw_offset(a_spans, at):]
                raise ReplayMismatch(
                    f"{self.cassette.path}: {self.describe()}: the code sent {len(extra)} "
                    f"bytes more than the recording (which sent "
                    f"{self.sent - self.ig_done + len(self.ig_rec)} bytes in all; "
                    f"{ig.count} ignore patterns){self.cassette.incomplete()}; first extra "
                    f"bytes: {extra[:40]!r}")
            if not _maybe_unfinished(a_spans, r_spans, at, len(self.ig_sent) -
                                     raw_offset(a_spans, at)):
                self._ignoring_mismatch(raw_offset(r_spans, at), raw_offset(a_spans, at))
        done = len(self.ig_rec) if len(actual) == len(recorded) else raw_offset(r_spans, at)
        self.sent += done - self.ig_done
        self.ig_done = done
        self._settle(_settled(at, a_spans, len(self.ig_sent), r_spans, r_len),
                     a_spans, r_spans)
        return len(data)

    def _normalize_recorded(self, actual: bytes) -> tuple[bytes, Spans, int]:
        """The recorded bytes normalized as far as the comparison with ``actual`` needs
        (a recorded send may be far longer than what the code sends at a time): a
        window of them, grown until it reaches well past the first difference; and the
        window's raw length."""
        ig = self.cassette.ignore
        assert ig is not None
        rec = self.ig_rec
        want = 2 * (len(self.ig_sent) + KEEP)
        while True:
            if want >= len(rec):
                recorded, spans = ig.normalize(rec)
                return recorded, spans, len(rec)
            recorded, spans = ig.normalize(rec[:want])
            # Far enough: the window goes KEEP past the difference (and past any match
            # there), so a match that its end cuts starts after all that is compared.
            if first_difference(actual, recorded) + len(PLACEHOLDER) + KEEP < len(recorded):
                return recorded, spans, want
            want *= 2

    def _settle(self, at: int, a_spans: Spans, r_spans: Spans) -> None:
        """Drop the bytes before normalized offset ``at`` from both sides: compared for
        good. Later sends normalize only what is left (not all sent so far)."""
        if at <= 0:
            return
        a_cut, r_cut = raw_offset(a_spans, at), raw_offset(r_spans, at)
        self.ig_sent = self.ig_sent[a_cut:]
        self.ig_rec = self.ig_rec[r_cut:]
        self.ig_done -= r_cut
        # ig_rec starts ``skip`` bytes into ig_recs[0]: drop the records wholly settled
        skip = sum(r.get("nbytes") or 0 for r in self.ig_recs) - len(self.ig_rec)
        while self.ig_recs and skip >= (self.ig_recs[0].get("nbytes") or 0) and \
                (skip or not self.ig_rec):
            skip -= self.ig_recs.pop(0).get("nbytes") or 0

    def _ignoring_mismatch(self, r_at: int, a_at: int) -> None:
        # ig_rec starts where the settled bytes end, part way into ig_recs[0]
        off = r_at + sum(r.get("nbytes") or 0 for r in self.ig_recs) - len(self.ig_rec)
        rec = self.ig_recs[-1]
        for r in self.ig_recs:
            if off < (r.get("nbytes") or 0):
                rec = r
                break
            off -= r.get("nbytes") or 0
        assert self.cassette.ignore is not None
        raise ReplayMismatch(
            f"{self.cassette.path}: {self.describe()}: sent bytes differ from the recording "
            f"at byte {self.sent - self.ig_done + r_at} of the outgoing stream (recorded "
            f"{rec['op']} seq "
            f"{rec['seq']}, byte {off} of it; outside the matches of the "
            f"{self.cassette.ignore.count} ignore patterns)"
            + real_diff(self.ig_rec, r_at, self.ig_sent, a_at))

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
        ig = self.cassette.ignore
        if check and ig is not None and op == rec["op"]:  # normalized, lengths may differ
            actual, a_spans = ig.normalize(data)
            recorded, r_spans = ig.normalize(expected)
            if actual != recorded:
                at = first_difference(actual, recorded)
                self.ig_sent, self.ig_rec, self.ig_recs = data, expected, [rec]
                self._ignoring_mismatch(raw_offset(r_spans, at), raw_offset(a_spans, at))
            self.sent += length
            return len(data)
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
        ig = self.cassette.ignore
        if (self.ig_recs or self.ig_sent) and (ig is None or ig.normalize(
                self.ig_sent)[0] != ig.normalize(self.ig_rec)[0]):
            # ignoring: what is left unsettled of the last sends matched only in part
            rec = self.ig_recs[0] if self.ig_recs else (self.sendq or [{}])[0]
            return ReplayMismatch(
                f"{self.cassette.path}: {self.describe()}: the code's last "
                f"{len(self.ig_sent)} bytes match only part of the recording's "
                f"{len(self.ig_rec)} (recorded {rec.get('op')} seq {rec.get('seq')}); sent: "
                f"{self.ig_sent[:40]!r}, recorded: {self.ig_rec[:40]!r}")
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


def _span_at(spans: Spans, at: int) -> bool:
    return any(start == at for start, _, _ in spans)


def _span_from(spans: Spans, at: int) -> bool:
    return any(start >= at for start, _, _ in spans)


def _maybe_unfinished(a_spans: Spans, r_spans: Spans, at: int, tail: int) -> bool:
    """Whether a difference at normalized ``at`` may only be a match the code has not
    finished sending: the recording has one there, the code's bytes from there on
    (``tail`` of them, a few) match nothing yet."""
    return _span_at(r_spans, at) and not _span_from(a_spans, at) and tail <= UNFINISHED


def _settled(at: int, a_spans: Spans, a_len: int, r_spans: Spans, r_len: int) -> int:
    """How much of the normalized bytes compared equal up to ``at`` is settled: not the
    last KEEP bytes the code sent, nor a match touching the end of either side's bytes
    (more bytes may extend it), nor part of a placeholder."""
    cut = min(at, _normalized(a_spans, a_len - KEEP))
    for spans, length in ((a_spans, a_len), (r_spans, r_len)):
        for norm_start, _, raw_end in spans:
            if norm_start >= cut:
                break
            if norm_start + len(PLACEHOLDER) > cut or raw_end >= length:
                cut = norm_start
                break
    return max(0, cut)


def _normalized(spans: Spans, raw: int) -> int:
    """Where raw offset ``raw`` falls in the normalized bytes (a match's start if in one)."""
    if raw <= 0:
        return 0
    shift = 0
    for norm_start, raw_start, raw_end in spans:
        if raw < raw_start:
            break
        if raw < raw_end:
            return norm_start
        shift = raw_end - norm_start - len(PLACEHOLDER)
    return raw - shift
