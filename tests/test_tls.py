"""TLS: plaintext traced on the socket's own id, keylog, plaintext replay (loopback only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trustme

import tracesock
from tracesock.errors import ReplayError, ReplayMismatch
from tracesock.replay import replay

_ORIGINAL_SOCKET = socket.socket
RESPONSE_CHUNKS = [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhel",
                   b"lo ", b"world"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def read_request(s: ssl.SSLSocket) -> bytes | None:
    """An HTTP request's head, read until its blank line (None: the client went away)."""
    req = b""
    while b"\r\n\r\n" not in req:
        chunk = s.recv(4096)
        if not chunk:
            return None
        req += chunk
    return req


def server_context(ca: trustme.CA, *names: str, untraced: bool = False) -> ssl.SSLContext:
    """A server-side context with a certificate for ``names``; ``untraced``: its sockets
    are ssl.SSLSocket whatever tracing swaps in (the other end of a traced client)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    if untraced:
        ctx.sslsocket_class = ssl.SSLSocket
    return ctx


def untraced_listener() -> socket.socket:
    """A listening socket on 127.0.0.1 of the original class: never traced."""
    lst = _ORIGINAL_SOCKET()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    return lst


class TLSServer:
    """An HTTPS-ish server on 127.0.0.1, untraced even inside a trace (it builds its
    accepted sockets from the original class), sending RESPONSE_CHUNKS one by one."""

    def __init__(self, ca: trustme.CA, handler: Callable[[ssl.SSLSocket], None] | None = None):
        self.ctx = server_context(ca, "localhost", "127.0.0.1", untraced=True)
        self.listener = untraced_listener()
        self.port: int = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.handler = handler or self.http
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                fd, _ = self.listener._accept()  # type: ignore[attr-defined]
            except OSError:
                return
            raw = _ORIGINAL_SOCKET(fileno=fd)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as s:
                    self.handler(s)
            except (OSError, ssl.SSLError):
                pass

    def http(self, s: ssl.SSLSocket) -> None:
        req = read_request(s)
        if req is None:
            return
        self.requests.append(req)
        for chunk in RESPONSE_CHUNKS:
            s.sendall(chunk)
            threading.Event().wait(0.02)  # let each chunk be its own recv

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the serving thread's accept(), which
            self.listener.shutdown(socket.SHUT_RDWR)  # holds the listener open
        self.listener.close()


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[TLSServer]:
    srv = TLSServer(ca)
    yield srv
    srv.close()


def calls(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [rec for rec in lines if rec["type"] == "call"]


def https_get(ctx: ssl.SSLContext, port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/page")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_https_plaintext_is_traced_on_the_connecting_socket(
        tmp_path: Path, server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        status, body = https_get(client_ctx, server.port)
    assert (status, body) == (200, b"hello world")
    evs = calls(out)
    assert {e["sock"] for e in evs} == {1}
    ops = [e["op"] for e in evs]
    assert ops[0] == "socket" and ops.index("connect") < ops.index("detach")
    assert ops.index("detach") < ops.index("do_handshake") < ops.index("sendall")
    hs = next(e for e in evs if e["op"] == "do_handshake")
    assert hs["tls"] is True and hs["version"].startswith("TLSv1.") and hs["cipher"]
    assert hs["server_hostname"] == "localhost"
    sent = [e for e in evs if e["op"] == "sendall"]
    assert len(sent) == 1 and sent[0]["tls"] is True
    assert base64.b64decode(sent[0]["data"]).startswith(b"GET /page HTTP/1.1\r\n")
    received = [base64.b64decode(e["data"]) for e in evs if e["op"] == "recv_into" and e["nbytes"]]
    assert b"".join(received) == b"".join(RESPONSE_CHUNKS)
    assert len(received) >= 2  # the server's chunking shows through
    assert all(e["tls"] for e in evs if e["op"] == "recv_into")
    assert ops[-1] == "close" and evs[-1]["tls"] is True


def test_https_behaves_the_same_traced_and_untraced(
        tmp_path: Path, server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    plain = https_get(client_ctx, server.port)
    with tracesock.trace(str(tmp_path / "t.jsonl")):
        traced = https_get(client_ctx, server.port)
    assert plain == traced
    assert server.requests[0] == server.requests[1]


def test_urllib_https_is_traced(tmp_path: Path, server: TLSServer,
                                client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)), urllib.request.urlopen(f"https://localhost:{server.port}/u",
                                context=client_ctx, timeout=10) as resp:
        assert resp.read() == b"hello world"
    evs = calls(out)
    data = b"".join(base64.b64decode(e["data"]) for e in evs
                    if e.get("tls") and e["op"] in ("send", "sendall") and "data" in e)
    assert data.startswith(b"GET /u HTTP/1.1\r\n")


def test_no_payload_keeps_counts_only(tmp_path: Path, server: TLSServer,
                                      client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out), payload=False):
        https_get(client_ctx, server.port)
    evs = [e for e in calls(out) if e.get("tls") and "nbytes" in e]
    assert evs and all("data" not in e for e in evs)
    assert sum(e["nbytes"] for e in evs if e["op"] == "recv_into") == len(b"".join(RESPONSE_CHUNKS))


def test_unwrap_then_plain_bytes_on_the_same_id(tmp_path: Path, ca: trustme.CA,
                                                client_ctx: ssl.SSLContext) -> None:
    def handler(s: ssl.SSLSocket) -> None:
        assert s.recv(100) == b"secret"
        plain = s.unwrap()
        plain.sendall(b"clear")
        plain.close()

    srv = TLSServer(ca, handler)
    out = tmp_path / "t.jsonl"
    try:
        with tracesock.trace(str(out)):
            raw = socket.create_connection(("127.0.0.1", srv.port))
            s = client_ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"secret")
            plain = s.unwrap()
            assert plain.recv(100) == b"clear"
            plain.close()
    finally:
        srv.close()
    evs = calls(out)
    ops = [e["op"] for e in evs]
    assert "unwrap" in ops
    assert {e["sock"] for e in evs} == {1}  # unwrap() returns the same socket, now plain
    assert any(e["op"] == "recv" and e.get("data") == base64.b64encode(b"clear").decode()
               and "tls" not in e for e in evs)


def test_tls_traces_are_valid_against_the_schema(tmp_path: Path, server: TLSServer,
                                                 client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        https_get(client_ctx, server.port)
    text = resources.files("tracesock.trace").joinpath("schema.json").read_text()
    validator = jsonschema.Draft202012Validator(json.loads(text))
    for line in out.read_text().splitlines():
        validator.validate(json.loads(line))


def test_https_replays_without_network_or_certificates(
        tmp_path: Path, server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        assert https_get(client_ctx, server.port) == (200, b"hello world")
    server.close()
    # No CA trusted: a real handshake could not succeed. Raw recv() shows the chunks.
    with replay(str(out)):
        ctx = ssl.create_default_context()
        raw = socket.create_connection(("localhost", server.port))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(base64.b64decode(next(e["data"] for e in calls(out)
                                        if e["op"] == "sendall")))
        recorded = [base64.b64decode(e["data"]) for e in calls(out)
                    if e["op"] == "recv_into" and e["nbytes"]]
        chunks = [s.recv(8192) for _ in recorded]
        s.close()
    assert chunks == recorded
    with replay(str(out)):
        assert https_get(ssl.create_default_context(), server.port) == (200, b"hello world")


def test_asyncio_tls_plaintext_is_tied_to_the_transport_socket(
        tmp_path: Path, server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    async def main() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                       ssl=client_ctx,
                                                       server_hostname="localhost")
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        body = await reader.read()
        writer.close()
        await writer.wait_closed()
        return body

    plain = asyncio.run(main())
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        traced = asyncio.run(main())
    assert plain == traced == b"".join(RESPONSE_CHUNKS)
    evs = calls(out)
    bio = next(e for e in evs if e["op"] == "wrap_bio")
    sock_ev = next(e for e in evs if e["op"] == "connect")
    assert bio["transport"] == sock_ev["sock"]
    assert any(e["op"] == "do_handshake" and e["sock"] == bio["sock"] for e in evs)
    writes = [e for e in evs if e["op"] == "write" and e["sock"] == bio["sock"]]
    assert base64.b64decode(writes[0]["data"]).startswith(b"GET /a")
    reads = b"".join(base64.b64decode(e["data"]) for e in evs
                     if e["op"] == "read" and e["sock"] == bio["sock"] and "data" in e)
    assert reads == traced


# -- keylog and capture -----------------------------------------------------------------


def _capture_possible() -> str | None:
    try:
        s = _ORIGINAL_SOCKET(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except (PermissionError, AttributeError) as exc:
        return f"no CAP_NET_RAW ({exc})"
    s.close()
    if shutil.which("tshark") is None:
        return "tshark is not installed"
    return None


def test_keylog_is_written_in_nss_format(tmp_path: Path, server: TLSServer,
                                         client_ctx: ssl.SSLContext) -> None:
    keys = tmp_path / "keys.txt"
    with tracesock.trace(str(tmp_path / "t.jsonl"), keylog=str(keys)):
        https_get(client_ctx, server.port)
    labels = {line.split()[0] for line in keys.read_text().splitlines()
              if line and not line.startswith("#")}
    assert "CLIENT_TRAFFIC_SECRET_0" in labels or "CLIENT_RANDOM" in labels
    assert client_ctx.keylog_filename == str(keys)  # set on the context that wrapped


def test_keylog_decrypts_the_capture_with_tshark(tmp_path: Path, server: TLSServer,
                                                 client_ctx: ssl.SSLContext) -> None:
    reason = _capture_possible()
    if reason is not None:
        pytest.skip(reason)
    keys, cap = tmp_path / "keys.txt", tmp_path / "c.pcapng"
    with tracesock.trace(str(tmp_path / "t.jsonl"), keylog=str(keys), capture=str(cap),
                         capture_all=True, capture_required=True):
        https_get(client_ctx, server.port)
    base = ["tshark", "-r", str(cap), "-Y", "http.request", "-T", "fields",
            "-e", "http.request.line", "-e", "http.request.uri"]
    env = {**os.environ, "HOME": str(tmp_path)}
    without = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    assert "/page" not in without.stdout
    options = ["-o", f"tls.keylog_file:{keys}", "-d", f"tcp.port=={server.port},tls"]
    decrypted = subprocess.run([*base[:3], *options, *base[3:]],
                               capture_output=True, text=True, env=env, timeout=60)
    assert "/page" in decrypted.stdout, decrypted.stderr


# -- more clients: smtplib STARTTLS, a TLS listener, the CLI ----------------------------


def test_smtplib_starttls_plaintext_is_traced(tmp_path: Path, ca: trustme.CA,
                                             client_ctx: ssl.SSLContext) -> None:
    import smtplib

    server_ctx = server_context(ca, "localhost", "127.0.0.1", untraced=True)
    lst = untraced_listener()

    def serve() -> None:
        fd, _ = lst._accept()  # type: ignore[attr-defined]
        conn: Any = _ORIGINAL_SOCKET(fileno=fd)
        f = conn.makefile("rwb")

        def say(line: bytes) -> None:
            f.write(line + b"\r\n")
            f.flush()

        say(b"220 localhost ESMTP")
        while line := f.readline():
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                say(b"250-localhost")
                say(b"250 STARTTLS")
            elif cmd == b"STARTTLS":
                say(b"220 go ahead")
                f.close()
                conn = server_ctx.wrap_socket(conn, server_side=True)
                f = conn.makefile("rwb")
            elif cmd == b"QUIT":
                say(b"221 bye")
                break
            else:
                say(b"250 ok")
        f.close()
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    out = tmp_path / "t.jsonl"
    try:
        with tracesock.trace(str(out)), \
                smtplib.SMTP("127.0.0.1", lst.getsockname()[1], timeout=10) as smtp:
            smtp.ehlo()
            smtp.starttls(context=client_ctx)
            smtp.ehlo()
            smtp.noop()
    except ssl.SSLCertVerificationError:
        pytest.fail("the test's CA should be trusted")
    finally:
        lst.close()
        t.join(5)
    evs = calls(out)
    ops = [e["op"] for e in evs]
    hs = ops.index("do_handshake")
    clear = b"".join(base64.b64decode(e["data"]) for e in evs[:hs] if e["op"] == "sendall")
    secret = b"".join(base64.b64decode(e["data"]) for e in evs[hs:]
                      if e["op"] == "sendall" and e.get("tls"))
    assert b"STARTTLS" in clear and b"STARTTLS" not in secret
    assert secret.startswith(b"ehlo ") and b"noop" in secret and b"QUIT" in secret
    assert {e["sock"] for e in evs} == {1}


def test_tls_listener_accept_is_traced(tmp_path: Path, ca: trustme.CA,
                                       client_ctx: ssl.SSLContext) -> None:
    server_ctx = server_context(ca, "localhost")
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        lst = server_ctx.wrap_socket(socket.socket(), server_side=True)
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        port = lst.getsockname()[1]

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"ping")
                s.recv(10)

        t = threading.Thread(target=client)
        t.start()
        conn, _ = lst.accept()
        assert conn.recv(10) == b"ping"
        conn.sendall(b"pong")
        t.join()
        conn.close()
        lst.close()
    evs = calls(out)
    accept = next(e for e in evs if e["op"] == "accept")
    assert 0 not in {e["sock"] for e in evs}
    served = [e for e in evs if e["sock"] == accept["accepted"]]
    assert [e["op"] for e in served if e.get("tls")][:3] == ["do_handshake", "recv", "sendall"]


def test_cli_run_keylog(tmp_path: Path, server: TLSServer, ca: trustme.CA) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    script = tmp_path / "fetch.py"
    script.write_text(
        "import http.client, ssl, sys\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
        "c = http.client.HTTPSConnection('localhost', int(sys.argv[1]), context=ctx)\n"
        "c.request('GET', '/cli'); print(c.getresponse().read().decode())\n")
    out, keys = tmp_path / "t.jsonl", tmp_path / "keys.txt"
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "tracesock", "run", "--keylog", str(keys),
                          "-o", str(out), str(script), str(server.port), str(cafile)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello world\n"
    assert "CLIENT_TRAFFIC_SECRET_0" in keys.read_text()
    assert any(e.get("tls") and e["op"] == "sendall" for e in calls(out))


def test_a_socket_made_before_tracing_gets_an_id_when_wrapped(
        tmp_path: Path, server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port))  # not traced
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)), \
            client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        got = b""
        while chunk := s.recv(100):
            got += chunk
    assert got == b"".join(RESPONSE_CHUNKS)
    evs = calls(out)
    assert evs[0]["op"] == "socket" and evs[0]["note"] == "created before tracing"
    assert {e["sock"] for e in evs} == {1}
    assert [e["op"] for e in evs][1:3] == ["do_handshake", "sendall"]


# -- asyncio ssl=: replayed at the plaintext level --------------------------------------

PIECES = [b"HTTP/1.1 200 OK\r\n", b"Content-Length: 11\r\n\r\nhel", b"lo", b" world"]
REQUEST = b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n"


def piece_handler(pieces: list[bytes], then: bytes | None = None
                  ) -> Callable[[ssl.SSLSocket], None]:
    """A TLSServer handler: reads a request, sends ``pieces`` one by one with pauses (each
    its own TLS record, most likely its own recv), then, if given, reads ``then`` and
    waits for the client to close."""
    def handle(s: ssl.SSLSocket) -> None:
        if read_request(s) is None:
            return
        for piece in pieces:
            s.sendall(piece)
            threading.Event().wait(0.05)
        if then is not None:
            got = b""
            while len(got) < len(then) and (chunk := s.recv(100)):
                got += chunk
            while s.recv(100):  # until the client's close: closing first would reset
                pass
    return handle


async def asyncio_get(port: int, ctx: ssl.SSLContext, request: bytes = REQUEST,
                      bye: bytes | None = None) -> list[bytes]:
    """The stdlib asyncio client: each reader.read(100) is one data_received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    writer.write(request)
    await writer.drain()
    chunks = []
    if bye is None:
        while data := await reader.read(100):
            chunks.append(data)
    else:  # read the response, say bye, close first
        while sum(map(len, chunks)) < len(b"".join(PIECES)):
            chunks.append(await reader.read(100))
        for _ in range(3):  # think: let the loop run its other callbacks first
            await asyncio.sleep(0)
        writer.write(bye)
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    return chunks


