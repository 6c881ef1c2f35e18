"""Real client libraries replayed offline: each one against its real private server.

Each case runs a small client program three ways, every time in a fresh subprocess:
plain against the server, recorded with ``tracesock.trace()``, and then, with the
server stopped and a ConnectionCounter listening on its old port, three times with
``tracesock.replay()``. The replays must print what the recorded run printed, and
nothing may connect to the old port. The programs print one JSON line; anything that
varies from run to run (dates, ids) is left out of what they print, not masked after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import pytest
from realservers import (
    ConnectionCounter,
    MariaDBServer,
    MosquittoServer,
    PostgresServer,
    RedisServer,
)

pytest_plugins = ["realservers"]
pytestmark = pytest.mark.timeout(120)

RUN_TIMEOUT = 60.0  # seconds for one subprocess: a hang fails the case, it never waits on
REPLAYS = 3

HARNESS = '''
import json, sys
import tracesock

mode, trace_path, host, port, user, password, database = sys.argv[1:8]
port = int(port)
{body}
if mode == "plain":
    out = main(host, port, user, password, database)
elif mode == "record":
    with tracesock.trace(trace_path):
        out = main(host, port, user, password, database)
else:
    with tracesock.replay(trace_path):
        out = main(host, port, user, password, database)
print("RESULT " + json.dumps(out, sort_keys=True))
'''


class Server(Protocol):
    host: str
    port: int

    def stop(self) -> None: ...


def run(script: Path, mode: str, trace: Path, server: Server, user: str = "",
        password: str = "", database: str = "") -> Any:
    """Run the client program once in a fresh interpreter; what it printed as RESULT."""
    argv = [sys.executable, str(script), mode, str(trace), server.host, str(server.port),
            user, password, database]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"{mode} run failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def check_offline(tmp_path: Path, body: str, server: Server, **login: str) -> Any:
    """Plain, recorded, then (server stopped) three replays: all alike, none connects."""
    script = tmp_path / "client.py"
    script.write_text(HARNESS.format(body=textwrap.dedent(body)))
    trace = tmp_path / "client.jsonl"
    plain = run(script, "plain", trace, server, **login)
    recorded = run(script, "record", trace, server, **login)
    assert recorded == plain
    port = server.port
    server.stop()
    counter = ConnectionCounter(port)
    try:
        for _ in range(REPLAYS):
            assert run(script, "replay", trace, server, **login) == recorded
    finally:
        assert counter.close() == 0
    return recorded


def logins(server: RedisServer | MariaDBServer | PostgresServer | MosquittoServer,
           ) -> dict[str, str]:
    return {"user": server.user, "password": server.password,
            "database": str(getattr(server, "database", ""))}


# -- servers of our own: HTTP ----------------------------------------------------------

class _Chunked(BaseHTTPRequestHandler):
    """Fixed headers (no Date, a fixed Server) and a chunked body that names the path."""

    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "tracesock-test"

    def date_time_string(self, timestamp: float | None = None) -> str:
        return "Thu, 01 Jan 2026 00:00:00 GMT"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in (b"chunked ", b"reply to ", self.path.encode()):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpServer:
    """A chunked-reply http.server on 127.0.0.1, in a thread of the test process."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self._httpd = ThreadingHTTPServer((self.host, 0), _Chunked)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    srv = HttpServer()
    try:
        yield srv
    finally:
        srv.stop()


# -- the cases -------------------------------------------------------------------------

def test_redis_py(tmp_path: Path, redis_server: RedisServer) -> None:
    out = check_offline(tmp_path, '''
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        def main(host, port, user, password, database):
            r = redis.Redis(host=host, port=port, username=user, password=password,
                            retry=Retry(NoBackoff(), 0), socket_timeout=10)
            try:
                out = [r.set("k", "v"), r.get("k").decode(), r.incr("n"), r.incr("n", 5)]
                pipe = r.pipeline()
                pipe.set("p", 1).incr("p").get("p").delete("k")
                out.append([x.decode() if isinstance(x, bytes) else x for x in pipe.execute()])
                r.delete("n", "p")
                return out
            finally:
                r.close()
    ''', redis_server, **logins(redis_server))
    assert out == [True, "v", 1, 6, [True, 2, "2", 1]]


def test_urllib3_pooled_chunked(tmp_path: Path, http_server: HttpServer) -> None:
    out = check_offline(tmp_path, '''
        import urllib3

        def main(host, port, user, password, database):
            with urllib3.PoolManager(maxsize=1) as pool:
                out = []
                for path in ("/a", "/b", "/c"):
                    resp = pool.request("GET", f"http://{host}:{port}{path}",
                                        preload_content=False, timeout=10)
                    out.append([resp.status, resp.headers.get("Transfer-Encoding"),
                                [c.decode() for c in resp.read_chunked()]])
                    resp.release_conn()
                out.append(pool.connection_from_host(host, port).num_connections)
                return out
    ''', http_server)
    assert out[-1] == 1  # one pooled connection served all three
    assert out[0] == [200, "chunked", ["chunked ", "reply to ", "/a"]]


