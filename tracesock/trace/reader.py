"""Reading traces: ``load(path)`` gives a Trace with its events and per-connection views.

The reader is strict where a mistake would mislead (a malformed line in the middle, an
unknown format version: errors naming file and line) and forgiving where the traced
process simply died (a truncated last line, or the zero padding a killed writer leaves
after its last line: warnings, the rest is kept). A trace that followed child processes
and is not merged yet is merged when they all ended, or read with a warning saying it
is still being written (merge.py).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO, ClassVar

import orjson

from ..errors import TraceFormatError, TraceVersionError
from . import events
from .events import CallEvent, ErrorInfo, TraceHeader
from .merge import settle

_a2b = binascii.a2b_base64

_KNOWN = frozenset({"type", "seq", "t", "dur", "sock", "op", "nbytes", "data", "args", "error",
                    "fd", "family", "kind", "laddr", "raddr", "parent", "thread", "pid",
                    "truncated"})


@dataclass
class Connection:
    """Everything one socket did, in order."""

    sock: int
    events: list[CallEvent] = field(default_factory=list)
    family: str | None = None
    kind: str | None = None
    laddr: Any = None
    raddr: Any = None
    parent: int | None = None
    pid: int | None = None

    @property
    def role(self) -> str:
        """``client`` (connected out), ``server`` (accepted), ``listener``, or ``socket``."""
        ops = {e.op for e in self.events}
        if self.parent is not None:
            return "server"
        if "listen" in ops or "accept" in ops:
            return "listener"
        if "connect" in ops or "connect_ex" in ops:
            return "client"
        return "socket"

    @property
    def bytes_sent(self) -> int:
        return sum(e.nbytes or 0 for e in self.events if e.is_send and e.error is None)

    @property
    def bytes_received(self) -> int:
        return sum(e.nbytes or 0 for e in self.events if e.is_recv and e.error is None)

    @property
    def recv_chunks(self) -> list[int]:
        """Sizes of what each successful recv returned (0 is the peer's FIN)."""
        return [e.nbytes or 0 for e in self.events if e.is_recv and e.error is None]

    @property
    def send_sizes(self) -> list[int]:
        return [e.nbytes or 0 for e in self.events if e.is_send and e.error is None]


@dataclass
class Trace:
    """A loaded trace file."""

    path: str
    header: TraceHeader
    events: list[CallEvent]
    end: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    # The HTML view (Jupyter) is drawn in lecture/: the package's __init__ plugs it in
    # here, so that this layer never imports the one that draws.
    html_view: ClassVar[Callable[[Trace], str] | None] = None

    def _repr_html_(self) -> str | None:
        view = Trace.html_view
        return None if view is None else view(self)

    @property
    def complete(self) -> bool:
        """True when the traced process finished the trace cleanly."""
        return self.end is not None

    @cached_property
    def connections(self) -> dict[int, Connection]:
        """Per-socket views keyed by socket id, in order of first appearance (built once:
        a loaded Trace is a snapshot of its file)."""
        conns: dict[int, Connection] = {}
        for ev in self.events:
            conn = conns.get(ev.sock)
            if conn is None:
                conn = conns[ev.sock] = Connection(ev.sock, pid=ev.pid)
            conn.events.append(ev)
            if ev.family is not None:
                conn.family = ev.family
            if ev.kind is not None:
                conn.kind = ev.kind
            if ev.laddr is not None and ev.op != "accept":
                conn.laddr = ev.laddr
            if ev.raddr is not None and ev.op != "accept":
                conn.raddr = ev.raddr
            if ev.parent is not None:
                conn.parent = ev.parent
            if conn.raddr is None and ev.op in ("connect", "connect_ex", "sendto"):
                conn.raddr = events.decode_addr(ev.args.get("address"))
        return conns


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _fail(path: str, lineno: int, what: str) -> TraceFormatError:
    return TraceFormatError(f"{path}:{lineno}: {what}")


def parse_header(path: str, obj: Any) -> TraceHeader:
    if not isinstance(obj, dict) or obj.get("type") != "trace" or obj.get("format") != \
            events.FORMAT:
        raise _fail(path, 1, "not a tracesock trace (line 1 must be the "
                    '{"type": "trace", "format": "tracesock", ...} header)')
    version = obj.get("version")
    if version not in events.SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in events.SUPPORTED_VERSIONS)
        raise TraceVersionError(f"{path}:1: trace format version {version!r} is not "
                                f"supported (this tracesock reads version {supported})")
    known = {"type", "format", "version", "started", "pid", "argv", "python", "payload",
             "max_payload"}
    argv = obj.get("argv") or []
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise _fail(path, 1, "header 'argv' must be a list of strings")
    for name in ("pid", "max_payload"):
        if not isinstance(obj.get(name), (int, type(None))):
            raise _fail(path, 1, f"header {name!r} must be an integer")
    return TraceHeader(
        version=version,
        started=str(obj.get("started", "")),
        pid=obj.get("pid"),
        argv=tuple(argv),
        python=str(obj.get("python", "")),
        payload=bool(obj.get("payload", True)),
        max_payload=obj.get("max_payload"),
        extra={k: v for k, v in obj.items() if k not in known},
    )


