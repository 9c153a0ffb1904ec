"""Redis connections for the BRAND adapters: options (with TLS, ACL users, unix sockets), a connection
that never retries inside redis-py but backs off and reconnects, and the stream reader and writer
that survive a restarted server (see :mod:`possm_plugin.adapters.redis_stream` for the rules:
remembered last id, stream resets detected by ``last-generated-id``, queued writes).

Security: ``username``/``password`` (ACL user or ``requirepass``; the password may also come from the
``POSSM_REDIS_PASSWORD`` environment variable so it stays off command lines), ``ssl`` with
``ssl_ca_certs``/``ssl_certfile``/``ssl_keyfile`` for TLS, or ``socket`` for a unix socket.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from possm_plugin.errors import ConfigError, StreamError

__all__ = ["RedisOptions", "RedisConnection", "RedisUnavailable", "Backoff", "StreamReader", "StreamWriter", "PASSWORD_ENV"]

log = logging.getLogger("possm_plugin.adapters.redis")

PASSWORD_ENV = "POSSM_REDIS_PASSWORD"
_NET_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# -- option parsing (the CLI passes every --source-opt as a string) ------------------------------
def _as_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={v!r} is not a boolean; use true or false")


def _as_int(name: str, v: Any, *, minimum: int | None = None) -> int:
    try:
        out = int(v) if not isinstance(v, float) or v.is_integer() else None
    except (TypeError, ValueError):
        out = None
    if out is None or isinstance(v, bool):
        raise ConfigError(f"{name}={v!r} is not an integer")
    if minimum is not None and out < minimum:
        raise ConfigError(f"{name}={v!r} must be >= {minimum}")
    return out


def _as_float(name: str, v: Any, *, positive: bool = False) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} is not a number") from None
    if not math.isfinite(out) or (positive and out <= 0):
        raise ConfigError(f"{name}={v!r} must be a {'positive ' if positive else ''}finite number")
    return out


def _as_list(name: str, v: Any) -> list[str]:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, Sequence):
        return [str(s) for s in v]
    raise ConfigError(f"{name}={v!r} must be a list or a comma-separated string")


def _opt(v: Any) -> Any:
    """Empty strings and YAML nulls mean 'not given'."""
    return None if v is None or (isinstance(v, str) and v.strip() in ("", "~", "null", "None")) else v


class _RateLimited:
    """Log each key at most once every ``every`` seconds."""

    def __init__(self, logger: logging.Logger, every: float = 5.0) -> None:
        self._log, self._every, self._last = logger, every, {}

    def warning(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) >= self._every:
            self._last[key] = now
            self._log.warning(msg, *args)


# -- connections ----------------------------------------------------------------------------------
@dataclass
class RedisOptions:
    """How to reach a Redis server.

    Attributes:
        host, port: TCP address (ignored when ``socket`` is given).
        socket: path of a unix socket.
        db: database number.
        username, password: ACL user and password (``requirepass`` servers: password only); None takes
            the password from ``$POSSM_REDIS_PASSWORD``.
        ssl: use TLS; ``ssl_ca_certs`` (CA bundle), ``ssl_certfile``/``ssl_keyfile`` (client certificate),
            ``ssl_check_hostname``.
        connect_timeout, socket_timeout: seconds.
        backoff_max: longest wait between reconnection attempts (seconds).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    socket: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log line or a traceback's locals
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    connect_timeout: float = 2.0
    socket_timeout: float = 5.0
    backoff_max: float = 1.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "RedisOptions":
        """Build from keyword options (strings are parsed); unknown keys are not accepted here."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown Redis option(s) {unknown}; known: {sorted(known)}")
        o = {k: _opt(v) for k, v in options.items()}
        kw: dict[str, Any] = {}
        for k, v in o.items():
            if v is None:
                continue
            if k in ("port", "db"):
                kw[k] = _as_int(k, v, minimum=0)
            elif k in ("ssl", "ssl_check_hostname"):
                kw[k] = _as_bool(k, v)
            elif k in ("connect_timeout", "socket_timeout", "backoff_max"):
                kw[k] = _as_float(k, v, positive=True)
            else:
                kw[k] = str(v)
        return cls(**kw)

    def describe(self) -> str:
        where = f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.username + '@' if self.username else ''}{where}/{self.db}"

    def client(self, on_connect: Callable[[Any], None] | None = None) -> redis.Redis:
        """A redis-py client that never retries by itself (reconnection is ours, with backoff);
        ``on_connect(connection)`` replaces redis-py's handshake and must run it."""
        password = self.password if self.password is not None else os.environ.get(PASSWORD_ENV) or None
        kw: dict[str, Any] = dict(
            db=self.db,
            username=self.username,
            password=password,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            redis_connect_func=on_connect,
        )
        try:  # redis-py >= 7 asks every new connection for maintenance notifications: one round trip saved
            from redis.maint_notifications import MaintNotificationsConfig

            kw["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        except ImportError:  # older redis-py
            pass
        if self.socket:
            return redis.Redis(unix_socket_path=self.socket, **kw)
        if self.ssl:
            kw.update(ssl=True, ssl_ca_certs=self.ssl_ca_certs, ssl_certfile=self.ssl_certfile,
                      ssl_keyfile=self.ssl_keyfile, ssl_check_hostname=self.ssl_check_hostname)
        return redis.Redis(host=self.host, port=self.port, **kw)


class RedisUnavailable(StreamError):
    """The server did not answer (connection refused, reset or timed out)."""


class Backoff:
    """Exponential backoff: ``initial``, doubling up to ``maximum`` seconds; :meth:`reset` on success."""

    def __init__(self, initial: float = 0.05, maximum: float = 1.0) -> None:
        self.initial, self.maximum = float(initial), float(maximum)
        self._next = self.initial

    def next(self) -> float:
        d = self._next
        self._next = min(self._next * 2.0, self.maximum)
        return d

    def reset(self) -> None:
        self._next = self.initial


class RedisConnection:
    """A client plus link bookkeeping: :meth:`call` runs a command and turns network failures into
    :class:`RedisUnavailable` (after logging the first one). Every new socket after the first one is a
    reconnection -- after a failure, or silently inside redis-py, which replaces a connection it finds
    closed (a server restarted between two commands) -- and runs the ``on_reconnect`` callbacks once
    the command that opened it returns."""

    def __init__(self, options: RedisOptions | None = None, *, stop: threading.Event | None = None) -> None:
        self.options = options or RedisOptions()
        self.stop = stop or threading.Event()
        self.backoff = Backoff(maximum=self.options.backoff_max)
        self._client: redis.Redis | None = None
        self.down_since: float | None = None
        self.failures = 0
        self.reconnects = 0
        self.sockets = 0
        self._new_socket = False
        self.on_reconnect: list[Callable[[], None]] = []

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self.options.client(on_connect=self._on_socket)
        return self._client

    def _on_socket(self, connection: Any) -> None:
        handshake = getattr(connection, "on_connect_check_health", None)
        if handshake is not None:
            handshake(check_health=True)
        else:  # older redis-py
            connection.on_connect()
        self.sockets += 1
        if self.sockets > 1:
            self._new_socket = True

    @property
    def is_up(self) -> bool:
        return self.down_since is None

    def check_credentials(self) -> None:
        """Ping once; wrong credentials or TLS settings raise :class:`StreamError` (not retried)."""
        try:
            self.client.ping()
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise StreamError(
                f"Redis at {self.options.describe()} refused the credentials ({exc}); set username/password "
                f"(or ${PASSWORD_ENV})"
            ) from None
        except redis.exceptions.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise StreamError(f"Redis at {self.options.describe()} needs a password ({exc}); set password or ${PASSWORD_ENV}") from None
            raise

    def wait_until_up(self, timeout: float) -> None:
        """Ping until the server answers or ``timeout`` seconds pass (then :class:`StreamError`)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                self.check_credentials()
                self._up()
                return
            except _NET_ERRORS as exc:
                if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
                    raise
                if time.monotonic() >= deadline or self.stop.is_set():
                    raise StreamError(f"cannot reach Redis at {self.options.describe()}: {exc}") from None
                self.stop.wait(min(self.backoff.next(), max(0.0, deadline - time.monotonic())) or 0.01)

    def call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        try:
            out = fn(self.client)
        except _NET_ERRORS as exc:
            self._down(exc)
            raise RedisUnavailable(f"Redis at {self.options.describe()} unavailable: {exc}") from None
        self._up()
        return out

    def sleep_backoff(self) -> None:
        """Wait before the next attempt (returns early when ``stop`` is set)."""
        self.stop.wait(self.backoff.next())

    def _down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.failures += 1
            log.warning("lost the connection to Redis at %s (%s); reconnecting with backoff", self.options.describe(), exc)
        try:
            if self._client is not None:
                self._client.connection_pool.disconnect()
        except Exception:  # the pool is being torn down anyway
            pass

    def _up(self) -> None:
        reconnected, self._new_socket = self._new_socket, False
        if self.down_since is not None:
            gap = time.monotonic() - self.down_since
            self.down_since = None
            reconnected = True
            log.warning("reconnected to Redis at %s after %.2f s", self.options.describe(), gap)
        elif reconnected:
            log.warning("the connection to Redis at %s was re-opened (the server may have restarted)", self.options.describe())
        if reconnected:
            self.reconnects += 1
            for cb in self.on_reconnect:
                cb()
        self.backoff.reset()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a dead connection may fail; nothing to do
                pass
            self._client = None




def _parse_id(eid: str | bytes) -> tuple[int, int]:
    s = eid.decode() if isinstance(eid, bytes) else str(eid)
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


# -- reading and writing ---------------------------------------------------------------------------
class StreamReader:
    """Read one stream from a remembered id, across disconnections and server restarts.

    Args:
        conn: the connection.
        stream: stream key.
        start: ``$`` (entries added after :meth:`read` first reaches the server), ``0`` (from the
            beginning) or an explicit entry id to resume after.
        count: most entries per read.
    """

    def __init__(self, conn: RedisConnection, stream: str, *, start: str = "$", count: int = 1000) -> None:
        self.conn = conn
        self.stream = stream
        self.start = str(start)
        self.count = int(count)
        self.last_id: str | None = None if self.start == "$" else ("0-0" if self.start in ("0", "0-0") else self.start)
        self.stream_resets = 0
        self._check_reset = False
        self._max_block = max(1, int(conn.options.socket_timeout * 800))  # stay below the socket timeout
        conn.on_reconnect.append(self._after_reconnect)

    def _after_reconnect(self) -> None:
        self._check_reset = True

    def _last_generated(self, r: redis.Redis) -> str | None:
        try:
            info = r.xinfo_stream(self.stream)
        except redis.exceptions.ResponseError:  # no such key
            return None
        lid = info.get("last-generated-id", info.get(b"last-generated-id"))
        return lid.decode() if isinstance(lid, bytes) else str(lid)

    def _detect_reset(self) -> None:
        last = self.conn.call(self._last_generated)
        if last is None:
            return  # the stream does not exist (yet): look again next time
        self._check_reset = False
        if self.last_id is not None and _parse_id(last) < _parse_id(self.last_id):
            self.stream_resets += 1
            log.warning(
                "stream %r was reset (its last id %s is older than %s, the last entry processed); reading it from the start",
                self.stream, last, self.last_id,
            )
            self.last_id = "0-0"

    def position(self) -> str:
        """Resolve ``$`` to an id now (so entries added from this moment on are not missed)."""
        if self.last_id is None:
            self.last_id = self.conn.call(self._last_generated) or "0-0"
        return self.last_id

    def read(self, block_ms: int | None) -> list[tuple[str, dict]]:
        """Entries after the last one returned (waits up to ``block_ms``; None: no wait). On a network
        failure waits the backoff and returns []."""
        try:
            self.position()
            if self._check_reset:
                self._detect_reset()
            block = None if not block_ms or block_ms <= 0 else min(int(block_ms), self._max_block)
            resp = self.conn.call(lambda r: r.xread({self.stream: self.last_id}, count=self.count, block=block))
        except RedisUnavailable:
            self._check_reset = True
            self.conn.sleep_backoff()
            return []
        if not resp:
            return []
        entries = resp[0][1]
        out = [(eid.decode() if isinstance(eid, bytes) else str(eid), flds) for eid, flds in entries]
        if out:
            self.last_id = out[-1][0]
        return out


class StreamWriter:
    """Append entries to a stream; entries are queued while the server is unreachable and written,
    in order, once it is back (the oldest beyond ``max_pending`` are dropped and counted)."""

    def __init__(self, conn: RedisConnection, stream: str, *, maxlen: int | None = None, max_pending: int = 100_000) -> None:
        self.conn = conn
        self.stream = stream
        self.maxlen = int(maxlen) if maxlen else None
        self.pending: deque[dict] = deque()
        self.max_pending = int(max_pending)
        self.written = 0
        self.dropped = 0

    def add(self, entry: dict) -> None:
        self.pending.append(entry)
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.dropped += 1

    def flush(self) -> bool:
        """Write what is queued; False if the server is unreachable (entries stay queued)."""
        if not self.pending:
            return True
        batch = list(self.pending)

        def write(r: redis.Redis) -> None:
            if len(batch) == 1:
                r.xadd(self.stream, batch[0], maxlen=self.maxlen, approximate=True)
                return
            p = r.pipeline(transaction=False)
            for e in batch:
                p.xadd(self.stream, e, maxlen=self.maxlen, approximate=True)
            p.execute()

        try:
            self.conn.call(write)
        except RedisUnavailable:
            return False
        for _ in batch:
            self.pending.popleft()
        self.written += len(batch)
        return True
