"""How to reach a Redis server: :class:`RedisOptions`, and the parsing of option strings (the CLI passes
every ``--source-opt`` as a string).

Security: ``username``/``password`` (ACL user or ``requirepass``; the password may also come from the
``POSSM_REDIS_PASSWORD`` environment variable so it stays off command lines), ``ssl`` with
``ssl_ca_certs``/``ssl_certfile``/``ssl_keyfile`` for TLS, or ``socket`` for a unix socket.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from possm_plugin.errors import ConfigError

__all__ = ["PASSWORD_ENV", "RedisOptions"]

PASSWORD_ENV = "POSSM_REDIS_PASSWORD"


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