_INT_FIELDS = ("fd", "parent", "thread", "pid")
_NAME_FIELDS = ("family", "kind")
_NUMBER = (int, float)


def _check_addr(path: str, lineno: int, name: str, value: Any) -> Any:
    try:
        return events.decode_addr(value)
    except (ValueError, TypeError):
        raise _fail(path, lineno, f"{name!r} is not a socket address") from None


def event_from_record(path: str, lineno: int, rec: dict[str, Any],
                      share: Sharing | None = None) -> CallEvent:
    """Validate one ``call`` record and build its CallEvent (with ``share``'s objects
    for the values that repeat)."""
    share = share or _AS_IS
    try:
        seq, t, sock, op = rec["seq"], rec["t"], rec["sock"], rec["op"]
    except KeyError as exc:
        raise _fail(path, lineno, f"call record lacks the {exc.args[0]!r} field") from None
    if not isinstance(seq, int) or not isinstance(sock, int) or not isinstance(op, str) \
            or not isinstance(t, (int, float)):
        raise _fail(path, lineno, "call record has a field of the wrong type "
                    "(seq and sock must be integers, t a number, op a string)")
    dur = rec.get("dur") or 0.0
    if not isinstance(dur, _NUMBER):
        raise _fail(path, lineno, "'dur' must be a number")
    for name in _INT_FIELDS:
        if not isinstance(rec.get(name), (int, type(None))):
            raise _fail(path, lineno, f"{name!r} must be an integer")
    for name in _NAME_FIELDS:
        if not isinstance(rec.get(name), (str, int, type(None))):
            raise _fail(path, lineno, f"{name!r} must be a name")
    err = rec.get("error")
    error = None
    if err is not None:
        if not isinstance(err, dict) or not isinstance(err.get("errno"), (int, type(None))):
            raise _fail(path, lineno, "'error' must be an object with an integer errno")
        error = ErrorInfo(str(err.get("type", "")), err.get("errno"), str(err.get("message", "")))
    data = rec.get("data")
    if data is not None:
        try:
            _a2b(data)
        except (binascii.Error, ValueError, TypeError):
            raise _fail(path, lineno, "'data' must be base64 text") from None
    args = rec.get("args") or {}
    if not isinstance(args, dict):
        raise _fail(path, lineno, "'args' must be an object")
    nbytes = rec.get("nbytes")
    if nbytes is not None and not isinstance(nbytes, int):
        raise _fail(path, lineno, "'nbytes' must be an integer")
    extra = {k: v for k, v in rec.items() if k not in _KNOWN}
    return CallEvent(
        seq=seq, t=float(t), dur=float(dur), sock=sock, op=share.value(op),
        nbytes=nbytes, data_b64=data, args=share.args(args), error=error,
        fd=rec.get("fd"), family=share.value(rec.get("family")),
        kind=share.value(rec.get("kind")),
        laddr=_check_addr(path, lineno, "laddr", rec.get("laddr")),
        raddr=_check_addr(path, lineno, "raddr", rec.get("raddr")),
        parent=rec.get("parent"), thread=share.value(rec.get("thread")),
        pid=share.value(rec.get("pid")),
        truncated=bool(rec.get("truncated", False)),
        extra=extra or share.args(extra),
    )


