"""Decoders in the loop: one interface, ``step(times, units, t_end, intent) -> (2,)`` cm/s per chunk.

- :class:`PossmLoopDecoder`: a POSSM through :class:`~possm_plugin.realtime.streaming.StreamingDecoder`, the
  path the live nodes use (one ``decode`` call per chunk: its events, watermark at the chunk's end).
- :class:`BaselineLoopDecoder`: a fitted Wiener or Kalman filter; the chunk's counts come from
  :func:`~possm_plugin.baselines.binning.bin_spikes` (the baselines' own binning) and go through their
  chunk-by-chunk form (:mod:`possm_plugin.baselines.stream`).
- :class:`OracleDecoder` (returns the user's intent of the chunk), :class:`ZeroDecoder` and
  :class:`RotatedDecoder` (another decoder's output rotated by a fixed angle): references for tests.

``times``/``units`` are the chunk's spikes (seconds, unit indices into the session's units) in
``[t_end - chunk_s, t_end)``; ``intent`` is the velocity the user intended during the chunk (only the
oracle reads it).
"""

from __future__ import annotations

import math

import numpy as np

from possm_plugin.baselines.base import BinnedDecoder
from possm_plugin.baselines.binning import bin_spikes
from possm_plugin.baselines.stream import stream_baseline
from possm_plugin.errors import ConfigError
from possm_plugin.model.possm import POSSM
from possm_plugin.realtime.io import SpikeBatch
from possm_plugin.realtime.streaming import StreamingDecoder

__all__ = ["LoopDecoder", "PossmLoopDecoder", "BaselineLoopDecoder", "OracleDecoder", "ZeroDecoder", "RotatedDecoder"]


class LoopDecoder:
    """Base: ``reset(t0)`` before a run whose first chunk starts at ``t0``, ``step(...)`` once per
    chunk, in order."""

    name = "decoder"

    def reset(self, t0: float = 0.0) -> None:
        pass

    def step(self, times: np.ndarray, units: np.ndarray, t_end: float, intent: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class PossmLoopDecoder(LoopDecoder):
    """POSSM through a :class:`StreamingDecoder` whose chunk grid starts at the run's first chunk."""

    name = "possm"

    def __init__(self, model: POSSM, *, session: str, unit_ids: list[str], engine: str = "auto") -> None:
        self.model, self.session, self.unit_ids, self.engine = model, session, list(unit_ids), engine
        self.reset()

    def reset(self, t0: float = 0.0) -> None:
        self.stream = StreamingDecoder(self.model, session=self.session, unit_ids=self.unit_ids, t0=t0, engine=self.engine)
        self._last = np.zeros(2, np.float32)

    def step(self, times, units, t_end, intent):
        preds = self.stream.decode(SpikeBatch(np.asarray(units, np.int64), np.asarray(times, np.float64), t_end))
        if preds:
            self._last = np.asarray(preds[-1].values, np.float32).reshape(-1)[:2]
        return self._last


class BaselineLoopDecoder(LoopDecoder):
    """A fitted :class:`~possm_plugin.baselines.WienerFilter` or :class:`~possm_plugin.baselines.KalmanFilter`."""

    def __init__(self, decoder: BinnedDecoder, *, unit_ids: list[str], chunk_s: float) -> None:
        if list(decoder.unit_ids) and sorted(decoder.unit_ids) != sorted(unit_ids):
            raise ConfigError(f"the {decoder.name} filter was fit on other units than the loop's session")
        index = {u: i for i, u in enumerate(unit_ids)}
        self._cols = np.asarray([index[u] for u in decoder.unit_ids], np.int64)
        self.name = decoder.name
        self.decoder, self.chunk_s, self.n_units = decoder, float(chunk_s), len(unit_ids)
        self.stream = stream_baseline(decoder)

    def reset(self, t0: float = 0.0) -> None:
        self.stream.reset()

    def step(self, times, units, t_end, intent):
        start = np.array([t_end - self.chunk_s])
        counts = bin_spikes(times, units, n_units=self.n_units, starts=start, width=self.chunk_s, next_start=t_end)[0]
        return self.stream.step(counts[self._cols])


class OracleDecoder(LoopDecoder):
    """Returns the intent of the chunk it is given: a perfect decoder with no delay."""

    name = "oracle"

    def step(self, times, units, t_end, intent):
        return np.asarray(intent, np.float32)


class ZeroDecoder(LoopDecoder):
    """Returns zero velocity: the cursor never moves."""

    name = "zero"

    def step(self, times, units, t_end, intent):
        return np.zeros(2, np.float32)


class RotatedDecoder(LoopDecoder):
    """Another decoder's output rotated by ``degrees`` (counter-clockwise)."""

    def __init__(self, inner: LoopDecoder, degrees: float) -> None:
        self.inner = inner
        a = math.radians(degrees)
        self._rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
        self.name = f"{inner.name}-rot{degrees:g}"

    def reset(self, t0: float = 0.0) -> None:
        self.inner.reset(t0)

    def step(self, times, units, t_end, intent):
        return self._rot @ self.inner.step(times, units, t_end, intent)
