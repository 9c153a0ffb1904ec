"""Threshold crossings from raw samples, causally, with BrainFlow's own filters (the detector of
:class:`~possm_plugin.adapters.brainflow_board.BrainFlowSource`).

Per block of samples (:class:`ThresholdDetector`):

1. **Band-pass**, causal, with BrainFlow's own ``DataFilter.perform_bandpass`` (Butterworth, order 4,
   default 250-5000 Hz). BrainFlow's filters keep no state between calls, so each block is filtered
   together with the ``history`` seconds of raw signal before it (default: 8 periods of the low
   cut-off) -- minus the window's first sample, to remove the offset -- and only the new samples are
   kept: every output depends on past and present input only. If the board samples too slowly for the
   band, the band is clipped to what the board can carry: the high edge to 0.45 x the sampling rate,
   and, if the low edge is then not below half the high edge, the low edge to a tenth of the high
   edge. BrainFlow's synthetic board (250 Hz) thus gets 11.25-112.5 Hz.
2. **RMS**, causal: the mean square of the filtered signal, a plain running mean over the first
   ``warmup`` seconds (after the filter has settled for one ``history``), then an exponential average
   with time constant ``rms_window``, updated once per block -- a block is thresholded with the
   estimate from the blocks before it. Nothing is detected during the warm-up.
3. **Threshold crossings** at ``threshold`` x RMS (negative: the signal falls below; positive: rises
   above), at most one per ``refractory_ms`` per channel.

Bad samples: NaN or inf samples (a dropped packet, a board glitch) are replaced by the channel's last
finite sample, and samples beyond +-``MAX_SAMPLE`` are clipped, before filtering (counted in
``n_bad_samples``, logged at most every 5 s), so one bad sample can never turn the filter or the RMS
into NaN or inf for good.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from possm_plugin.errors import ConfigError

__all__ = ["MAX_SAMPLE", "ThresholdDetector", "effective_band"]

log = logging.getLogger("possm_plugin.adapters.brainflow")

#: raw samples are clipped to +-this (no board measures it; it keeps squares and filters finite)
MAX_SAMPLE = 1e12


def _brainflow():
    try:
        from brainflow.board_shim import BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams
        from brainflow.data_filter import DataFilter, FilterTypes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"the BrainFlow source needs brainflow (pip install 'possm-plugin[brainflow]'; BrainFlow 5 also needs "
            f"setuptools<81): {exc}"
        ) from None
    return BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams, DataFilter, FilterTypes


def effective_band(band: tuple[float, float], fs: float) -> tuple[float, float]:
    """The band the filter uses on a board sampling at ``fs`` (see the module docstring)."""
    low, high = float(band[0]), float(band[1])
    if not (0 < low < high):
        raise ConfigError(f"band={band!r} must be 0 < low < high (Hz)")
    high_eff = min(high, 0.45 * fs)
    low_eff = low if low < high_eff / 2 else high_eff / 10
    return low_eff, high_eff


class ThresholdDetector:
    """Causal band-pass + running RMS + threshold crossings on blocks of (C, N) samples.

    Args:
        n_channels: C.
        fs: sampling rate, Hz.
        band: (low, high) Hz, clipped by :func:`effective_band`.
        order: Butterworth order.
        threshold: multiple of the RMS (negative: downward crossings).
        refractory_ms: dead time after a crossing, per channel.
        rms_window: time constant of the running RMS, seconds.
        warmup: seconds of plain running mean before detection starts.
        history: seconds of past signal filtered with each block (default: 8 / low cut-off).
    """

    def __init__(
        self,
        n_channels: int,
        fs: float,
        *,
        band: tuple[float, float] = (250.0, 5000.0),
        order: int = 4,
        threshold: float = -4.5,
        refractory_ms: float = 1.0,
        rms_window: float = 5.0,
        warmup: float = 1.0,
        history: float | None = None,
    ) -> None:
        if threshold == 0 or not math.isfinite(threshold):
            raise ConfigError(f"threshold={threshold!r} must be a non-zero multiple of the RMS (e.g. -4.5)")
        if not fs > 0:
            raise ConfigError(f"sampling rate {fs!r} must be positive")
        self.n_channels, self.fs = int(n_channels), float(fs)
        self.band = effective_band(band, fs)
        if self.band != (float(band[0]), float(band[1])):
            log.warning("band %g-%g Hz does not fit a %g Hz board; using %g-%g Hz", band[0], band[1], fs, *self.band)
        self.order = int(order)
        self.threshold = float(threshold)
        self.refractory = max(1, int(math.ceil(refractory_ms * 1e-3 * self.fs)))
        self.rms_tau = float(rms_window) * self.fs
        self.history = int(math.ceil((8.0 / self.band[0] if history is None else float(history)) * self.fs))
        self.warmup = int(math.ceil(float(warmup) * self.fs))
        self._hist = np.zeros((self.n_channels, 0))
        self._prev = np.zeros(self.n_channels)
        self._ms = np.zeros(self.n_channels)
        self._ms_n = 0
        self._last = np.full(self.n_channels, -(10**12), dtype=np.int64)
        self._last_raw = np.zeros(self.n_channels)
        self.n_seen = 0
        self.n_crossings = 0
        self.n_bad_samples = 0
        self._bad_logged = -math.inf

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self._ms)

    @property
    def ready(self) -> bool:
        return self.n_seen >= self.history + self.warmup

    def filter(self, x: np.ndarray) -> np.ndarray:
        """Band-pass one block causally (updates the raw history)."""
        _, _, _, _, DataFilter, FilterTypes = _brainflow()
        n = x.shape[1]
        win = np.concatenate([self._hist, x], axis=1)
        out = np.empty_like(x)
        fs = int(round(self.fs))
        for c in range(self.n_channels):
            w = np.ascontiguousarray(win[c] - win[c, 0], dtype=np.float64)
            DataFilter.perform_bandpass(w, fs, self.band[0], self.band[1], self.order, FilterTypes.BUTTERWORTH.value, 0.0)
            out[c] = w[-n:]
        self._hist = win[:, -self.history:] if self.history else win[:, :0]
        return out

    def process(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crossings in a (C, N) block: (channels, absolute sample indices), in time order."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise ValueError(f"expected a ({self.n_channels}, N) block, got {x.shape}")
        n = x.shape[1]
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        x = self._sanitize(x)
        y = self.filter(x)
        start = self.n_seen
        chans, idx = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.ready:
            thr = (self.threshold * self.rms)[:, None]
            prev = np.concatenate([self._prev[:, None], y[:, :-1]], axis=1)
            hit = (y < thr) & (prev >= thr) if self.threshold < 0 else (y > thr) & (prev <= thr)
            cs, ks = np.nonzero(hit)
            keep_c, keep_k = [], []
            for c, k in zip(cs.tolist(), ks.tolist()):  # sparse: refractory per channel, in time order
                if start + k - self._last[c] >= self.refractory:
                    self._last[c] = start + k
                    keep_c.append(c)
                    keep_k.append(start + k)
            if keep_c:
                order = np.argsort(np.asarray(keep_k), kind="stable")
                chans = np.asarray(keep_c, np.int64)[order]
                idx = np.asarray(keep_k, np.int64)[order]
        self._update_rms(y, start)
        self._prev = y[:, -1].copy()
        self.n_seen += n
        self.n_crossings += len(idx)
        return chans, idx

    def _sanitize(self, x: np.ndarray) -> np.ndarray:
        """Replace NaN/inf samples by the channel's last finite one and clip to +-MAX_SAMPLE (counted)."""
        bad = ~np.isfinite(x)
        huge = ~bad & (np.abs(np.where(bad, 0.0, x)) > MAX_SAMPLE)
        if bad.any() or huge.any():
            n_bad = int(bad.sum() + huge.sum())
            self.n_bad_samples += n_bad
            now = time.monotonic()
            if now - self._bad_logged >= 5.0:
                self._bad_logged = now
                log.warning("%d NaN/inf/absurd samples held at the last finite value or clipped (%d so far)", n_bad, self.n_bad_samples)
            x = np.clip(np.where(bad, np.nan, x), -MAX_SAMPLE, MAX_SAMPLE)
            if bad.any():  # forward-fill each channel from its last finite sample
                n = x.shape[1]
                idx = np.where(bad, -1, np.arange(n)[None, :])
                np.maximum.accumulate(idx, axis=1, out=idx)
                filled = np.take_along_axis(x, np.maximum(idx, 0), axis=1)
                x = np.where(idx < 0, self._last_raw[:, None], filled)
        self._last_raw = x[:, -1].copy()
        return x

    def _update_rms(self, y: np.ndarray, start: int) -> None:
        skip = max(0, self.history - start)  # the filter's start-up transient
        if skip >= y.shape[1]:
            return
        sq = np.square(y[:, skip:])
        m = sq.shape[1]
        if self._ms_n < self.warmup:
            self._ms = (self._ms * self._ms_n + sq.sum(axis=1)) / (self._ms_n + m)
        else:
            a = math.exp(-m / self.rms_tau)
            self._ms = a * self._ms + (1 - a) * sq.mean(axis=1)
        self._ms_n += m
