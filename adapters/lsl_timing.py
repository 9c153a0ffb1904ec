"""Timing of the LSL spike source: the bin grid of binned streams, and the arrival statistics that
decide how far the watermark of a spike-event stream may trail the clock.

Bin grid: the inlet maps sample times onto this machine's clock with the latest clock-offset
estimate, and each new estimate moves them by a few microseconds, so the bins of a binned stream
are put back on their grid (:func:`snap_bin_starts`): a chunk closes with the sample of its last
bin, not a bin later.

Watermark (the time up to which everything has been delivered): the latest timestamp delivered (the
end of the latest bin for binned streams), ignoring timestamps more than ``max_future`` (5 s) ahead
of the clock. Spike-event streams carry nothing while no neuron fires,
so when a pull returns nothing while the source is alive, the watermark advances with the clock to
``local_clock() - idle_delay`` and chunks without spikes still get decoded. ``idle_delay`` (20 ms)
must exceed the age of a spike's timestamp when it arrives (the sender's push interval plus the
transport delay, plus scheduling stalls of a busy machine), or spikes arrive late and are dropped
(counted as late); raise it for senders that push in batches. On a busy stream the data drive the
watermark and ``idle_delay`` adds no latency; on a sparse one it bounds the wait for a chunk. A
silence in which the stream's recent rate predicts more than ``stall_events`` (20) spikes is taken
for a stalled sender, not for quiet neurons: the watermark waits for its data (or for ``lost_after``),
so a sender that stalls on a busy machine does not make its spikes late. With ``clock_lag`` (seconds,
or ``"auto"``: learnt from the arrival delays) the clock rule applies at every pull, not only idle
ones, with that lag: chunks close at their end plus the lag whatever the neurons do (see
:meth:`possm_plugin.adapters.lsl.LSLSource.watermark_lag`).

:class:`ArrivalStats` keeps the recent event rate (stalls) and the arrival delays (``clock_lag="auto"``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BIN_SNAP", "ArrivalStats", "snap_bin_starts"]

BIN_SNAP = 0.25  # binned: bin starts this close to the bin grid (fraction of a bin) are put on it


def snap_bin_starts(starts: np.ndarray, w: float, bin0: float | None) -> tuple[np.ndarray, float | None]:
    """Bin starts put back on the stream's bin grid.

    Clock sync maps every timestamp with the latest clock-offset estimate, and each new estimate
    moves them by a few microseconds (+-4 us on one machine, more across a network). A bin that ends
    3 us before a chunk's end would then leave the chunk open until the next bin arrives: a whole bin
    of latency, for as long as that estimate lasts. So a start within ``BIN_SNAP`` of a bin width
    from the grid (anchored on ``bin0``, else on the first bin) is moved onto it, exactly. Beyond
    that (clocks that drift apart, a sender that skips), the grid re-anchors on that bin (and the
    source keeps a bin that then straddles the watermark already given to its part after it, so
    that its spikes are not late).

    Args:
        starts: bin starts (B,), seconds.
        w: the bin width, seconds.
        bin0: a bin start on the grid, or None before the first bin.

    Returns:
        the snapped starts (B,) and the grid's anchor to pass with the next bins.
    """
    if not len(starts) or not np.isfinite(starts).all():
        return starts, bin0
    if bin0 is None:
        bin0 = float(starts[0])
    grid = bin0 + np.rint((starts - bin0) / w) * w
    near = np.abs(starts - grid) <= BIN_SNAP * w
    if near.all():
        return grid, bin0
    out = starts.copy()
    for i in range(len(out)):  # rare: re-anchor the grid at each bin that is off it
        g = bin0 + round((out[i] - bin0) / w) * w
        if abs(out[i] - g) <= BIN_SNAP * w:
            out[i] = g
        else:
            bin0 = float(out[i])
    return out, bin0


class ArrivalStats:
    """Events per second (averaged over about a second of batches) and the largest arrival delay
    (arrival - timestamp) per 1 s bucket of a spike-event stream."""

    def __init__(self) -> None:
        self.rate = 0.0
        self._rate_t: float | None = None
        self._delay_now = 0.0  # largest delay in the current 1 s bucket
        self._delay_prev = 0.0  # ... in the bucket before
        self._delay_t: float | None = None  # start of the current bucket
        self._delay_since: float | None = None  # first delay observation

    def count(self, n: int, now: float) -> None:
        """``n`` events arrived at ``now`` (seconds on the local clock)."""
        if self._rate_t is not None and now > self._rate_t:
            dt = now - self._rate_t
            self.rate += min(1.0, dt) * (n / dt - self.rate)
        self._rate_t = now

    def stalled(self, silence: float, *, stall_events: float) -> bool:
        """Whether a silence of ``silence`` seconds is too long for this stream's rate (more than
        ``stall_events`` spikes expected): the sender stalls, rather than the neurons being quiet."""
        return self.rate * silence > stall_events

    def observe_delay(self, delay: float, now: float) -> None:
        """Record an arrival delay (seconds); a bogus one (NaN, negative) counts as 0."""
        if not (np.isfinite(delay) and delay >= 0.0):  # a huge delay is capped by auto_lag
            delay = 0.0
        if self._delay_since is None:
            self._delay_since = self._delay_t = now
        elif now - self._delay_t >= 1.0:
            self._delay_prev, self._delay_now, self._delay_t = self._delay_now, 0.0, now
        self._delay_now = max(self._delay_now, delay)

    def auto_lag(self, cap: float) -> float:
        """1.5x the largest delay of the last 1-2 s plus 0.5 ms, at most ``cap``; ``cap`` until the
        stream has been watched for a second."""
        if self._delay_since is None or self._delay_t is None or self._delay_t - self._delay_since < 1.0:
            return cap
        return min(cap, 1.5 * max(self._delay_now, self._delay_prev) + 0.0005)
