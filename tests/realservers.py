"""Real, private server instances for tests: redis, MariaDB, PostgreSQL 15, mosquitto.

Theory of operation
-------------------
Each server class (``RedisServer``, ``MariaDBServer``, ``PostgresServer``,
``MosquittoServer``) owns one private instance of the real Debian-packaged daemon:

1. ``start()`` makes a fresh temporary directory (data dir, config, log), picks a free
   port on 127.0.0.1 (bind to port 0, read it back, close), writes a config that listens
   on that loopback address only, runs the one-time initialisation the server needs
   (``mariadb-install-db``, ``initdb``, ``mosquitto_passwd``) and starts the daemon in the
   foreground, in its own session, with stdout and stderr going to ``server.log``.
2. It then polls until the server *really* accepts clients, by speaking the first bytes
   of the server's own protocol over TCP (redis ``AUTH`` + ``PING``, MariaDB's handshake
   packet, PostgreSQL's startup message answered by a SCRAM-SHA-256 challenge, an MQTT
   ``CONNECT`` answered by ``CONNACK`` 0), with a bounded deadline. A server that exits
   or is not up in time is stopped and a ``ServerStartError`` carries the tail of its
   log. A bind race on the chosen port ("Address already in use") is retried on a new one.
3. ``stop()`` sends the server's shutdown signal (SIGTERM; SIGINT, a "fast" shutdown, for
   PostgreSQL), kills the whole process group if it has not exited in time, and removes
   the temporary directory. It is idempotent; after it the old port has no listener, so
   ``ConnectionCounter(port)`` can bind it and count any client that still tries to
   connect there (a replay that touched the network would show up as a count > 0).
   ``start()`` may be called again: a fresh instance, on a new port, with empty data.

Credentials are fixed (``user``/``password``, both ``tracesock``-something), so that the
bytes a client sends are the same from one run to the next; these instances only ever
listen on 127.0.0.1 and live for one test module. PostgreSQL and MariaDB refuse, or need
care, to run as root: PostgreSQL runs as the ``postgres`` user (its temp dir is chown'ed
to it), mariadbd gets ``--user=root`` and mosquitto switches to its ``mosquitto`` user.

pytest wiring
-------------
The fixtures ``redis_server``, ``mariadb_server``, ``postgres_server`` and
``mosquitto_server`` are **module-scoped**: one instance per test module, stopped at the
module's end. Being module-scoped they are set up before any function-scoped fixture,
so before tracesock's marker fixture starts a trace or a replay. A test may call
``stop()``; the ``pytest_runtest_setup`` hook below then restarts that server (new port,
empty data) before the next test that asks for it, again before any function fixture.
Load this file as a plugin so that the hook runs: ``pytest_plugins = ["realservers"]``
in ``tests/conftest.py`` (or in a test module). A test module may import from it before
its ``pytest_plugins`` line is read: this file opts out of assertion rewriting (it has
no test asserts) with the marker PYTEST_DONT_REWRITE, so there is no "already imported"
warning (an error under this project's filterwarnings).

A missing server binary skips the test, unless the environment variable ``CI`` is set:
then it fails, since CI must never skip silently.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

LOOPBACK = "127.0.0.1"
DEFAULT_USER = "tracesock"
DEFAULT_PASSWORD = "tracesock-test-password"

# Debian installs each major version under its own folder; the newest one is used.
POSTGRES_BINDIR_CANDIDATES = tuple(sorted(
    (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")),
    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    reverse=True))


class ServerStartError(RuntimeError):
    """A server could not be set up or did not come up in time (message has its log)."""


class _ProbeFatal(Exception):
    """The server answered, but not as configured (bad password, wrong auth method)."""


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"only loopback addresses are allowed, not {host!r}")


def free_port(host: str = LOOPBACK) -> int:
    """A port on ``host`` that had no listener a moment ago."""
    _require_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def _which(name: str, extra_dirs: Sequence[str] = ()) -> str | None:
    for d in extra_dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is None:
        for d in ("/usr/sbin", "/sbin"):  # not always on a non-root PATH
            path = os.path.join(d, name)
            if os.access(path, os.X_OK):
                return path
    return found


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def _tmp_base() -> str:
    """A temp dir that other users (postgres) can traverse: $TMPDIR if so, else /tmp."""
    base = tempfile.gettempdir()
    return base if os.stat(base).st_mode & 0o001 else "/tmp"


_T = TypeVar("_T", bound="RealServer")


class RealServer:
    """One private instance of a real server on 127.0.0.1; see the module docstring."""

    name: ClassVar[str] = "server"
    #: binaries the server needs: logical name -> executable name (looked up on PATH)
    binaries: ClassVar[dict[str, str]] = {}
    extra_bin_dirs: ClassVar[tuple[str, ...]] = ()
    stop_signal: ClassVar[int] = signal.SIGTERM
    start_attempts: ClassVar[int] = 3

    def __init__(self, *, user: str = DEFAULT_USER, password: str = DEFAULT_PASSWORD,
                 host: str = LOOPBACK, startup_timeout: float = 30.0,
                 stop_timeout: float = 15.0) -> None:
        _require_loopback(host)
        self.host = host
        self.user = user
        self.password = password
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.tmpdir: Path | None = None
        self.startup_seconds = 0.0
        self.last_log = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._bin: dict[str, str] = {}

    # -- public ---------------------------------------------------------------------

    @classmethod
    def missing_binaries(cls) -> list[str]:
        return [exe for exe in cls.binaries.values() if _which(exe, cls.extra_bin_dirs) is None]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.tmpdir / "server.log" if self.tmpdir is not None else None

    def start(self: _T) -> _T:
        """Start a fresh instance and wait until it accepts clients; returns self."""
        if self.running:
            return self
        missing = self.missing_binaries()
        if missing:
            raise ServerStartError(f"{self.name}: not installed: {', '.join(missing)}")
        self._bin = {key: str(_which(exe, self.extra_bin_dirs))
                     for key, exe in self.binaries.items()}
        began = time.monotonic()
        for attempt in range(1, self.start_attempts + 1):
            try:
                self._start_once()
            except ServerStartError as exc:
                if "Address already in use" in str(exc) and attempt < self.start_attempts:
                    continue  # someone took the port between free_port() and bind: again
                raise
            self.startup_seconds = time.monotonic() - began
            _LIVE.add(self)
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Shut the server down (signal, then SIGKILL after stop_timeout); remove its dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group id is still ours: kill the whole session
                # (postgres' backends too), then reap.
                self._killpg(proc.pid)
                proc.wait(timeout=self.stop_timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmpdir is not None:
            self.last_log = self.log_tail()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        _LIVE.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None:
            return self.last_log
        try:
            data = path.read_bytes()[-16384:]
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __enter__(self: _T) -> _T:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self.running else "stopped"
        return f"<{type(self).__name__} {state}>"

    # -- for subclasses -------------------------------------------------------------

    def _prepare(self, tmp: Path) -> None:
        """Initialise the data dir and config in tmp (self.port is already chosen)."""

    def _command(self, tmp: Path) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _probe(self, sock: socket.socket) -> bool:
        """Speak to a connected socket: True when ready; raise _ProbeFatal if misconfigured."""
        raise NotImplementedError

    def _run_setup(self, argv: list[str], *, timeout: float = 60.0,
                   **kwargs: Any) -> None:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False,
                                  **kwargs)
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(f"{self.name}: {argv[0]} took over {timeout}s") from exc
        if done.returncode != 0:
            out = done.stdout.decode("utf-8", "replace")[-4000:]
            raise ServerStartError(
                f"{self.name}: {' '.join(argv)} exited with {done.returncode}:\n{out}")

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _killpg(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _start_once(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"tracesock-{self.name}-", dir=_tmp_base()))
        self.port = free_port(self.host)
        try:
            self._prepare(self.tmpdir)
            self._log_file = open(self.tmpdir / "server.log", "ab")  # noqa: SIM115
            self._proc = subprocess.Popen(
                self._command(self.tmpdir), stdin=subprocess.DEVNULL, stdout=self._log_file,
                stderr=subprocess.STDOUT, cwd=self.tmpdir, start_new_session=True,
                **self._popen_kwargs())
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.01
        last_error = "no attempt"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.name} exited with {code} while starting on {self.host}:{self.port}"
                    f"; log tail:\n{self.log_tail()}")
            try:
                with socket.create_connection(self.address, timeout=2.0) as sock:
                    if self._probe(sock):
                        return
                    last_error = "not ready yet"
            except _ProbeFatal as exc:
                raise ServerStartError(f"{self.name} on {self.host}:{self.port} is up but "
                                       f"misconfigured: {exc}\nlog tail:\n{self.log_tail()}"
                                       ) from exc
            except (OSError, ValueError, struct.error) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.name} did not accept clients on {self.host}:{self.port} within "
                    f"{self.startup_timeout}s (last probe: {last_error}); log tail:\n"
                    f"{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


# Every started, not yet stopped server, stopped at interpreter exit if a test run dies.
_LIVE: set[RealServer] = set()


def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


atexit.register(_stop_all)


# -- redis ------------------------------------------------------------------------------


class RedisServer(RealServer):
    """redis-server with one ACL user (``user``/``password``); the default user is off."""

    name = "redis"
    binaries: ClassVar[dict[str, str]] = {"server": "redis-server"}

    def _prepare(self, tmp: Path) -> None:
        (tmp / "redis.conf").write_text(
            f"bind {self.host}\nport {self.port}\nprotected-mode yes\ndaemonize no\n"
            f'dir {tmp}\nlogfile ""\nsave ""\nappendonly no\n'
            "user default off\n"
            f"user {self.user} on >{self.password} ~* &* +@all\n")

    def _command(self, tmp: Path) -> list[str]:
        return [self._bin["server"], str(tmp / "redis.conf")]

    def _probe(self, sock: socket.socket) -> bool:
        def bulk(*words: str) -> bytes:
            parts = [f"*{len(words)}\r\n".encode()]
            for w in words:
                b = w.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
            return b"".join(parts)

        sock.sendall(bulk("AUTH", self.user, self.password) + bulk("PING"))
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            reply += chunk
        if reply.startswith(b"-WRONGPASS"):
            raise _ProbeFatal(reply.decode(errors="replace").strip())
        return reply == b"+OK\r\n+PONG\r\n"  # -LOADING etc.: not yet


# -- MariaDB ----------------------------------------------------------------------------


class MariaDBServer(RealServer):
    """mariadbd with user ``user``@127.0.0.1 (mysql_native_password) and database ``database``."""

    name = "mariadb"
    binaries: ClassVar[dict[str, str]] = {"server": "mariadbd",
                                          "install_db": "mariadb-install-db"}
    database = "tracesock"

    def _common_args(self, tmp: Path) -> list[str]:
        return ["--no-defaults", f"--datadir={tmp / 'data'}",
                *(["--user=root"] if os.geteuid() == 0 else []),
                "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"]

    def _prepare(self, tmp: Path) -> None:
        self._run_setup([self._bin["install_db"], *self._common_args(tmp),
                         "--auth-root-authentication-method=socket", "--skip-test-db",
                         f"--tmpdir={tmp}"])
        # Passwords are plain literals here: refuse quotes rather than escape them.
        if "'" in self.user + self.password or "\\" in self.user + self.password:
            raise ValueError("MariaDB user/password must not contain quotes or backslashes")
        (tmp / "init.sql").write_text(
            f"CREATE USER IF NOT EXISTS '{self.user}'@'{self.host}' "
            f"IDENTIFIED BY '{self.password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'{self.host}';\n"
            f"CREATE DATABASE IF NOT EXISTS `{self.database}`;\n")

    def _command(self, tmp: Path) -> list[str]:
        # No --log-error: the error log goes to stderr, i.e. server.log.
        return [self._bin["server"], *self._common_args(tmp),
                f"--socket={tmp / 'mysqld.sock'}", f"--pid-file={tmp / 'mysqld.pid'}",
                f"--tmpdir={tmp}", f"--port={self.port}", f"--bind-address={self.host}",
                "--skip-networking=0", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
                f"--init-file={tmp / 'init.sql'}"]

    def _probe(self, sock: socket.socket) -> bool:
        # The server's first packet: 3-byte length, sequence id, then protocol version 10
        # (0xff would be an error packet, e.g. "too many connections"). mariadbd runs
        # --init-file before it accepts clients, so the user exists once this arrives.
        header = _recv_exactly(sock, 4)
        length = int.from_bytes(header[:3], "little")
        body = _recv_exactly(sock, length)
        return body[:1] == b"\x0a"


# -- PostgreSQL -------------------------------------------------------------------------


class PostgresServer(RealServer):
    """PostgreSQL 15: superuser ``user`` with a SCRAM-SHA-256 password; TCP needs SCRAM.

    pg_hba.conf has exactly one line, ``host all all 127.0.0.1/32 scram-sha-256``, and
    postgresql.conf sets ``password_encryption = scram-sha-256``. Run as root, initdb and
    postgres run as the ``postgres`` user (PostgreSQL refuses root).
    """

    name = "postgres"
    binaries: ClassVar[dict[str, str]] = {"server": "postgres", "initdb": "initdb"}
    extra_bin_dirs = POSTGRES_BINDIR_CANDIDATES
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients
    database = "postgres"
    run_as = "postgres"

    def _popen_kwargs(self) -> dict[str, Any]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if os.geteuid() != 0:
            return {"env": env}
        try:
            pw = pwd.getpwnam(self.run_as)
        except KeyError as exc:
            raise ServerStartError(
                f"postgres: running as root needs a {self.run_as!r} user "
                "(the postgresql-common package creates it)") from exc
        env["HOME"] = str(self.tmpdir)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "env": env}

    def _prepare(self, tmp: Path) -> None:
        (tmp / "pwfile").write_text(self.password + "\n")
        kwargs = self._popen_kwargs()
        if "user" in kwargs:
            for path in (tmp, tmp / "pwfile"):
                os.chown(path, kwargs["user"], kwargs["group"])
        self._run_setup([self._bin["initdb"], "-D", str(tmp / "data"), "-U", self.user,
                         f"--pwfile={tmp / 'pwfile'}", "--auth-local=scram-sha-256",
                         "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                         "--no-sync", "--no-instructions"], cwd=tmp, **kwargs)
        (tmp / "pwfile").unlink()
        data = tmp / "data"
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# tracesock test instance\n"
                f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{tmp}'\n"
                "password_encryption = scram-sha-256\n"
                "ssl = off\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 20\n")
        (data / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            f"host    all       all   {self.host}/32  scram-sha-256\n")

    def _command(self, tmp: Path) -> list[str]:
        return [self._bin["server"], "-D", str(tmp / "data")]

    def _probe(self, sock: socket.socket) -> bool:
        params = b"user\0%s\0database\0%s\0\0" % (self.user.encode(), self.database.encode())
        sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)  # protocol 3.0
        kind = _recv_exactly(sock, 1)
        length = struct.unpack("!i", _recv_exactly(sock, 4))[0]
        body = _recv_exactly(sock, length - 4)
        if kind == b"E":
            if b"C57P03" in body:  # cannot_connect_now: starting up
                return False
            raise _ProbeFatal(body.replace(b"\0", b" ").decode(errors="replace"))
        if kind != b"R":
            return False
        code = struct.unpack("!i", body[:4])[0]
        if code != 10 or b"SCRAM-SHA-256\0" not in body:
            raise _ProbeFatal(f"expected a SCRAM-SHA-256 (SASL) challenge, got auth code {code}")
        return True


# -- mosquitto --------------------------------------------------------------------------


class MosquittoServer(RealServer):
    """mosquitto (MQTT 3.1.1/5) with a password file holding ``user``; no anonymous access."""

    name = "mosquitto"
    binaries: ClassVar[dict[str, str]] = {"server": "mosquitto", "passwd": "mosquitto_passwd"}

    def _prepare(self, tmp: Path) -> None:
        self._run_setup([self._bin["passwd"], "-c", "-b", str(tmp / "passwd"), self.user,
                         self.password])
        (tmp / "mosquitto.conf").write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"password_file {tmp / 'passwd'}\n"
            "persistence false\n"
            "log_dest stderr\n"
            f"user {self._run_as(tmp)}\n")

    @staticmethod
    def _run_as(tmp: Path) -> str:
        # Started as root, mosquitto binds, then switches to this user (it warns if it is
        # root): the Debian package's "mosquitto", who then needs to read tmp.
        if os.geteuid() != 0:
            return pwd.getpwuid(os.geteuid()).pw_name
        try:
            pw = pwd.getpwnam("mosquitto")
        except KeyError:
            return "root"
        for path in (tmp, *tmp.iterdir()):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return pw.pw_name

    def _command(self, tmp: Path) -> list[str]:
        return [self._bin["server"], "-c", str(tmp / "mosquitto.conf")]

    def _probe(self, sock: socket.socket) -> bool:
        def field(s: str) -> bytes:
            b = s.encode()
            return struct.pack("!H", len(b)) + b

        # MQTT 3.1.1 CONNECT: clean session, username and password flags, keepalive 10s.
        variable = field("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 10)
        payload = field("tracesock-probe") + field(self.user) + field(self.password)
        remaining = len(variable) + len(payload)
        assert remaining < 128  # one-byte "remaining length"
        sock.sendall(bytes([0x10, remaining]) + variable + payload)
        connack = _recv_exactly(sock, 4)
        if connack[0] != 0x20:
            return False
        if connack[3] != 0:
            raise _ProbeFatal(f"CONNACK return code {connack[3]}")
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        return True


# -- ConnectionCounter ------------------------------------------------------------------


class ConnectionCounter:
    """A bare listener on (host, port) that counts, in a thread, the connections it accepts.

    Bind it on a stopped server's old port to prove that something (a replay) did not
    connect there: ``count`` stays 0. Accepted connections are closed at once.
    SO_REUSEADDR lets it bind even while the old server's connections sit in TIME_WAIT.
    """

    def __init__(self, port: int, host: str = LOOPBACK) -> None:
        _require_loopback(host)
        self.host = host
        self.port = port
        self.peers: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(64)
            self._sock.settimeout(0.05)
        except BaseException:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._serve, name=f"ConnectionCounter:{port}",
                                        daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.peers)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed under us
            conn.close()
            with self._lock:
                self.peers.append((peer[0], peer[1]))

    def close(self) -> int:
        """Stop listening; returns the final count (connections already queued included)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5)
            # Drain what reached the backlog after the thread's last accept.
            self._sock.setblocking(False)
            while True:
                try:
                    conn, peer = self._sock.accept()
                except OSError:
                    break
                conn.close()
                with self._lock:
                    self.peers.append((peer[0], peer[1]))
            self._sock.close()
        return self.count

    def __enter__(self) -> ConnectionCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- pytest fixtures and the restart hook -----------------------------------------------