class Sharing:
    """One object for each value that repeats across a trace's events (op names, thread
    ids, pids, ``{"bufsize": 65536}``), not one per event: a loaded trace holds millions
    of them. Belongs to one reader; bounded."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}
        self._args: dict[Any, dict[str, Any]] = {}

    def value(self, value: Any) -> Any:
        if value is None or value is True or value is False:  # True == 1: not shared
            return value
        found = self._values.get(value)
        if found is not None:
            return found
        if len(self._values) < self.LIMIT:
            self._values[value] = value
        return value

    def args(self, args: dict[str, Any]) -> dict[str, Any]:
        if len(args) > 2:
            return args
        try:
            key = tuple(args.items())
            found = self._args.get(key)
        except TypeError:  # a list or an object among the values
            return args
        if found is not None:
            return found
        if len(self._args) < self.LIMIT:
            self._args[key] = args
        return args


_AS_IS = Sharing()
_AS_IS.LIMIT = 0  # shares nothing: event_from_record without a reader's Sharing


def check_record(path: str, lineno: int, rec: Any, last_seq: int,
                 share: Sharing | None = None) -> CallEvent | None:
    """A parsed line of ``path`` checked as the format says (TraceFormatError naming the
    line): the CallEvent of a call, whose seq must follow ``last_seq``; None for any other
    record (newer record types of this version are the reader's to skip)."""
    if not isinstance(rec, dict):
        raise _fail(path, lineno, "a trace line must be a JSON object")
    kind = rec.get("type")
    if kind == "call":
        ev = event_from_record(path, lineno, rec, share)
        if ev.seq <= last_seq:
            raise _fail(path, lineno, f"seq {ev.seq} does not follow {last_seq} "
                        "(seq must increase strictly)")
        return ev
    if kind is None:
        raise _fail(path, lineno, "record has no 'type' field")
    return None


class TraceReader:
    """Streams a trace's records: the header first, then events one at a time.

    Memory stays flat however long the trace is; ``warnings`` and ``end`` are filled
    in as the end of the file is reached.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []
        self.end: dict[str, Any] | None = None
        try:
            # Closed by close(). A 64 KiB buffer, not the default 8 KiB: an eighth of the
            # read() calls (~30 ns less per line when replay streams a large trace).
            self._file: BinaryIO = open(path, "rb", buffering=1 << 16)  # noqa: SIM115
        except OSError as exc:
            raise TraceFormatError(f"{path}: cannot read the trace: "
                                   f"{exc.strerror or exc}") from None
        try:
            self.header = self._read_header()
            if self.header.extra.get("children"):
                self._settle(str(self.header.extra["children"]))
        except BaseException:
            self._file.close()
            raise

    def _settle(self, name: str) -> None:
        # A trace that followed child processes: merge the calls of those that ended
        # since (the last one out may have been killed), or say the trace is not whole.
        merged, note = settle(self.path, name)
        if note is not None:
            self.warnings.append(note)
        if merged:  # the file was replaced: read the merged one
            self._file.close()
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            self.header = self._read_header()

    def _read_header(self) -> TraceHeader:
        first = self._file.readline()
        if not first.strip(b"\0 \r\n"):
            raise _fail(self.path, 1, "empty file, not a tracesock trace")
        try:
            obj = orjson.loads(first.rstrip(b"\0"))
        except orjson.JSONDecodeError:
            raise _fail(self.path, 1, "not a tracesock trace (line 1 is not JSON)") from None
        return parse_header(self.path, obj)

    def __iter__(self) -> Iterator[CallEvent]:
        path = self.path
        share = Sharing()
        last_seq = -1
        lineno = 1
        with self._file as f:
            for line in f:
                lineno += 1
                if line.startswith(b"\0") or (not line.endswith(b"\n") and
                                               (b"\0" in line or not _is_json(line))):
                    # The end of the data: padding a killed writer left, maybe after a
                    # line it did not finish. Only NUL bytes may follow.
                    self._tail(f, lineno, line)
                    return
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise _fail(path, lineno, f"not valid JSON ({exc})") from None
                ev = self.checked(lineno, rec, last_seq, share)
                if ev is not None:
                    last_seq = ev.seq
                    yield ev
        self.finished()

    def checked(self, lineno: int, rec: Any, last_seq: int,
                share: Sharing | None = None) -> CallEvent | None:
        """A parsed line checked as the format says (TraceFormatError naming the line):
        the CallEvent of a call, whose seq must follow ``last_seq``; None for any other
        record (the ``end`` one is kept in ``end``; newer record types of this version
        are skipped). Streaming readers send here what their fast paths do not take."""
        ev = check_record(self.path, lineno, rec, last_seq, share)
        if ev is None and rec.get("type") == "end":
            self.end = rec
        return ev

    def finished(self) -> None:
        """The data has ended: say so when the traced process never wrote its end."""
        if self.end is None:
            self.warnings.append(f"{self.path}: no end record: the traced process did not "
                                 "finish the trace (killed?); the events so far are kept")

    def _tail(self, f: BinaryIO, lineno: int, line: bytes) -> None:
        partial = line.rstrip(b"\0")
        if b"\0" in partial or f.read().strip(b"\0"):
            raise _fail(self.path, lineno, "unexpected NUL bytes in the middle of the trace")
        if partial.strip():
            self.warnings.append(f"{self.path}:{lineno}: last line is incomplete (the traced "
                                 "process was killed mid-write, or its disk was full); "
                                 "it was dropped")
        else:
            self.warnings.append(f"{self.path}: the trace was not closed cleanly "
                                 "(process killed?); all complete lines are kept")

    def tell(self) -> int:
        """Bytes of the file read so far (what a progress bar shows)."""
        return 0 if self._file.closed else self._file.tell()

    def close(self) -> None:
        self._file.close()


def iter_events(path: str) -> Iterator[CallEvent]:
    """The calls of the trace at ``path``, one at a time, in file (seq) order: memory
    stays flat however big the trace. Raises what load() raises, when it reaches the
    bad line; use TraceReader to see the header, the end record and the warnings."""
    reader = TraceReader(path)
    try:
        yield from reader
    finally:
        reader.close()


def load(path: str) -> Trace:
    """Read a whole trace file. Raises TraceFormatError (a TracesockError) on bad input.

    Every call's metadata is held; payloads stay as their base64 text (``data_b64``,
    decoded on each access to ``CallEvent.data``). For traces too big for that, stream
    them with iter_events() or TraceReader."""
    reader = TraceReader(path)
    evs = list(reader)
    return Trace(path=path, header=reader.header, events=evs, end=reader.end,
                 warnings=reader.warnings)
