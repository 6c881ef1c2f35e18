"""``replay()``: run socket code unchanged against a recorded trace, with no network.

Theory of operation. ``replay(path)`` opens the trace as a Cassette (cassette.py: the
matching model, I/O-free) and, for the block, makes ``socket.socket`` a ReplaySocket
class bound to it (sockets.py), through patching.py, the one place that swaps it; the
``ssl`` classes become the replay's (tls.py). ``socket.getaddrinfo`` is replaced too
(``_Resolver``), so hostnames resolve through the recording (the recorded connects to
that port) and numeric hosts as usual: no DNS, no network.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

from ..errors import ReplayError, ReplayMismatch
from ..patching import classes_replaced, entropy_replaced
from .cassette import Cassette
from .children import ReplayingChildren
from .entropy import EntropyReplay, checked_processes, recorded_fields, restore_random
from .sockets import ReplaySocket, speed_factor
from .tls import ReplaySSLObject, ReplaySSLSocket


@contextmanager
def replacing(cls: type[ReplaySocket], *,
              getaddrinfo: Callable[..., Any] | None = None) -> Iterator[None]:
    """``socket.socket`` is ``cls`` and the ``ssl`` classes replay's for the block."""
    with classes_replaced(cls, ReplaySSLSocket, ReplaySSLObject, getaddrinfo=getaddrinfo):
        yield


class _Resolver:
    """getaddrinfo while replaying: numeric hosts as usual, names through the recording."""

    def __init__(self, cassette: Cassette, real: Callable[..., Any]) -> None:
        self._cassette = cassette
        self._real = real

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                 flags: int = 0) -> list[tuple[Any, ...]]:
        real = self._real
        try:
            return list(real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST))
        except socket.gaierror:
            pass
        number = port
        if isinstance(port, (str, bytes)):
            text = port.decode() if isinstance(port, bytes) else port
            number = int(text) if text.isdigit() else socket.getservbyname(text)
        out: list[tuple[Any, ...]] = []
        for fam, kind, address in self._cassette.resolve(int(number or 0)):
            f, k = socket.AddressFamily[fam], socket.SocketKind[kind]
            if (family and f != family) or (type and k != type):
                continue
            out.append((f, k, socket.IPPROTO_TCP if k == socket.SOCK_STREAM else
                        socket.IPPROTO_UDP, "", address))
        if out:
            return out
        if isinstance(host, str) and host.lower() in ("localhost", "localhost.localdomain"):
            return list(real(host, port, family, type, proto, flags))
        raise socket.gaierror(socket.EAI_NONAME, f"tracesock replay: {host}:{port} resolves "
                              "to no recorded connection (replay does no DNS)")


class Replay:
    """What ``replay()`` yields: the cassette, the socket class, what went wrong."""

    def __init__(self, path: str, cassette: Cassette, socket_class: type[ReplaySocket]):
        self.path = path
        self.cassette = cassette
        self.socket_class = socket_class

    @property
    def errors(self) -> list[BaseException]:
        """Replay errors raised so far (also those the code caught)."""
        return self.cassette.errors

    @property
    def warnings(self) -> list[str]:
        return self.cassette.warnings

    def skip_final_checks(self) -> None:
        """Do not raise caught errors or unsent bytes at the end (the run already failed)."""
        self.cassette.final_checks = False


