"""The Redis entry format: input entries -> spike events (:class:`EntryParser`), parsed entries -> one
:class:`~possm_plugin.realtime.io.SpikeBatch` with their pass-through (:func:`batch_of`), predictions -> output
entries in BRAND's layout (:func:`prediction_entry`). Shared by ``possm-brand`` and the generic
``redis`` source and sink; the rules are in :mod:`possm_plugin.adapters.redis_stream`'s docstring.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from possm_plugin.adapters.redis_io import _RateLimited
from possm_plugin.adapters.redis_options import _as_float, _as_int
from possm_plugin.errors import ConfigError
from possm_plugin.realtime.binned_events import binned_to_events
from possm_plugin.realtime.io import Prediction, SpikeBatch

__all__ = [
    "CLOCKS",
    "INPUT_DTYPES",
    "KINDS",
    "WATERMARK_SLACK",
    "EntryParser",
    "ParsedEntry",
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
    watermark and :func:`entry_fields` (made only for the entries that complete a chunk), so that each
    prediction carries the entry that completed it."""
    if len(parsed) == 1:  # the usual read live: one entry
        pe = parsed[0]
        if pe.watermark is None:
            return SpikeBatch(pe.channels, pe.times, None)
        marks = [(pe.watermark, partial(entry_fields, pe, passthrough=passthrough, time_field=time_field))]
        return SpikeBatch(pe.channels, pe.times, pe.watermark, start=pe.t_start, marks=marks)
    if not parsed:
        return SpikeBatch.empty(None)
    ch = np.concatenate([p.channels for p in parsed])
    tt = np.concatenate([p.times for p in parsed])
    wm = next((p.watermark for p in reversed(parsed) if p.watermark is not None), None)
    start = next((p.t_start for p in parsed if p.t_start is not None), None)
    marks = [(p.watermark, partial(entry_fields, p, passthrough=passthrough, time_field=time_field)) for p in parsed if p.watermark is not None]
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
