"""Binned spike counts -> spike events: the one conversion that training import and every live path use.

POSSM reads spike *events*; many sources deliver counts per time bin (LSL binned streams, BRAND's
``crossings``/``binned_spikes`` Redis streams, a host's binned input, binned data files). They all go
through :func:`binned_to_events`, so spikes sit at the same place in training and live.

Placement: the ``k`` spikes of a bin ``[s, e)`` are spread evenly over it, each at the centre of
its share: ``s + (j + 0.5) * (e - s) / k`` for ``j = 0..k-1`` (a single spike in a 1 ms bin sits in
the middle of its millisecond, never on a chunk boundary). Training may move them again per window
(``bin_jitter``, an augmentation); the events themselves are placed only here.

Bad values: a count that is NaN or infinite, negative, larger than ``max_count``, or farther than
``WHOLE_TOL`` from a whole number (a rate, not a count) is dropped (taken as 0) and counted; the
rest are rounded to whole spikes. Nothing raises on bad values: callers add the count to their
statistics, and drops are logged here (rate-limited).

Shape letters: T bins, C channels, S events.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from possm_plugin.errors import DataError

__all__ = ["binned_to_events", "bad_counts", "MAX_COUNT", "WHOLE_TOL"]

log = logging.getLogger("possm_plugin.realtime.binned_events")

#: counts above this in one bin of one channel are garbage, not spikes
MAX_COUNT = 1000
#: a count within this of a whole number is that number (float32 transport rounds 3 to 2.9999998)
WHOLE_TOL = 1e-3

_last_log = [-math.inf]


def bad_counts(counts: np.ndarray, *, max_count: float = MAX_COUNT) -> np.ndarray:
    """Which counts are unusable (see the module docstring); same shape as ``counts``."""
    c = np.asarray(counts)
    if c.dtype.kind in "iub":  # whole by construction: only the range can be wrong
        return (c < 0) | (c > max_count) if c.dtype.kind == "i" else c > max_count
    c = c.astype(np.float64, copy=False)
    fin = np.isfinite(c)
    cf = np.where(fin, c, 0.0)
    return ~fin | (cf < 0) | (cf > max_count) | (np.abs(cf - np.rint(cf)) > WHOLE_TOL)


def binned_to_events(
    counts: np.ndarray,
    bin_starts: np.ndarray,
    bin_width: float,
    *,
    span_starts: np.ndarray | None = None,
    max_count: float = MAX_COUNT,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Events of binned counts, spread evenly in each bin.

    Args:
        counts: (T, C) spike counts (any numeric dtype; bad values are dropped and counted).
        bin_starts: (T,) start time of each bin (seconds).
        bin_width: width of every bin (seconds); bin ``t`` ends at ``bin_starts[t] + bin_width``.
        span_starts: (T,) where the events of each bin start instead of ``bin_starts`` (a live
            source whose bin straddles a watermark it already gave keeps the bin's part after it);
            default: the bins' starts.
        max_count: larger counts are dropped as garbage.

    Returns:
        channels (S,) int64 and times (S,) float64 in (bin, channel) order (not sorted by time across
        channels: the decoder sorts what it buffers), and how many (bin, channel) counts were bad and
        dropped.

    Raises:
        DataError: ``counts`` is not 2-D or its bins and ``bin_starts`` differ in number (a caller's
            bug, not bad data).
    """
    c = np.asarray(counts)
    if c.dtype.kind not in "iub":
        c = c.astype(np.float64, copy=False)
    starts = np.asarray(bin_starts, dtype=np.float64).reshape(-1)
    if c.ndim != 2:
        raise DataError(f"binned counts must be (T, C), got shape {c.shape}")
    if len(starts) != c.shape[0]:
        raise DataError(f"got {c.shape[0]} bins of counts but {len(starts)} bin times; pass one time per bin")
    bad = bad_counts(c, max_count=max_count)
    n_bad = int(bad.sum()) if bad.any() else 0
    if n_bad:
        now = time.monotonic()
        if now - _last_log[0] > 5.0:
            _last_log[0] = now
            log.warning("dropped %d bad binned counts (NaN, inf, negative, not whole or > %g); counted as 0", n_bad, max_count)
        c = np.where(bad, 0, c)
    flat = (np.rint(c) if c.dtype.kind == "f" else c).reshape(-1)
    nz = np.flatnonzero(flat)
    if not len(nz):
        return np.zeros(0, np.int64), np.zeros(0, np.float64), n_bad
    k = flat[nz].astype(np.int64)
    n = int(k.sum())
    cell = np.repeat(nz, k)  # the (bin, channel) cell of each event
    j = np.arange(n) - np.repeat(np.cumsum(k) - k, k)  # rank of the event within its cell
    kk = np.repeat(k, k)
    t_idx, ch = np.divmod(cell, c.shape[1])
    lo = starts if span_starts is None else np.asarray(span_starts, dtype=np.float64).reshape(-1)
    times = lo[t_idx] + (j + 0.5) * ((starts[t_idx] + bin_width - lo[t_idx]) / kk)
    return ch.astype(np.int64, copy=False), times, n_bad