def plaintext_runs(path: Path) -> list[bytes]:
    """What the recorded app received: the SSLObject's reads, joined up to each
    SSLWantReadError (asyncio's SSL protocol reads until then, then data_received)."""
    runs: list[bytes] = []
    run = b""
    for e in calls(path):
        if e["op"] != "read" or not e.get("tls"):
            continue
        if "error" in e or e["nbytes"] == 0:
            if run:
                runs.append(run)
            run = b""
        else:
            run += base64.b64decode(e["data"])
    return [*runs, run] if run else runs


@pytest.fixture
def piece_server(ca: trustme.CA) -> Iterator[TLSServer]:
    srv = TLSServer(ca, piece_handler(PIECES))
    yield srv
    srv.close()


def record_asyncio_get(path: Path, server: TLSServer, ctx: ssl.SSLContext,
                       **kwargs: Any) -> list[bytes]:
    with tracesock.trace(str(path)):
        chunks = asyncio.run(asyncio_get(server.port, ctx, **kwargs))
    server.close()
    with _ORIGINAL_SOCKET() as probe:  # nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
    return chunks


def test_asyncio_tls_client_replays_the_recorded_plaintext_chunks(
        tmp_path: Path, piece_server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    recorded = record_asyncio_get(out, piece_server, client_ctx)
    assert b"".join(recorded) == b"".join(PIECES)
    assert len(recorded) >= 3  # the server's pauses show through
    assert recorded == plaintext_runs(out)
    for _ in range(20):
        no_ca = ssl.create_default_context()  # a real handshake could not succeed
        with replay(str(out)):
            assert asyncio.run(asyncio_get(piece_server.port, no_ca)) == recorded


def test_asyncio_tls_replay_answers_like_blocking_replay(
        tmp_path: Path, piece_server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    record_asyncio_get(out, piece_server, client_ctx)

    async def info() -> tuple[Any, ...]:
        reader, writer = await asyncio.open_connection(
            "localhost", piece_server.port, ssl=ssl.create_default_context())
        sslobj = writer.get_extra_info("ssl_object")
        got = (writer.get_extra_info("peercert"), writer.get_extra_info("cipher"),
               sslobj.version(), sslobj.server_hostname, sslobj.server_side)
        writer.write(REQUEST)
        while await reader.read(100):
            pass
        writer.close()
        await writer.wait_closed()
        return got

    with replay(str(out)):  # "localhost" resolves through the recording
        assert asyncio.run(info()) == ({}, None, None, "localhost", False)


def test_asyncio_tls_wrong_write_raises_replay_mismatch(
        tmp_path: Path, piece_server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    record_asyncio_get(out, piece_server, client_ctx)
    wrong = REQUEST.replace(b"/a", b"/b")
    with pytest.raises(ReplayMismatch, match=r"byte 5 .*recorded write seq") as info, \
            replay(str(out)):
        asyncio.run(asyncio_get(piece_server.port, ssl.create_default_context(), wrong))
    assert "GET /b" in str(info.value)


def test_asyncio_tls_client_behaves_the_same_untraced_traced_and_replayed(
        tmp_path: Path, piece_server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    plain = asyncio.run(asyncio_get(piece_server.port, client_ctx))
    out = tmp_path / "t.jsonl"
    traced = record_asyncio_get(out, piece_server, client_ctx)
    with replay(str(out)):
        replayed = asyncio.run(asyncio_get(piece_server.port, ssl.create_default_context()))
    assert b"".join(plain) == b"".join(traced) == b"".join(PIECES)
    assert replayed == traced
    bio = next(e for e in calls(out) if e["op"] == "wrap_bio")
    assert bio["transport"] == next(e["sock"] for e in calls(out) if e["op"] == "connect")


def test_asyncio_tls_client_that_writes_last_and_closes_first(
        tmp_path: Path, ca: trustme.CA, client_ctx: ssl.SSLContext) -> None:
    # The peer's FIN comes after the client's last write: replay holds the FIN until the
    # code has written all it wrote (else asyncio would drop the write as too late).
    srv = TLSServer(ca, piece_handler(PIECES, then=b"BYE\r\n"))
    out = tmp_path / "t.jsonl"
    recorded = record_asyncio_get(out, srv, client_ctx, bye=b"BYE\r\n")
    assert b"".join(recorded) == b"".join(PIECES)
    for _ in range(5):
        with replay(str(out)):
            got = asyncio.run(asyncio_get(srv.port, ssl.create_default_context(),
                                          bye=b"BYE\r\n"))
        assert got == recorded
    with pytest.raises(ReplayMismatch, match="BYE"), replay(str(out)):
        asyncio.run(asyncio_get(srv.port, ssl.create_default_context(), bye=b""))
    # asyncio reads again when the peer's FIN comes, and that SSLWantReadError, recorded
    # after BYE, holds the FIN back by itself; without it (a trace whose SSLObject has no
    # read after its last write) the FIN must still wait for BYE.
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    last_write = max(r["seq"] for r in recs if r.get("op") == "write")
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(json.dumps(r) + "\n" for r in recs
                           if not (r.get("op") == "read" and r["seq"] > last_write)))
    with replay(str(cut)):
        assert asyncio.run(asyncio_get(srv.port, ssl.create_default_context(),
                                       bye=b"BYE\r\n")) == recorded


def test_asyncio_tls_reads_of_one_run_are_one_chunk(
        tmp_path: Path, piece_server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    # Two TLS records in one recv of the socket: asyncio reads both, then gets
    # SSLWantReadError, and the app receives them joined. Made deterministic here by
    # removing, from a real recording, the SSLWantReadError between two reads.
    out = tmp_path / "t.jsonl"
    recorded = record_asyncio_get(out, piece_server, client_ctx)
    lines = out.read_text().splitlines(keepends=True)
    recs = [json.loads(line) for line in lines]
    data_reads = [i for i, r in enumerate(recs) if r.get("op") == "read" and r.get("nbytes")]
    first, second = data_reads[0], data_reads[1]
    between = [i for i in range(first + 1, second) if recs[i].get("op") == "read"]
    assert between and all(recs[i]["error"]["type"] == "SSLWantReadError" for i in between)
    joined = tmp_path / "joined.jsonl"
    joined.write_text("".join(line for i, line in enumerate(lines) if i not in between))
    expected = [recorded[0] + recorded[1], *recorded[2:]]
    assert plaintext_runs(joined) == expected
    with replay(str(joined)):
        assert asyncio.run(asyncio_get(piece_server.port, client_ctx)) == expected


def test_asyncio_tls_server_replays_accepted_connections(
        tmp_path: Path, ca: trustme.CA, client_ctx: ssl.SSLContext) -> None:
    pieces = [b"GE", b"T /x HTTP/1.1\r", b"\n", b"Host: y\r\n\r\n"]

    async def serve(ctx: ssl.SSLContext, answer: bytes, client: Callable[[int], None] | None
                    ) -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while not b"".join(got).endswith(b"\r\n\r\n"):
                    data = await reader.read(100)
                    if not data:
                        break
                    got.append(data)
                writer.write(answer)
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                done.set()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        if client is not None:
            threading.Thread(target=client, args=(srv.sockets[0].getsockname()[1],),
                             daemon=True).start()
        await done.wait()
        srv.close()
        await srv.wait_closed()
        return got

    def client(port: int) -> None:  # untraced, though it runs inside the trace
        client_ctx.sslsocket_class = ssl.SSLSocket
        raw = _ORIGINAL_SOCKET()
        raw.connect(("127.0.0.1", port))
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
            for piece in pieces:
                s.sendall(piece)
                threading.Event().wait(0.05)
            while s.recv(100):
                pass

    server_ctx = server_context(ca, "localhost", "127.0.0.1")
    out = tmp_path / "t.jsonl"
    with tracesock.trace(str(out)):
        recorded = asyncio.run(serve(server_ctx, b"200 OK", client))
    assert b"".join(recorded) == b"".join(pieces) and len(recorded) >= 3
    assert recorded == plaintext_runs(out)
    accept = next(e for e in calls(out) if e["op"] == "accept" and "accepted" in e)
    assert next(e for e in calls(out) if e["op"] == "wrap_bio")["transport"] == \
        accept["accepted"]
    no_cert = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no client, no cert
    for _ in range(10):
        with replay(str(out)):
            assert asyncio.run(serve(no_cert, b"200 OK", None)) == recorded
    with pytest.raises(ReplayMismatch, match="404"), replay(str(out)):
        asyncio.run(serve(no_cert, b"404 NO", None))


def test_asyncio_start_tls_is_traced_and_replayed(
        tmp_path: Path, ca: trustme.CA, client_ctx: ssl.SSLContext) -> None:
    server_ctx = server_context(ca, "localhost", "127.0.0.1", untraced=True)
    lst = untraced_listener()
    port = lst.getsockname()[1]

    def serve() -> None:
        fd, _ = lst._accept()  # type: ignore[attr-defined]
        conn = _ORIGINAL_SOCKET(fileno=fd)
        assert conn.recv(100) == b"STARTTLS\r\n"
        conn.sendall(b"GO\r\n")
        with server_ctx.wrap_socket(conn, server_side=True) as s:
            s.recv(100)
            for piece in (b"se", b"cret", b"!"):
                s.sendall(piece)
                threading.Event().wait(0.05)

    async def main(ctx: ssl.SSLContext) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\r\n")
        await writer.drain()
        chunks = [await reader.readline()]
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(b"hi")
        await writer.drain()
        while data := await reader.read(100):
            chunks.append(data)
        writer.close()
        await writer.wait_closed()
        return chunks

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    out = tmp_path / "t.jsonl"
    try:
        with tracesock.trace(str(out)):
            recorded = asyncio.run(main(client_ctx))
    finally:
        lst.close()
        t.join(5)
    assert recorded[0] == b"GO\r\n" and b"".join(recorded[1:]) == b"secret!"
    connect = next(e for e in calls(out) if e["op"] == "connect")
    assert next(e for e in calls(out) if e["op"] == "wrap_bio")["transport"] == connect["sock"]
    for _ in range(5):
        with replay(str(out)):
            assert asyncio.run(main(ssl.create_default_context())) == recorded


def test_asyncio_tls_replay_needs_the_transport_in_the_trace(
        tmp_path: Path, piece_server: TLSServer, client_ctx: ssl.SSLContext) -> None:
    out = tmp_path / "t.jsonl"
    record_asyncio_get(out, piece_server, client_ctx)
    unknown = tmp_path / "unknown.jsonl"
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    for r in recs:
        if r.get("op") == "wrap_bio":
            r["transport"] = None
    unknown.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ReplayError, match="no recorded wrap_bio names it"), \
            replay(str(unknown)):
        asyncio.run(asyncio_get(piece_server.port, ssl.create_default_context()))


def test_bios_the_program_pumps_itself_stay_real_tls_during_replay(
        tmp_path: Path, ca: trustme.CA, client_ctx: ssl.SSLContext) -> None:
    server_ctx = server_context(ca, "localhost")
    empty = tmp_path / "empty.jsonl"
    with tracesock.trace(str(empty)):
        pass
    with replay(str(empty)):
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(4):  # pump the handshake by hand
            for obj in (client, server):
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        assert client.version() == server.version() is not None
        client.write(b"ping")
        s_in.write(c_out.read())
        assert server.read(10) == b"ping"