def require_binaries(cls: type[RealServer]) -> None:
    """Skip (no CI) or fail (CI set) when the server's binaries are not installed."""
    missing = cls.missing_binaries()
    if not missing:
        return
    message = (f"{cls.name}: not installed: {', '.join(missing)} "
               "(Debian: redis-server mariadb-server postgresql mosquitto)")
    if "CI" in os.environ:
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


# fixture name -> the module-scoped fixture's server, while that fixture is alive
_FIXTURE_SERVERS: dict[str, RealServer] = {}


def _server_fixture(cls: type[_T], name: str) -> Callable[[], Iterator[_T]]:
    @pytest.fixture(scope="module", name=name)
    def fixture() -> Iterator[_T]:
        require_binaries(cls)
        server = cls().start()
        _FIXTURE_SERVERS[name] = server
        try:
            yield server
        finally:
            _FIXTURE_SERVERS.pop(name, None)
            server.stop()

    fixture.__doc__ = f"A running private {cls.name} on 127.0.0.1 (module scope)."
    return fixture


redis_server = _server_fixture(RedisServer, "redis_server")
mariadb_server = _server_fixture(MariaDBServer, "mariadb_server")
postgres_server = _server_fixture(PostgresServer, "postgres_server")
mosquitto_server = _server_fixture(MosquittoServer, "mosquitto_server")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Restart a server that an earlier test stopped, before any of this test's fixtures."""
    for name in getattr(item, "fixturenames", ()):
        server = _FIXTURE_SERVERS.get(name)
        if server is not None and not server.running:
            server.start()
