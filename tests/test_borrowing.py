"""Traced methods copied onto other classes behave there as the originals (borrowing.py).

urllib3.contrib.pyopenssl does ``WrappedSocket.makefile = socket_cls.makefile`` with
``from socket import socket as socket_cls``: imported while tracing, it copies
TracedSocket's method.
"""

from __future__ import annotations

import inspect
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme

import tracesock
from tests.test_tls import RESPONSE_CHUNKS, TLSServer, server_context

HOT = ("send", "sendall", "recv", "recv_into")
PLAIN = socket.socket  # the real class, whatever tracing swaps in later


def public_methods(cls: type) -> list[str]:
    return sorted(name for name, value in vars(cls).items()
                  if not name.startswith("_") and callable(value)
                  and not isinstance(value, (classmethod, staticmethod)))


def test_every_public_traced_method_is_lendable() -> None:
    from tracesock.record.messages import MessageCalls
    from tracesock.record.tls import TracedSSLSocket

    tls_hot = {"read", "recv", "recv_into", "write", "send", "sendall"}
    for cls, hot in ((tracesock.TracedSocket, set(HOT)), (MessageCalls, set()),
                     (TracedSSLSocket, tls_hot)):
        names = set(public_methods(cls)) - {"trace_id"}
        assert names
        for name in names - hot:  # wrapped by borrowing.py; the hot ones check themselves
            assert hasattr(vars(cls)[name], "__wrapped__"), f"{cls.__name__}.{name}"
    assert {"makefile", "connect", "close", "settimeout", "shutdown", "dup"} <= set(
        public_methods(tracesock.TracedSocket))


def borrower(source: type) -> type:
    """A socket class of its own that copies every public method of ``source``."""
    names = set(public_methods(source)) | set(public_methods(source.__mro__[1])) | set(HOT)
    attrs = {name: getattr(source, name) for name in names
             if name not in ("bound_to",) and hasattr(source, name)}
    return type("Borrower", (PLAIN,), attrs)


def exchange(cls: type) -> list[Any]:
    """The same calls on a socket of ``cls`` connected to a plain one: what each gave."""
    a, b = socket.socketpair()
    s = cls(fileno=a.detach())
    out: list[Any] = []
    s.setblocking(True)
    s.settimeout(5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    out.append(s.send(b"one"))
    out.append(s.sendall(b"two"))
    out.append(b.recv(6))
    b.sendall(b"abcdefgh\nrest")
    out.append(s.recv(3))
    buf = bytearray(5)
    out.append((s.recv_into(buf), bytes(buf)))
    f = s.makefile("rb")
    out.append(f.readline())
    f.close()
    d = s.dup()
    out.append(type(d) is type(s))
    d.close()
    s.shutdown(socket.SHUT_WR)
    out.append(b.recv(10))
    b.close()
    out.append(s.recv(10))
    s.close()
    return out


def test_a_class_borrowing_every_traced_method_behaves_as_a_plain_socket(tmp_path: Path
                                                                        ) -> None:
    plain = exchange(PLAIN)
    assert plain[:3] == [3, None, b"onetwo"]
    assert exchange(borrower(tracesock.TracedSocket)) == plain
    with tracesock.trace(tmp_path / "t.jsonl"):
        borrowed = borrower(socket.socket)  # socket.socket is the stand-in here
        assert borrowed.makefile is tracesock.TracedSocket.makefile
        assert exchange(borrowed) == plain
    ops = {e.op for e in tracesock.load(tmp_path / "t.jsonl").events}
    assert not ops & {"makefile", "dup", "shutdown", "settimeout", "setsockopt"}  # not traced


def test_borrowed_methods_on_a_foreign_object_fail_as_socket_socket_s_own() -> None:
    class NotASocket:
        send = tracesock.TracedSocket.send
        connect = tracesock.TracedSocket.connect

    with pytest.raises(TypeError) as traced_err:
        NotASocket().send(b"x")
    with pytest.raises(TypeError) as plain_err:
        socket.socket.send(NotASocket(), b"x")  # type: ignore[arg-type]
    assert str(traced_err.value).split(" doesn't")[0] == str(plain_err.value).split(
        " doesn't")[0]
    with pytest.raises(TypeError):
        NotASocket().connect(("127.0.0.1", 1))


def test_lent_methods_keep_their_signatures() -> None:
    for name in ("connect", "makefile", "settimeout", "sendmsg", "recvmsg"):
        method = getattr(tracesock.TracedSocket, name)
        assert method.__name__ == name
        assert "self" in inspect.signature(method).parameters


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(ca: trustme.CA) -> Any:
    srv = TLSServer(ca)
    yield srv
    srv.close()


def test_urllib3_pyopenssl_imported_while_tracing_does_https(
        tmp_path: Path, server: TLSServer, ca: trustme.CA,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("OpenSSL")
    import urllib3

    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    for name in [m for m in sys.modules if m.startswith("urllib3.contrib.pyopenssl")]:
        monkeypatch.delitem(sys.modules, name)
    trace = tmp_path / "t.jsonl"
    with tracesock.trace(trace):
        import urllib3.contrib.pyopenssl as pyopenssl

        assert pyopenssl.WrappedSocket.makefile is tracesock.TracedSocket.makefile
        pyopenssl.inject_into_urllib3()
        try:
            with urllib3.PoolManager(ca_certs=str(ca_pem)) as pool:
                resp = pool.request("GET", f"https://localhost:{server.port}/page",
                                    retries=False, timeout=10)
        finally:
            pyopenssl.extract_from_urllib3()
    assert resp.status == 200
    assert resp.data == b"".join(RESPONSE_CHUNKS).split(b"\r\n\r\n", 1)[1]
    assert server.requests and server.requests[0].startswith(b"GET /page")
    conns = tracesock.load(trace).connections
    assert len(conns) == 1  # the TCP socket under pyOpenSSL (OpenSSL writes its descriptor)
    assert "connect" in [e.op for e in next(iter(conns.values())).events]


def test_traced_ssl_methods_on_a_plain_sslsocket_are_its_own(tmp_path: Path,
                                                             ca: trustme.CA) -> None:
    with tracesock.trace(tmp_path / "t.jsonl"):
        traced_ssl = ssl.create_default_context().sslsocket_class
    assert traced_ssl is not ssl.SSLSocket
    a, b = socket.socketpair()
    server_ctx = server_context(ca, "localhost", untraced=True)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.sslsocket_class = ssl.SSLSocket
    done: list[ssl.SSLSocket] = []
    t = threading.Thread(target=lambda: done.append(
        server_ctx.wrap_socket(b, server_side=True)))
    t.start()
    client = client_ctx.wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False)
    traced_ssl.do_handshake(client)
    t.join(10)
    srv = done[0]
    assert traced_ssl.send(client, b"hello") == 5
    traced_ssl.sendall(client, b" world")
    assert traced_ssl.write(client, b"!") == 1
    got = b""
    while len(got) < 12:
        got += traced_ssl.recv(srv, 64)
    assert got == b"hello world!"
    srv.sendall(b"back")
    buf = bytearray(4)
    assert traced_ssl.recv_into(client, buf) == 4 and buf == b"back"
    for s in (client, srv):
        s.close()
    assert tracesock.load(tmp_path / "t.jsonl").connections == {}
