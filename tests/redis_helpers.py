"""A real redis-server for tests: on a free loopback port, no persistence, stopped at the end.

Use the ``redis_server`` fixture (import it into a test module: ``from redis_helpers import
redis_server``); :meth:`RedisServer.restart` stops and starts the server on the same port, which
loses every stream (no persistence), as a crashed server would.

Without a ``redis-server`` binary the tests that need one are skipped, unless ``POSSM_REQUIRE_REDIS=1``
(CI sets it after installing redis-server), which makes them fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> None:
    """Skip (or, with ``POSSM_REQUIRE_REDIS=1``, fail) when redis-server is not installed."""
    if Path(REDIS_SERVER).is_file():
        return
    msg = "redis-server is not installed (apt-get install redis-server)"
    if os.environ.get("POSSM_REQUIRE_REDIS", "").strip() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process (``extra`` arguments are appended to its command line)."""

    def __init__(
        self, workdir: Path, *, port: int | None = None, extra: list[str] | None = None, password: str | None = None,
        username: str | None = None, tls: dict | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.password = password
        self.username = username
        self.tls = tls  # {"cert": ..., "key": ..., "ca": ...}: serve TLS only, on self.port
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self, **kw) -> redis.Redis:
        kw.setdefault("password", self.password)
        kw.setdefault("username", self.username)
        kw.setdefault("socket_timeout", 5)
        if self.tls:
            kw.setdefault("ssl", True)
            kw.setdefault("ssl_ca_certs", self.tls["ca"])
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def start(self, timeout: float = 10.0) -> "RedisServer":
        require_redis_server()
        if self.proc is not None:
            raise RuntimeError("redis-server already running")
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"],
                     "--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", "no"]
        else:
            ports = ["--port", str(self.port)]
        cmd = [
            REDIS_SERVER, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
            *self.extra,
        ]
        if self.password and not self.username:
            cmd += ["--requirepass", self.password]
        self._log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        c = self.client(socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self._log.name}")
                try:
                    if c.ping():
                        return self
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s")
                time.sleep(0.02)
        finally:
            c.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port (all data is lost)."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start()


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for one test."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def make_tls_files(directory: Path) -> dict | None:
    """A throw-away CA and a server certificate for 127.0.0.1 (None when openssl is missing)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=possm-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
        "-days", "2", "-extfile", "ext.cnf")
    return {"cert": str(d / "server.crt"), "key": str(d / "server.key"), "ca": str(d / "ca.crt")}


@pytest.fixture
def tls_redis_server(tmp_path):
    """A fresh redis-server serving TLS only on its port (its certificate files in ``server.tls``);
    the test is skipped where openssl is missing or redis-server was built without TLS."""
    tls = make_tls_files(tmp_path / "tls")
    if tls is None:
        pytest.skip("openssl is not installed")
    server = RedisServer(tmp_path, tls=tls)
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS")
    try:
        yield server
    finally:
        server.stop()