def test_httpx_sync(tmp_path: Path, http_server: HttpServer) -> None:
    out = check_offline(tmp_path, '''
        import httpx

        def main(host, port, user, password, database):
            with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
                out = []
                for path in ("/x", "/y"):
                    r = client.get(path)
                    out.append([r.status_code, r.headers["server"], r.text])
                return out
    ''', http_server)
    assert out == [[200, "tracesock-test", "chunked reply to /x"],
                   [200, "tracesock-test", "chunked reply to /y"]]


def test_aiohttp(tmp_path: Path, http_server: HttpServer) -> None:
    out = check_offline(tmp_path, '''
        import asyncio
        import aiohttp

        async def fetch(host, port):
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                out = []
                for path in ("/one", "/two"):
                    async with session.get(f"http://{host}:{port}{path}") as r:
                        out.append([r.status, await r.text()])
                return out

        def main(host, port, user, password, database):
            return asyncio.run(fetch(host, port))
    ''', http_server)
    assert out == [[200, "chunked reply to /one"], [200, "chunked reply to /two"]]


def test_paho_mqtt_loop_start(tmp_path: Path, mosquitto_server: MosquittoServer) -> None:
    out = check_offline(tmp_path, '''
        import queue
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        def main(host, port, user, password, database):
            events = queue.Queue()
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tracesock-replay",
                                 protocol=mqtt.MQTTv311)
            client.username_pw_set(user, password)
            client.on_connect = lambda c, u, f, rc, p: events.put(["connect", str(rc)])
            client.on_subscribe = lambda c, u, mid, rcs, p: events.put(
                ["subscribe", [str(x) for x in rcs]])
            client.on_message = lambda c, u, m: events.put(
                ["message", m.topic, m.payload.decode()])
            client.connect(host, port, keepalive=30)
            client.loop_start()
            out = []
            try:
                out.append(events.get(timeout=10))
                client.subscribe("tracesock/replay", qos=1)
                out.append(events.get(timeout=10))
                client.publish("tracesock/replay", b"hello", qos=1).wait_for_publish(timeout=10)
                out.append(events.get(timeout=10))
            finally:
                client.disconnect()
                client.loop_stop()
            return out
    ''', mosquitto_server, **logins(mosquitto_server))
    assert out == [["connect", "Success"], ["subscribe", ["Granted QoS 1"]],
                   ["message", "tracesock/replay", "hello"]]


def test_pymysql(tmp_path: Path, mariadb_server: MariaDBServer) -> None:
    out = check_offline(tmp_path, '''
        import pymysql

        def main(host, port, user, password, database):
            conn = pymysql.connect(host=host, port=port, user=user, password=password,
                                   database=database, connect_timeout=10)
            try:
                with conn.cursor() as cur:
                    cur.execute("CREATE TABLE IF NOT EXISTS r (id INT PRIMARY KEY, v TEXT)")
                    cur.execute("REPLACE INTO r VALUES (%s, %s)", (1, "tracesock"))
                    cur.execute("SELECT v FROM r WHERE id = %s", (1,))
                    rows = [list(r) for r in cur.fetchall()]
                conn.commit()
                return rows
            finally:
                conn.close()
    ''', mariadb_server, **logins(mariadb_server))
    assert out == [["tracesock"]]


def test_pg8000_scram(tmp_path: Path, postgres_server: PostgresServer) -> None:
    out = check_offline(tmp_path, '''
        import pg8000.native

        def main(host, port, user, password, database):
            conn = pg8000.native.Connection(user, host=host, port=port, password=password,
                                            database=database, timeout=10)
            try:
                return [conn.run("SELECT 1 + 1"), conn.run("SELECT upper(:s)", s="scram")]
            finally:
                conn.close()
    ''', postgres_server, **logins(postgres_server))
    assert out == [[[2]], [["SCRAM"]]]


def test_requests_multipart(tmp_path: Path, http_server: HttpServer) -> None:
    # requests picks a random multipart boundary (os.urandom): replayed, it must be the
    # recorded one. The server ignores the body; what it returns is checked as usual.
    out = check_offline(tmp_path, '''
        import requests

        def main(host, port, user, password, database):
            with requests.Session() as s:
                r = s.get(f"http://{host}:{port}/form", files={"f": ("a.txt", b"data")},
                          timeout=10)
                return [r.status_code, r.text]
    ''', http_server)
    assert out == [200, "chunked reply to /form"]
