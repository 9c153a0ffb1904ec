"""Redis streams as a spike source and a prediction sink (the wire format of BRAND graphs).

Input entries (one Redis stream entry per bin) come in two kinds:

- ``crossings``: BRAND's threshold crossings, one entry per 1 ms, field ``crossings`` holding one
  ``int16`` per channel (0, or the number of crossings in that millisecond);
- ``binned``: binned spike counts, field ``samples`` holding one ``int8``/``int16``/``float32`` count
  per channel per bin of ``bin_size_ms``.

Both are turned into spike events by :func:`possm_plugin.realtime.binned_events.binned_to_events`, the
conversion every source and the training importer share: a count ``c`` on channel ``ch`` in the bin
``[t, t + w)`` becomes ``c`` events at ``t + (k + 0.5) * w / c`` for ``k = 0..c-1`` -- the count spread
evenly over the bin, each event at the centre of its share (so a single 1 ms crossing sits at the
middle of its millisecond, never on a chunk boundary). The watermark after an entry is the end of its
bin (plus 1 microsecond, so that float rounding never holds a finished chunk back).

The clock (``clock``) says where ``t`` comes from:

- ``tick`` (default): a counter of entries; entry ``n`` (0-based, counted from the first entry this
  reader sees, malformed ones included) covers ``[n * w, (n + 1) * w)``. Free of jitter, so every
  ``chunk_step / w`` entries complete exactly one chunk; it assumes the producer drops no entries.
- ``ts``: the entry's own ``ts`` field (uint64 ``time.monotonic_ns()`` of its producer, as every BRAND
  node writes it), taken as the *end* of the bin: ``[ts - w, ts)``.
- ``timestamps``: BRAND's hardware sample clock, field ``timestamps`` (uint32 sample counter of the
  bin's first sample at ``timestamps_rate`` Hz, 30 kHz for a Blackrock NSP; wrap-around is undone).

Malformed entries (missing field, wrong byte length, wrong dtype) are counted by reason and logged
(rate-limited), never fatal; their bin still advances the clock and the watermark, as an empty bin,
so the chunk grid stays aligned. Bad counts (NaN, negative, non-whole, above ``max_count``) are
dropped one by one as everywhere (:mod:`possm_plugin.realtime.binned_events`); the entry's other counts are
kept and the entry is counted under ``bad_values``.

Connections (:class:`RedisConnection`) never retry inside redis-py: a failed command marks the link
down, the reader waits with exponential backoff (50 ms doubling to ``backoff_max``) and tries again;
the reader remembers the id of the last entry it returned and resumes right after it. After a
reconnection the reader checks the stream's ``last-generated-id``: if it is *older* than the id it
remembers (the server restarted without persistence and the producer writes explicit ids, or the
stream was deleted), the stream was reset and it is read again from its beginning (counted in
``stream_resets``). Writers queue entries while the link is down (up to ``max_pending``, the oldest
dropped and counted beyond that) and flush them once it is back.

Security: ``username``/``password`` (ACL user or ``requirepass``; the password may also come from the
``POSSM_REDIS_PASSWORD`` environment variable so it stays off command lines), ``ssl`` with
``ssl_ca_certs``/``ssl_certfile``/``ssl_keyfile`` for TLS, or ``socket`` for a unix socket.

Code: the connection, reader and writer live in :mod:`possm_plugin.adapters.redis_io`; this module
holds the plugin source and sink, :mod:`possm_plugin.adapters.redis_entries` the entry format
(:class:`EntryParser`, :func:`batch_of`, :func:`prediction_entry`), shared with ``possm-brand``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from typing import Any

import numpy as np

from possm_plugin.adapters.redis_entries import (  # noqa: F401  (re-exported: the entry format, shared with possm-brand)
    CLOCKS,
    INPUT_DTYPES,
    KINDS,
    WATERMARK_SLACK,
    EntryParser,
    ParsedEntry,
    _pass_value,
    batch_of,
    entry_fields,
    prediction_entry,
)
from possm_plugin.adapters.redis_io import (  # noqa: F401  (re-exported: this module was their home before the split)
    PASSWORD_ENV,
    Backoff,
    RedisConnection,
    RedisOptions,
    RedisUnavailable,
    StreamReader,
    StreamWriter,
    _RateLimited,
)
from possm_plugin.adapters.redis_options import _as_float, _as_int, _as_list, _opt  # noqa: F401
from possm_plugin.errors import ConfigError
from possm_plugin.plugins.markers import hookimpl
from possm_plugin.realtime.io import Prediction, PredictionSink, SpikeBatch, SpikeSource

__all__ = [
    "RedisOptions",
    "RedisConnection",
    "RedisUnavailable",
    "Backoff",
    "EntryParser",
    "ParsedEntry",
    "StreamReader",
    "StreamWriter",
    "RedisSource",
    "RedisSink",
    "possm_register_sources",
    "possm_register_sinks",
    "PASSWORD_ENV",
    "WATERMARK_SLACK",
    "batch_of",
    "entry_fields",
    "prediction_entry",
]

log = logging.getLogger("possm_plugin.adapters.redis")



# -- the plugin source and sink ----------------------------------------------------------------------
_REDIS_KEYS = {f.name for f in fields(RedisOptions)}


def _split_options(options: dict[str, Any]) -> tuple[RedisOptions, dict[str, Any]]:
    conn = {k: v for k, v in options.items() if k in _REDIS_KEYS}
    rest = {k: v for k, v in options.items() if k not in _REDIS_KEYS}
    return RedisOptions.from_options(conn), rest


class RedisSource(SpikeSource):
    """Spike events from a Redis stream of BRAND threshold crossings or binned counts.

    Options (strings accepted, as from ``--source-opt key=value``):
        stream: the stream key (default ``crossings``).
        kind: ``crossings`` (1 ms entries) or ``binned``; field, dtype, bin_size_ms, clock,
            timestamps_rate: see :class:`EntryParser`.
        n_channels: values per entry; unit_ids: the unit id of each channel (list or comma-separated;
            default ``ch000``, ``ch001``, ...). One of the two is required.
        start: ``$`` (new entries, default), ``0`` (the whole stream) or an entry id.
        passthrough: fields of an input entry that the prediction it completes carries to the sink
            (list or comma-separated; default ``sync``, BRAND's); ``i_in``, ``id_in`` and ``ts_in``
            always are (see :func:`entry_fields`).
        plus the connection options of :class:`RedisOptions` (host, port, socket, username, password,
        ssl, ...), or ``conn``: a :class:`RedisConnection` to share (``possm-brand``'s; left open at
        :meth:`disconnect`).

    One :meth:`acquire` is one XREAD (up to ``count`` entries, default 1000): a batch with the events of
    every entry it returned, their pass-through and per-entry watermarks (:func:`batch_of`), so that the
    decode call decodes every chunk they complete at once, and a backlog read in one go decodes as it
    would have entry by entry (its spike-free stretches are empty bins, not gaps). ``read_at``:
    ``time.perf_counter()`` when the last read returned. Each batch carries ``start``, its first bin's
    start, with which the decode loop anchors the chunk grid on bin edges: with ``clock=tick`` the first
    entry read covers [0, 1 ms).
    """

    name = "redis"

    def __init__(self, stream: str = "crossings", *, conn: RedisConnection | None = None, **options: Any) -> None:
        super().__init__()
        conn_opts, o = _split_options(options)
        known = {"kind", "field", "dtype", "bin_size_ms", "clock", "timestamps_rate", "n_channels", "unit_ids", "start", "count", "time_field",
                 "passthrough"}
        unknown = sorted(set(o) - known)
        if unknown:
            raise ConfigError(f"redis source: unknown option(s) {unknown}; known: {sorted(known | _REDIS_KEYS | {'stream'})}")
        o = {k: _opt(v) for k, v in o.items()}
        unit_ids = _as_list("unit_ids", o["unit_ids"]) if o.get("unit_ids") is not None else None
        n = _as_int("n_channels", o["n_channels"], minimum=1) if o.get("n_channels") is not None else None
        if unit_ids is None and n is None:
            raise ConfigError("redis source: give n_channels (values per entry) or unit_ids (one per channel)")
        if unit_ids is not None and n is not None and len(unit_ids) != n:
            raise ConfigError(f"redis source: n_channels={n} but unit_ids names {len(unit_ids)} units")
        n = n if n is not None else len(unit_ids)
        self.unit_ids = unit_ids if unit_ids is not None else [f"ch{i:03d}" for i in range(n)]
        self.stream = str(stream)
        self.options = conn.options if conn is not None else conn_opts
        self.parser = EntryParser(
            kind=o.get("kind") or "crossings", n_channels=n, field=o.get("field"), dtype=o.get("dtype"),
            bin_size_ms=o.get("bin_size_ms"), clock=o.get("clock") or "tick", time_field=o.get("time_field") or "ts",
            timestamps_rate=o.get("timestamps_rate") or 30000.0,
        )
        self.passthrough = tuple(k.encode() for k in _as_list("passthrough", o["passthrough"])) if o.get("passthrough") is not None else (b"sync",)
        self._start = "$" if o.get("start") is None else str(o["start"])  # "0" (read as the number 0) is a start too
        self._count = _as_int("count", o.get("count") or 1000, minimum=1)
        self.conn: RedisConnection | None = conn
        self._own_conn = conn is None
        self.reader: StreamReader | None = None
        self.last_entries: list[ParsedEntry] = []
        self.read_at = 0.0

    def _connect(self, timeout: float | None) -> None:
        if self._own_conn:
            self.conn = RedisConnection(self.options)
        self.conn.wait_until_up(5.0 if timeout is None else timeout)
        self.reader = StreamReader(self.conn, self.stream, start=self._start, count=self._count)
        self.reader.position()

    def _acquire(self, timeout: float) -> SpikeBatch:
        assert self.reader is not None
        entries = self.reader.read(int(round(timeout * 1000)) if timeout > 0 else None)
        self.read_at = time.perf_counter()
        parsed = [self.parser.parse(eid, flds) for eid, flds in entries]
        self.last_entries = parsed
        return batch_of(parsed, passthrough=self.passthrough, time_field=self.parser.time_field)

    def _disconnect(self) -> None:
        if self.conn is not None and self._own_conn:
            self.conn.close()

    def stats(self) -> dict:
        s = self.parser.stats()
        s.update(reconnects=self.conn.reconnects if self.conn else 0, stream_resets=self.reader.stream_resets if self.reader else 0)
        return s


class RedisSink(PredictionSink):
    """Predictions as entries of a Redis stream, in BRAND's layout.

    Each entry (:func:`prediction_entry`): ``field`` (default ``samples``): the predictions as ``dtype``
    (float32), in the order of the decoder's output names; ``ts``: uint64 ``time.monotonic_ns()`` when
    written; ``i``: uint64 counter; ``t_end``: float64 end of the decoded chunk on the source clock;
    plus every field of :attr:`Prediction.extra` passed through (from a :class:`RedisSource`: the
    input entry's ``sync``, ``i_in``, ``id_in``, ``ts_in``), as ``possm-brand`` writes them.

    Options: stream (default ``possm``), field, dtype (``float32``/``float64``), maxlen (approximate
    trimming), time_key (the field stamped with ``monotonic_ns`` at writing, default ``ts``), and the
    connection options of :class:`RedisOptions`, or ``conn``: a :class:`RedisConnection` to share
    (``possm-brand``'s; left open at :meth:`disconnect`). Every :meth:`publish` is one write (one
    pipeline for several predictions); ``i``: the counter of the next entry.
    """

    name = "redis"

    def __init__(self, stream: str = "possm", *, field: str = "samples", dtype: str = "float32", maxlen: Any = None, time_key: str = "ts",
                 conn: RedisConnection | None = None, **options: Any) -> None:
        super().__init__()
        self.options, rest = _split_options(options)
        if rest:
            known = _REDIS_KEYS | {"stream", "field", "dtype", "maxlen", "time_key"}
            raise ConfigError(f"redis sink: unknown option(s) {sorted(rest)}; known: {sorted(known)}")
        if str(dtype) not in ("float32", "float64"):
            raise ConfigError(f"redis sink: dtype={dtype!r} must be float32 or float64")
        self.stream, self.field, self.dtype = str(stream), str(field), np.dtype(str(dtype))
        self.maxlen = _as_int("maxlen", maxlen, minimum=1) if _opt(maxlen) is not None else None
        self.time_key = str(time_key)
        self.conn: RedisConnection | None = conn
        self._own_conn = conn is None
        if conn is not None:
            self.options = conn.options
        self.writer: StreamWriter | None = None
        self.output_names: list[str] = []
        self.i = 0

    def _connect(self, output_names: list[str], chunk_step: float) -> None:
        self.output_names = list(output_names)
        if self._own_conn:
            self.conn = RedisConnection(self.options)
        self.conn.wait_until_up(5.0)
        self.writer = StreamWriter(self.conn, self.stream, maxlen=self.maxlen)
        log.info("writing predictions %s to Redis stream %r at %s", self.output_names, self.stream, self.options.describe())

    def _publish(self, predictions: list[Prediction]) -> None:
        assert self.writer is not None
        for p in predictions:
            self.writer.add(prediction_entry(p, field=self.field, dtype=self.dtype, i=self.i, time_key=self.time_key))
            self.i += 1
        self.writer.flush()

    def _disconnect(self) -> None:
        if self.writer is not None and self.writer.pending:
            self.writer.flush()
        if self.conn is not None and self._own_conn:
            self.conn.close()


@hookimpl
def possm_register_sources(register):
    register("redis", RedisSource, description="Redis stream of BRAND threshold crossings or binned spike counts")


@hookimpl
def possm_register_sinks(register):
    register("redis", RedisSink, description="Redis stream entries with samples/ts/i, as BRAND nodes write them")
