"""Redis streams as a spike source and a prediction sink (the wire format of BRAND graphs).

Input entries (one Redis stream entry per bin) come in two kinds:

- ``crossings``: BRAND's threshold crossings, one entry per 1 ms, field ``crossings`` holding one
  ``int16`` per channel (0, or the number of crossings in that millisecond);
- ``binned``: binned spike counts, field ``samples`` holding one ``int8``/``int16``/``float32`` count
  per channel per bin of ``bin_size_ms``.

Both are turned into spike events by :func:`possm_plugin.binned_events.binned_to_events`, the
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
dropped one by one as everywhere (:mod:`possm_plugin.binned_events`); the entry's other counts are
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
holds the entry format (:class:`EntryParser`) and the plugin source and sink.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from possm_plugin.binned_events import binned_to_events
from possm_plugin.errors import ConfigError
from possm_plugin.io import Prediction, PredictionSink, SpikeBatch, SpikeSource
from possm_plugin.plugins.markers import hookimpl

from .redis_io import (  # noqa: F401  (re-exported: this module was their home before the split)
    PASSWORD_ENV,
    Backoff,
    RedisConnection,
    RedisOptions,
    RedisUnavailable,
    StreamReader,
    StreamWriter,
    _as_float,
    _as_int,
    _as_list,
    _opt,
    _RateLimited,
)

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

#: added to every watermark so that float rounding never holds back a finished chunk (seconds)
WATERMARK_SLACK = 1e-6
KINDS = ("crossings", "binned")
CLOCKS = ("tick", "ts", "timestamps")
INPUT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "float32", "float64")


# -- entries ---------------------------------------------------------------------------------------
def _field(flds: dict, key: bytes) -> Any:
    """A field of an entry (redis-py returns bytes keys; str keys are accepted too)."""
    v = flds.get(key)
    return flds.get(key.decode()) if v is None else v


@dataclass
class ParsedEntry:
    """One input entry as spike events.

    Attributes:
        id: the Redis entry id.
        index: entries seen before this one (malformed included).
        t_start: start of the entry's bin on the reader's clock (None: no usable time).
        watermark: end of the bin (+ :data:`WATERMARK_SLACK`); every event before it has been delivered.
        channels, times: (S,) events.
        fields: the raw entry (for pass-through of ``sync``, ``ts``, ``i``).
        error: why the entry was rejected (None if it was valid).
    """

    id: str
    index: int
    t_start: float | None
    watermark: float | None
    channels: np.ndarray
    times: np.ndarray
    fields: dict
    error: str | None = None


class EntryParser:
    """Validate entries and turn counts into events (see the module docstring for the rules).

    Args:
        kind: ``crossings`` or ``binned``.
        n_channels: values per entry.
        field: the data field (default ``crossings`` for crossings, ``samples`` for binned).
        dtype: the data type (default ``int16`` for crossings, ``int8`` for binned).
        bin_size_ms: bin width (default 1 for crossings; required for binned).
        clock: ``tick``, ``ts`` or ``timestamps``.
        time_field: field of the ``ts`` clock.
        timestamps_rate: Hz of the ``timestamps`` clock.
        max_count: larger counts in one bin are rejected as garbage.
    """

    def __init__(
        self,
        *,
        kind: str = "crossings",
        n_channels: int,
        field: str | None = None,
        dtype: str | None = None,
        bin_size_ms: float | None = None,
        clock: str = "tick",
        time_field: str = "ts",
        timestamps_rate: float = 30000.0,
        max_count: int = 1000,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"input_kind={kind!r} must be one of {KINDS}")
        if clock not in CLOCKS:
            raise ConfigError(f"clock={clock!r} must be one of {CLOCKS}")
        self.kind = kind
        self.n_channels = _as_int("n_channels", n_channels, minimum=1)
        self.field = (field or ("crossings" if kind == "crossings" else "samples")).encode()
        dtype = dtype or ("int16" if kind == "crossings" else "int8")
        if str(dtype) not in INPUT_DTYPES:
            raise ConfigError(f"input_dtype={dtype!r} must be one of {INPUT_DTYPES}")
        self.dtype = np.dtype(str(dtype))
        if bin_size_ms is None:
            if kind == "binned":
                raise ConfigError("input_kind='binned' needs bin_size_ms (the width of one entry's bin in ms)")
            bin_size_ms = 1.0
        self.bin_s = _as_float("bin_size_ms", bin_size_ms, positive=True) / 1000.0
        self.clock = clock
        self.time_field = time_field.encode()
        self.timestamps_rate = _as_float("timestamps_rate", timestamps_rate, positive=True)
        self.max_count = int(max_count)
        self.n_entries = 0
        self.n_valid = 0
        self.n_events = 0
        self.malformed: Counter[str] = Counter()
        self._ts_wrap = 0
        self._ts_last: int | None = None
        self._warn = _RateLimited(log)

    @property
    def n_malformed(self) -> int:
        return sum(self.malformed.values())

    def _reject(self, entry_id: str, index: int, t_start: float | None, flds: dict, reason: str, detail: str) -> ParsedEntry:
        self.malformed[reason] += 1
        self._warn.warning(reason, "skipped malformed entry %s (%s: %s); %d %s so far", entry_id, reason, detail, self.malformed[reason], reason)
        wm = None if t_start is None else t_start + self.bin_s + WATERMARK_SLACK
        return ParsedEntry(entry_id, index, t_start, wm, np.zeros(0, np.int64), np.zeros(0, np.float64), flds, reason)

    def _time(self, flds: dict, index: int) -> tuple[float | None, str]:
        if self.clock == "tick":
            return index * self.bin_s, ""
        raw = _field(flds, self.time_field if self.clock == "ts" else b"timestamps")
        if raw is None:
            return None, f"no {(self.time_field if self.clock == 'ts' else b'timestamps').decode()!r} field"
        if not isinstance(raw, (bytes, bytearray)):
            return None, f"time field is a {type(raw).__name__}, not packed bytes"
        if self.clock == "ts":
            if len(raw) != 8:
                return None, f"'ts' has {len(raw)} bytes, expected 8 (uint64 monotonic_ns)"
            return int(np.frombuffer(raw, np.uint64)[0]) * 1e-9 - self.bin_s, ""
        if len(raw) < 4:
            return None, f"'timestamps' has {len(raw)} bytes, expected uint32"
        v = int(np.frombuffer(raw[:4], np.uint32)[0])
        if self._ts_last is not None and v < self._ts_last and self._ts_last - v > 2**31:
            self._ts_wrap += 2**32
        self._ts_last = v
        return (v + self._ts_wrap) / self.timestamps_rate, ""

    def parse(self, entry_id: str, flds: dict) -> ParsedEntry:
        """One entry -> events (or a rejected entry that still advances the clock when it can)."""
        index = self.n_entries
        self.n_entries += 1
        t_start, why = self._time(flds, index)
        if t_start is None:
            return self._reject(entry_id, index, None, flds, "bad_time", why)
        raw = _field(flds, self.field)
        if isinstance(raw, str):
            raw = raw.encode()
        if raw is None:
            return self._reject(entry_id, index, t_start, flds, "missing_field", f"no {self.field.decode()!r} field")
        if not isinstance(raw, (bytes, bytearray, memoryview)):  # Redis only delivers bytes; in-process callers may not
            return self._reject(entry_id, index, t_start, flds, "wrong_dtype", f"{self.field.decode()!r} is a {type(raw).__name__}, not packed bytes")
        n, size = self.n_channels, self.dtype.itemsize
        if len(raw) != n * size:
            if len(raw) % n == 0 and len(raw) // n in (1, 2, 4, 8):
                return self._reject(
                    entry_id, index, t_start, flds, "wrong_dtype",
                    f"{len(raw)} bytes = {n} x {len(raw) // n}-byte values, expected {n} x {self.dtype.name}",
                )
            return self._reject(entry_id, index, t_start, flds, "wrong_length", f"{len(raw)} bytes, expected {n} x {self.dtype.name} = {n * size}")
        vals = np.frombuffer(raw, self.dtype)
        wm = t_start + self.bin_s + WATERMARK_SLACK
        if not vals.any():
            self.n_valid += 1
            return ParsedEntry(entry_id, index, t_start, wm, np.zeros(0, np.int64), np.zeros(0, np.float64), flds)
        ch, times, n_bad = binned_to_events(vals.reshape(1, -1), np.array([t_start]), self.bin_s, max_count=self.max_count)
        self.n_events += len(ch)
        if n_bad:  # the bad counts are dropped, the others kept; the entry is counted as malformed
            self.malformed["bad_values"] += 1
            self._warn.warning("bad_values", "entry %s: %d bad counts dropped (counts must be whole numbers in 0..%d); %d such entries so far",
                               entry_id, n_bad, self.max_count, self.malformed["bad_values"])
            return ParsedEntry(entry_id, index, t_start, wm, ch, times, flds, "bad_values")
        self.n_valid += 1
        return ParsedEntry(entry_id, index, t_start, wm, ch, times, flds)

    def stats(self) -> dict:
        return {"entries": self.n_entries, "valid": self.n_valid, "events": self.n_events,
                "malformed": dict(self.malformed), "malformed_total": self.n_malformed}


# -- entries -> one batch, predictions -> entries --------------------------------------------------------
def entry_fields(pe: ParsedEntry, *, passthrough: tuple[bytes, ...] = (b"sync",), time_field: bytes = b"ts") -> dict:
    """What a prediction completed by input entry ``pe`` carries to its output entry: ``i_in`` (the
    entry's ``i`` field, else the reader's uint64 entry counter), ``id_in`` (its Redis id), ``ts_in``
    (its ``time_field``, when it has one) and each ``passthrough`` field it has (BRAND's ``sync``)."""
    f = pe.fields
    i_in = _field(f, b"i")
    out = {"i_in": np.uint64(pe.index).tobytes() if i_in is None else i_in, "id_in": pe.id}
    for key in passthrough:
        v = _field(f, key)
        if v is not None:
            out[key.decode()] = v
    ts = _field(f, time_field)
    if ts is not None:
        out["ts_in"] = ts
    return out


def batch_of(parsed: list[ParsedEntry], *, passthrough: tuple[bytes, ...] = (b"sync",), time_field: bytes = b"ts") -> SpikeBatch:
    """Parsed entries as one :class:`SpikeBatch` for :meth:`StreamingDecoder.decode`: their events, the
    last watermark, the first bin's start (anchors the chunk grid on bin edges) and, per entry, its
    watermark and :func:`entry_fields` (so each prediction carries the entry that completed it)."""
    if not parsed:
        return SpikeBatch.empty(None)
    if len(parsed) == 1:
        pe = parsed[0]
        ch, tt = pe.channels, pe.times
    else:
        ch = np.concatenate([p.channels for p in parsed])
        tt = np.concatenate([p.times for p in parsed])
    wm = next((p.watermark for p in reversed(parsed) if p.watermark is not None), None)
    start = next((p.t_start for p in parsed if p.t_start is not None), None)
    marks = [(p.watermark, entry_fields(p, passthrough=passthrough, time_field=time_field)) for p in parsed if p.watermark is not None]
    return SpikeBatch(ch, tt, wm, start=None if start is None else float(start), marks=marks)


def prediction_entry(pred: Prediction, *, field: str, dtype: np.dtype, i: int, time_key: str = "ts") -> dict[str, Any]:
    """One output entry in BRAND's layout: ``field`` (the values as ``dtype``), ``i`` (uint64 output
    counter), ``t_end`` (float64 chunk end on the source clock), every field of :attr:`Prediction.extra`
    (``sync``, ``i_in``, ``id_in``, ``ts_in``) and ``time_key`` (uint64 ``time.monotonic_ns()`` now)."""
    entry: dict[str, Any] = {}
    for k, v in pred.extra.items():
        pv = _pass_value(v)
        if pv is not None:
            entry[str(k)] = pv
    entry[field] = np.asarray(pred.values, dtype=dtype).tobytes()
    entry["i"] = np.uint64(i).tobytes()
    entry["t_end"] = np.float64(pred.t_end).tobytes()
    entry[time_key] = np.uint64(time.monotonic_ns()).tobytes()
    return entry


def _pass_value(v: Any) -> bytes | str | int | float | None:
    if isinstance(v, (bytes, str, int, float)):
        return v
    if isinstance(v, np.generic):
        return v.tobytes()
    return None


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
        ssl, ...).

    Each batch carries ``start``, its first bin's start, with which the decode loop anchors the chunk
    grid on bin edges: with ``clock=tick`` the first entry read covers [0, 1 ms).
    """

    name = "redis"

    def __init__(self, stream: str = "crossings", **options: Any) -> None:
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
        self.options = conn_opts
        self.parser = EntryParser(
            kind=o.get("kind") or "crossings", n_channels=n, field=o.get("field"), dtype=o.get("dtype"),
            bin_size_ms=o.get("bin_size_ms"), clock=o.get("clock") or "tick", time_field=o.get("time_field") or "ts",
            timestamps_rate=o.get("timestamps_rate") or 30000.0,
        )
        self.passthrough = tuple(k.encode() for k in _as_list("passthrough", o["passthrough"])) if o.get("passthrough") is not None else (b"sync",)
        self._start = "$" if o.get("start") is None else str(o["start"])  # "0" (read as the number 0) is a start too
        self._count = _as_int("count", o.get("count") or 1000, minimum=1)
        self.conn: RedisConnection | None = None
        self.reader: StreamReader | None = None
        self.last_entries: list[ParsedEntry] = []

    def _connect(self, timeout: float | None) -> None:
        self.conn = RedisConnection(self.options)
        self.conn.wait_until_up(5.0 if timeout is None else timeout)
        self.reader = StreamReader(self.conn, self.stream, start=self._start, count=self._count)
        self.reader.position()

    def _acquire(self, timeout: float) -> SpikeBatch:
        assert self.reader is not None
        entries = self.reader.read(int(round(timeout * 1000)) if timeout > 0 else None)
        parsed = [self.parser.parse(eid, flds) for eid, flds in entries]
        self.last_entries = parsed
        return batch_of(parsed, passthrough=self.passthrough, time_field=self.parser.time_field)

    def _disconnect(self) -> None:
        if self.conn is not None:
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
    trimming), and the connection options of :class:`RedisOptions`.
    """

    name = "redis"

    def __init__(self, stream: str = "possm", *, field: str = "samples", dtype: str = "float32", maxlen: Any = None, **options: Any) -> None:
        super().__init__()
        self.options, rest = _split_options(options)
        if rest:
            raise ConfigError(f"redis sink: unknown option(s) {sorted(rest)}; known: {sorted(_REDIS_KEYS | {'stream', 'field', 'dtype', 'maxlen'})}")
        if str(dtype) not in ("float32", "float64"):
            raise ConfigError(f"redis sink: dtype={dtype!r} must be float32 or float64")
        self.stream, self.field, self.dtype = str(stream), str(field), np.dtype(str(dtype))
        self.maxlen = _as_int("maxlen", maxlen, minimum=1) if _opt(maxlen) is not None else None
        self.conn: RedisConnection | None = None
        self.writer: StreamWriter | None = None
        self.output_names: list[str] = []
        self.i = 0

    def _connect(self, output_names: list[str], chunk_step: float) -> None:
        self.output_names = list(output_names)
        self.conn = RedisConnection(self.options)
        self.conn.wait_until_up(5.0)
        self.writer = StreamWriter(self.conn, self.stream, maxlen=self.maxlen)
        log.info("writing predictions %s to Redis stream %r at %s", self.output_names, self.stream, self.options.describe())

    def _publish(self, predictions: list[Prediction]) -> None:
        assert self.writer is not None
        for p in predictions:
            self.writer.add(prediction_entry(p, field=self.field, dtype=self.dtype, i=self.i))
            self.i += 1
        self.writer.flush()

    def _disconnect(self) -> None:
        if self.writer is not None and self.writer.pending:
            self.writer.flush()
        if self.conn is not None:
            self.conn.close()


@hookimpl
def possm_register_sources(register):
    register("redis", RedisSource, description="Redis stream of BRAND threshold crossings or binned spike counts")


@hookimpl
def possm_register_sinks(register):
    register("redis", RedisSink, description="Redis stream entries with samples/ts/i, as BRAND nodes write them")
