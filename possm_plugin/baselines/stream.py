"""Causal, one-chunk-at-a-time decoding with a fitted Wiener or Kalman filter.

``predict(session)`` decodes a whole session at once; a closed loop has only the chunks so far.
:class:`WienerStream` and :class:`KalmanStream` hold the filters' state (the last L count vectors; the
Kalman state estimate and covariance) and turn one chunk's counts, ``(U,)`` in the decoder's unit
order, into one prediction ``(C,)`` in physical units. Fed a session's chunks in order from a fresh
state they return exactly what ``predict`` returns (tested).
"""

from __future__ import annotations

import numpy as np

from possm_plugin.baselines.base import BinnedDecoder
from possm_plugin.baselines.kalman import KalmanFilter
from possm_plugin.baselines.wiener import WienerFilter
from possm_plugin.errors import ConfigError

__all__ = ["WienerStream", "KalmanStream", "stream_baseline"]


class WienerStream:
    """Chunk-by-chunk :class:`WienerFilter`."""

    def __init__(self, decoder: WienerFilter) -> None:
        decoder._check_fitted()
        self.decoder = decoder
        self.reset()

    def reset(self) -> None:
        self._lags = np.zeros((self.decoder.n_lags, self.decoder.n_units))

    def step(self, counts: np.ndarray) -> np.ndarray:
        d = self.decoder
        self._lags = np.roll(self._lags, 1, axis=0)
        self._lags[0] = np.asarray(counts, dtype=np.float64).reshape(-1)
        y = self._lags.reshape(-1) @ d.weights + d.bias
        return (y.astype(np.float32) * np.float32(d.target_scale)).astype(np.float32)


class KalmanStream:
    """Chunk-by-chunk :class:`KalmanFilter` (steady-state or full, as the filter was built)."""

    def __init__(self, decoder: KalmanFilter) -> None:
        decoder._check_fitted()
        self.decoder = decoder
        s = len(decoder.A)
        self._m = (np.eye(s) - decoder.gain @ decoder.H) @ decoder.A
        self.reset()

    def reset(self) -> None:
        d = self.decoder
        self._x = np.zeros(len(d.A))
        self._p = d.P0
        self._lags = np.zeros((d.n_lags, d.n_units))

    def step(self, counts: np.ndarray) -> np.ndarray:
        d = self.decoder
        self._lags = np.roll(self._lags, 1, axis=0)
        self._lags[0] = np.asarray(counts, dtype=np.float64).reshape(-1)
        y = self._lags.reshape(-1) - d.my
        if d.steady_state:
            self._x = self._m @ self._x + d.gain @ y
        else:
            x_pred = d.A @ self._x
            p_pred = d.A @ self._p @ d.A.T + d.W
            self._p = np.linalg.inv(np.linalg.inv(p_pred) + d._ht_qi_h)
            self._x = x_pred + self._p @ (d._ht_qi @ (y - d.H @ x_pred))
        out = (self._x + d.mx)[: d.n_outputs].astype(np.float32)
        return (out * np.float32(d.target_scale)).astype(np.float32)


def stream_baseline(decoder: BinnedDecoder) -> WienerStream | KalmanStream:
    """The chunk-by-chunk form of a fitted Wiener or Kalman filter."""
    if isinstance(decoder, WienerFilter):
        return WienerStream(decoder)
    if isinstance(decoder, KalmanFilter):
        return KalmanStream(decoder)
    raise ConfigError(f"no chunk-by-chunk form for {type(decoder).__name__}; Wiener and Kalman filters have one")
