"""The one place that swaps ``socket.socket``.

While a trace is active, ``socket.socket`` is a TracedSocket subclass bound to that
trace's recorder, so everything that builds sockets through the module attribute
(``socket.create_connection``, ``socketpair``, ``fromfd``, ``http.client``,
``socketserver``, ``asyncio``, ``ftplib``, ``smtplib``...) is traced. The original class
is put back in ``finally``, whatever the block raised. Replay swaps in its own class
(and ``getaddrinfo``) here too. The ``ssl.SSLContext`` classes are swapped alongside
(tls.py): traced TLS while tracing, plaintext TLS while replaying.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .recorder import Recorder
from .sockets import TracedSocket


@contextmanager
def socket_class_patched(recorder: Recorder, *,
                         keylog: str | None = None) -> Iterator[type[TracedSocket]]:
    """Replace ``socket.socket`` with a class recording into ``recorder``, and the
    ``ssl.SSLContext`` socket and object classes with traced ones (tls.py)."""
    from .tls import TracedSSLObject, TracedSSLSocket

    original = socket.socket
    stand_in = TracedSocket.bound_to(recorder, stand_in=True)
    socket.socket = stand_in  # type: ignore[misc]
    try:
        with ssl_classes_replaced(TracedSSLSocket.bound_to(recorder, keylog),
                                  TracedSSLObject.bound_to(recorder, keylog)):
            yield stand_in
    finally:
        socket.socket = original  # type: ignore[misc]


@contextmanager
def ssl_classes_replaced(sslsocket_class: Any, sslobject_class: Any = None) -> Iterator[None]:
    """Replace ``ssl.SSLContext.sslsocket_class`` (and ``sslobject_class`` if given)."""
    import ssl

    ctx = ssl.SSLContext
    original = ctx.sslsocket_class, ctx.sslobject_class
    ctx.sslsocket_class = sslsocket_class
    if sslobject_class is not None:
        ctx.sslobject_class = sslobject_class
    try:
        yield
    finally:
        ctx.sslsocket_class, ctx.sslobject_class = original


@contextmanager
def socket_class_replaced(
    cls: type[socket.socket], *, getaddrinfo: Callable[..., Any] | None = None
) -> Iterator[type[socket.socket]]:
    """Replace ``socket.socket`` with ``cls`` (replay), and ``socket.getaddrinfo`` when
    given (so that ``create_connection`` resolves names without the network)."""
    from .tls import ReplaySSLObject, ReplaySSLSocket

    original, original_gai = socket.socket, socket.getaddrinfo
    socket.socket = cls  # type: ignore[misc]
    if getaddrinfo is not None:
        socket.getaddrinfo = getaddrinfo
    try:
        with ssl_classes_replaced(ReplaySSLSocket, ReplaySSLObject):  # TLS: its plaintext
            yield cls
    finally:
        socket.socket = original  # type: ignore[misc]
        socket.getaddrinfo = original_gai
