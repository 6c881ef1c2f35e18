"""Smoke test of tests/realservers.py: each real server, its real client, stop(), the counter.

Every test does one real operation through the client library a tracesock test would
use (redis-py, PyMySQL, pg8000 with SCRAM-SHA-256, paho-mqtt), stops the server and
binds a ConnectionCounter on the old port, which must then see no connection.
"""

from __future__ import annotations

import queue
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pg8000.native
import pymysql
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion
from realservers import (
    ConnectionCounter,
    MariaDBServer,
    MosquittoServer,
    PostgresServer,
    RealServer,
    RedisServer,
    require_binaries,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

pytest_plugins = ["realservers"]


def _stop_and_count(server: RealServer) -> None:
    port = server.port
    server.stop()
    assert not server.running and server.tmpdir is None
    with ConnectionCounter(port) as counter:
        assert counter.port == port
    assert counter.count == 0


def test_redis(redis_server: RedisServer) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port,
                         username=redis_server.user, password=redis_server.password)
    try:
        assert client.set("tracesock:key", b"value")
        assert client.get("tracesock:key") == b"value"
    finally:
        client.close()
    # The default user is off: no password, no access. (No retries: redis-py 8 would
    # otherwise retry the failed handshake with backoff for seconds.)
    anonymous = redis.Redis(host=redis_server.host, port=redis_server.port,
                            retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()
    _stop_and_count(redis_server)


def test_redis_restarted_after_stop(redis_server: RedisServer) -> None:
    # test_redis stopped the module's server: the hook started a fresh one, with no data.
    assert redis_server.running
    client = redis.Redis(host=redis_server.host, port=redis_server.port,
                         username=redis_server.user, password=redis_server.password)
    try:
        assert client.get("tracesock:key") is None
    finally:
        client.close()


def test_mariadb(mariadb_server: MariaDBServer) -> None:
    conn = pymysql.connect(host=mariadb_server.host, port=mariadb_server.port,
                           user=mariadb_server.user, password=mariadb_server.password,
                           database=mariadb_server.database, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
            cur.execute("INSERT INTO t VALUES (%s, %s)", (1, "tracesock"))
            cur.execute("SELECT name FROM t WHERE id = %s", (1,))
            assert cur.fetchall() == (("tracesock",),)
            cur.execute("SELECT plugin FROM mysql.user WHERE user = %s", (mariadb_server.user,))
            assert cur.fetchall() == (("mysql_native_password",),)
        conn.commit()
    finally:
        conn.close()
    _stop_and_count(mariadb_server)


def test_postgres_scram(postgres_server: PostgresServer) -> None:
    conn = pg8000.native.Connection(postgres_server.user, host=postgres_server.host,
                                    port=postgres_server.port,
                                    password=postgres_server.password,
                                    database=postgres_server.database, timeout=10)
    try:
        assert conn.run("SELECT 1 + 1") == [[2]]
        assert conn.run("SHOW password_encryption") == [["scram-sha-256"]]
        [[stored]] = conn.run("SELECT rolpassword FROM pg_authid WHERE rolname = :name",
                              name=postgres_server.user)
        assert stored.startswith("SCRAM-SHA-256$")
    finally:
        conn.close()
    # pg_hba really asks for the password (no trust): a wrong one is refused.
    with pytest.raises(pg8000.exceptions.DatabaseError, match="28P01"):
        pg8000.native.Connection(postgres_server.user, host=postgres_server.host,
                                 port=postgres_server.port, password="wrong",
                                 database=postgres_server.database, timeout=10)
    _stop_and_count(postgres_server)


def test_mosquitto_round_trip(mosquitto_server: MosquittoServer) -> None:
    connected: queue.Queue[Any] = queue.Queue()
    subscribed = threading.Event()
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tracesock-smoke",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(mosquitto_server.user, mosquitto_server.password)
    client.on_connect = lambda c, u, flags, rc, props: connected.put(rc)
    client.on_subscribe = lambda c, u, mid, rcs, props: subscribed.set()
    client.on_message = lambda c, u, msg: received.put((msg.topic, bytes(msg.payload)))
    client.connect(mosquitto_server.host, mosquitto_server.port, keepalive=10)
    client.loop_start()
    try:
        assert not connected.get(timeout=10).is_failure
        client.subscribe("tracesock/smoke", qos=1)
        assert subscribed.wait(timeout=10)
        client.publish("tracesock/smoke", b"hello", qos=1).wait_for_publish(timeout=10)
        assert received.get(timeout=10) == ("tracesock/smoke", b"hello")
    finally:
        client.disconnect()
        client.loop_stop()
    _stop_and_count(mosquitto_server)


def test_connection_counter_counts() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counter = ConnectionCounter(port)
    for _ in range(3):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert counter.close() == 3
    assert all(host == "127.0.0.1" for host, _ in counter.peers)
    with pytest.raises(ValueError, match="loopback"):
        ConnectionCounter(port, host="192.0.2.1")


class _Absent(RealServer):
    name = "absent"
    binaries = {"server": "tracesock-no-such-server-binary"}  # noqa: RUF012


def test_missing_binary_skips_without_ci_and_fails_with_ci(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_binaries(_Absent)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_binaries(_Absent)
