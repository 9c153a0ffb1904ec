"""Redis connections for the BRAND adapters: a connection
that never retries inside redis-py but backs off and reconnects, and the stream reader and writer
that survive a restarted server (see :mod:`possm_plugin.adapters.redis_stream` for the rules:
remembered last id, stream resets detected by ``last-generated-id``, queued writes).

Options (address, TLS, ACL user, password): :mod:`possm_plugin.adapters.redis_options`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from possm_plugin.adapters.redis_options import (  # the options; their names stay importable from here
    PASSWORD_ENV,
    RedisOptions,
)
from possm_plugin.errors import StreamError

__all__ = ["RedisOptions", "RedisConnection", "RedisUnavailable", "Backoff", "StreamReader", "StreamWriter", "PASSWORD_ENV"]

log = logging.getLogger("possm_plugin.adapters.redis")

_NET_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

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
