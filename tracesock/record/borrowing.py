"""Traced methods lent to other classes behave there as the originals.

Some libraries copy a socket method onto a class of their own, as a plain function:
``urllib3.contrib.pyopenssl`` does ``WrappedSocket.makefile = socket_cls.makefile``
with ``from socket import socket as socket_cls``. Imported while tracing, that copies
TracedSocket's method, whose body reads the traced socket's own slots. So each public
method of TracedSocket and TracedSSLSocket, called with a ``self`` that is not one of
theirs, is the original's instead (``socket.socket``'s, ``ssl.SSLSocket``'s), called
the same way.

The hot methods (TracedSocket's send, sendall, recv, recv_into; TracedSSLSocket's
plaintext read, recv, recv_into, write, send, sendall) do that check themselves, at no
cost on their own sockets (a ``try`` around the attribute lookup they make anyway); the
compiled ones (``_journal.c``) are method descriptors of the C socket type, as
``socket.socket``'s own, and hand a foreign ``self`` to those Python methods. Every
other public method is wrapped here: about 0.2 us more per call, on calls (connect,
settimeout, close...) that make a system call and a record anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any


def _lendable(owner: type, name: str, traced: Callable[..., Any],
              original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(traced)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if owner in type(self).__mro__:
            return traced(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    method.__qualname__ = f"{owner.__qualname__}.{name}"
    return method


def make_lendable(owner: type, original: type, *, skip: Iterable[str] = ()) -> None:
    """Wrap each public method ``owner`` defines (plain functions, not ``skip``) so that
    on an object that is not an ``owner`` it is ``original``'s method of that name."""
    skipped = set(skip)
    for name, value in list(vars(owner).items()):
        if name.startswith("_") or name in skipped or not callable(value) \
                or not hasattr(value, "__code__"):
            continue
        setattr(owner, name, _lendable(owner, name, value, getattr(original, name)))
