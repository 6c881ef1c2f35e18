"""The classes that stand in for ``socket.socket`` and ``ssl``'s while recording.

``recording(recorder)`` binds TracedSocket and the TLS classes to one recorder and has
patching.py (the one place that swaps ``socket.socket``) install them for the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..patching import classes_replaced
from .recorder import Recorder
from .sockets import TracedSocket
from .tls import TracedSSLObject, TracedSSLSocket


@contextmanager
def recording(recorder: Recorder, *, keylog: str | None = None) -> Iterator[type[TracedSocket]]:
    """Replace ``socket.socket`` with a class recording into ``recorder``, and the
    ``ssl.SSLContext`` socket and object classes with traced ones (tls.py)."""
    stand_in = TracedSocket.bound_to(recorder, stand_in=True)
    with classes_replaced(stand_in, TracedSSLSocket.bound_to(recorder, keylog),
                          TracedSSLObject.bound_to(recorder, keylog)):
        yield stand_in