@contextmanager
def replay(
    path: str | os.PathLike[str],
    *,
    check: str = "concat",
    realtime: bool | float = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    follow_children: bool = False,
    process: int | None = None,
    entropy: bool = True,
    ignore: Iterable[str | bytes] = (),
    pids: bool | Literal["self"] = True,
) -> Iterator[Replay]:
    """Run the block against the recording at ``path``, with no network.

    Each socket the block creates is matched, in order, to a recorded one (family, type,
    and the address of its connect, bind or first sendto; accepted sockets come from
    their listener's accept). recv returns exactly the recorded chunks; what is sent is
    checked: ``check="concat"`` (default) compares the bytes, ``"strict"`` each call too,
    ``"off"`` nothing. ``realtime=True`` (or a speed factor) sleeps the recorded gaps
    on ``clock``/``sleep``. At the end, errors the code caught and recorded bytes it
    never sent raise ReplayError/ReplayMismatch.

    A trace that followed child processes replays the calls of its top process (and
    of the children it forked); ``process=PID`` replays those of recorded process PID
    instead. ``follow_children=True`` makes the Python children the block starts with
    exec (``subprocess``, ``multiprocessing`` spawn) replay theirs too, each matched to
    a recorded child (children.py); what went wrong in them is raised at the end.

    With ``entropy=True`` (the default) and a trace that recorded them, the program's
    own nondeterministic inputs are given back (entropy.py): ``os.urandom`` and
    ``os.getrandom`` per thread in the recorded order (so ``secrets``, ``uuid4``,
    multipart boundaries...), ``random``'s state at the start,
    and ``time.time``/``time_ns`` (so ``datetime.now()``) if they were recorded; in a
    trace that followed child processes, each replayed process its own process's
    (forked children: the recorded fork of the same rank). Code that asks for something
    else gets fresh values and the replay ends with a ReplayMismatch saying so.
    The recorded ``os.getpid()``/``getppid()`` come back too (PyMySQL sends its pid);
    ``pids=False`` keeps the real ones, for code holding objects made before the block
    that kept the real pid (a ``multiprocessing.Process``, fork-checking pools shared
    across the block's edge; docs/replay.md). Forked children of the block get their
    recorded fork's pid either way, and their ``getppid()`` is the parent's ``getpid()``.
    (``"self"``: the recorded pid, the real ppid: an exec'd child's, children.py.)

    ``ignore=[regex, ...]`` (str or bytes patterns) blanks the matches out of what the
    code sends and of what the recording sent before they are compared (request ids,
    timestamps that stay nondeterministic): each match becomes one fixed placeholder,
    so the two may differ in length there (ignoring.py). Mismatches still show the real
    bytes. With ``check="concat"``, counts are then not cut short as recorded.
    """
    name = os.fspath(path)
    speed = speed_factor(realtime)
    cas = Cassette.open(name, process=process, check=check, speed=speed, clock=clock,
                        sleep=sleep, ignore=list(ignore))
    try:  # a trace whose entropy cannot be given back: the file is not left open
        cls = ReplaySocket.bound_to(cas, stand_in=True)
        recorded = recorded_fields(name, cas.header_extra, cas.pid) if entropy else None
        inputs = None
        if recorded is not None:  # a trace recorded with entropy (record/entropy.py)
            processes = checked_processes(name, cas.header_extra.get("processes"))
            inputs = EntropyReplay(cas, recorded, processes, cas.pid, pids=pids)
            if recorded.get("random") is not None:
                restore_random(recorded["random"])
        kids = ReplayingChildren(name, cas.pid, {"check": check, "realtime": speed or False,
                                                    "pids": pids is True}) \
            if follow_children else None
    except BaseException:
        cas.close()
        raise
    try:
        with replacing(cls, getaddrinfo=_Resolver(cas, socket.getaddrinfo)), \
                entropy_replaced(inputs.functions if inputs is not None else {}), \
                (kids.environment() if kids is not None else nullcontext()):
            yield Replay(name, cas, cls)
    except BaseException as exc:
        cas.close()
        if kids is not None:
            kids.close()
        if inputs is not None and inputs.mismatches and isinstance(exc, ReplayError) \
                and hasattr(exc, "add_note"):  # why the bytes differ, most likely
            exc.add_note("; ".join(inputs.mismatches))
        raise
    try:
        cas.finish()
        if inputs is not None and inputs.mismatches:
            raise ReplayMismatch("; ".join(inputs.mismatches))
    except BaseException:
        if kids is not None:
            kids.close()
        raise
    if kids is not None:
        kids.finish()


__all__ = ["Replay", "replacing", "replay"]
