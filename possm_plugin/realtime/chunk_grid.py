"""The input side of the streaming decoder: per-stream buffers, watermarks and the chunk grid.

:class:`ChunkGrid` is the half of :class:`~possm_plugin.realtime.streaming.StreamingDecoder` that knows no model:
it buffers spike events per stream, anchors each stream's chunk grid, deals with gaps and bad input, and
asks the decoder (``_decode``) for every chunk a watermark completes. Its one entry point for drivers
is :meth:`ChunkGrid.decode` (a :class:`~possm_plugin.realtime.io.SpikeBatch` in, predictions out); ``push`` and
``advance`` stay public for tests and offline tools.

Bad input never raises from ``decode``/``push``/``advance``: NaN or inf times, times beyond
``MAX_ABS_TIME``, non-numeric or complex arrays, unknown channels, events older than a chunk already
decoded (late), exact duplicates, events too far in the future and oversized chunks are dropped and
counted in :class:`DecoderStats` (and logged, rate-limited); unusable watermarks are ignored and
counted in ``watermarks_invalid``.

Gaps: if a stream's watermark jumps more than ``max_gap`` seconds past its last decoded chunk (the
source vanished and came back), the stream's state is reset and its chunk grid re-anchored at the
first chunk after the gap; the skipped chunks are counted in ``chunks_skipped`` and the events still
buffered for them in ``spikes_skipped``. Likewise a stretch of more than ``max_gap`` seconds without
events inside the chunks a watermark completes (e.g. one far-off timestamp in a stream's first batch)
is skipped, not decoded chunk by chunk. Neither applies inside a batch whose per-entry watermarks
(:attr:`SpikeBatch.marks`, e.g. one Redis entry per bin) advanced by at most ``max_gap`` at a time: its
spike-free stretches were delivered as empty bins, so they are data, decoded as if each entry had come
on its own (a backlog read in one go decodes as it would have live). A watermark more than ``max_gap`` seconds *behind* the
stream's latest one means the source's clock restarted (or the latest time was bogus): the stream is
reset and its grid re-anchored there.

Accounting: with ``chunk_step == chunk_width``, ``spikes_in == spikes_decoded + spikes_dropped +``
the events still buffered (:meth:`ChunkGrid.buffered`), exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from possm_plugin.realtime.io import Prediction, SpikeBatch
from possm_plugin.realtime.stats import DecoderStats

__all__ = ["ChunkGrid", "DecoderStats", "MAX_ABS_TIME", "attach_marks"]

log = logging.getLogger("possm_plugin.realtime.streaming")

#: event times and watermarks beyond +-this many seconds (~317 years) are invalid: chunk arithmetic on
#: such magnitudes loses sub-millisecond precision (e.g. a unix time in ms taken for seconds)
MAX_ABS_TIME = 1e10
#: a watermark computed another way (t + w, k * dt) may miss a chunk end by an ulp
_EPS = 1e-6


def attach_marks(preds: list[Prediction], marks: list[tuple[float, dict | Callable[[], dict]]]) -> None:
    """Give each prediction the pass-through fields of the first input entry whose watermark reached
    its chunk's end (the entry that completed it). ``marks``: ``(watermark, fields)`` in input order;
    ``fields`` may be a function that makes them (called only for an entry that completes a chunk)."""
    if not marks:
        return
    for p in preds:
        for wm, fields in marks:
            if wm is not None and wm >= p.t_end - _EPS:
                p.extra.update(fields() if callable(fields) else fields)
                break

class _Stream:
    """Per-stream buffer and chunk grid."""

    __slots__ = ("t0", "next_chunk", "rows", "times", "session_row", "last_watermark")

    def __init__(self, session_row: int) -> None:
        self.t0: float | None = None
        self.next_chunk = 0
        self.rows = np.zeros(0, np.int64)
        self.times = np.zeros(0, np.float64)
        self.session_row = session_row
        self.last_watermark: float | None = None

class ChunkGrid:
    """Buffers, watermarks and chunk grids of the streams of a decoder (see the module docstring).

    A mixin of :class:`~possm_plugin.realtime.streaming.StreamingDecoder`, which sets ``chunk_width``,
    ``chunk_step``, ``max_gap``, ``max_future``, ``streams``, ``stats``, ``prewarm`` and the channel
    table, and does the decoding (``_decode``, ``_reset_state``, ``_throwaway_step``).
    """

    @property
    def n_streams(self) -> int:
        return len(self.streams)

    def t0(self, stream: int = 0) -> float | None:
        return self.streams[stream].t0

    def next_chunk_end(self, stream: int = 0) -> float | None:
        """End of the next chunk ``stream`` will decode (source clock), or None before its grid is anchored."""
        st = self.streams[stream]
        return None if st.t0 is None else st.t0 + st.next_chunk * self.chunk_step + self.chunk_width

    def buffered(self, stream: int | None = None) -> int:
        """Events pushed and kept but not yet decoded (one stream, or all)."""
        idx = range(self.n_streams) if stream is None else [stream]
        return sum(len(self.streams[i].times) for i in idx)

    def _warn(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) > 5.0:
            self._warned[key] = now
            log.warning(msg, *args)

    # -- the one decode call ------------------------------------------------------------------
    def decode(self, batch: SpikeBatch, *, stream: int = 0) -> list[Prediction]:
        """Decode a batch of input: every driver's one call.

        Anchors ``stream``'s chunk grid on ``batch.start`` (a binned source's first bin start) when it
        is not anchored yet, buffers the batch's events, decodes every chunk that ``batch.watermark``
        completes, and gives each prediction the pass-through fields of the entry that completed it
        (``batch.marks`` -> :attr:`Prediction.extra`). Binned counts: make the batch with
        :meth:`SpikeBatch.from_bins`.

        Returns:
            the predictions of the completed chunks, oldest first (often empty).
        """
        st = self.streams[stream]
        if batch.start is not None and st.t0 is None:
            self.advance(batch.start, stream=stream)  # anchor the grid on the first bin's start, with or without spikes
        runs = self._watermark_runs(batch, stream)
        if len(batch.times):  # the events of a continuous run are not "future" up to its end
            self.push(batch.channels, batch.times, stream=stream, watermark=max((wm for wm, c in runs if c), default=None),
                      distinct=batch.distinct)
        preds: list[Prediction] = []
        for wm, continuous in runs:
            preds += self.advance_many({stream: wm}, continuous=continuous)
        if preds and batch.marks:
            attach_marks(preds, batch.marks)
        return preds

    def _watermark_runs(self, batch: SpikeBatch, stream: int) -> list[tuple[float | None, bool]]:
        """Where :meth:`decode` advances ``stream``: to ``batch.watermark`` with the gap rules when the
        batch has no per-entry watermarks; else along them, one ``(watermark, True)`` per run of entries
        whose watermark moved by at most ``max_gap`` at a time (continuous: no gap, no silence skipped)
        and ``(watermark, False)`` for an entry after a larger step (a source that vanished, a clock
        that restarted: the gap rules)."""
        wms = [float(wm) for wm, _ in batch.marks if wm is not None]
        if not wms:
            return [(batch.watermark, False)]
        runs: list[tuple[float | None, bool]] = []
        prev = self.streams[stream].last_watermark
        for wm in wms:
            cont = prev is not None and abs(wm - prev) <= self.max_gap
            if cont and runs and runs[-1][1]:
                runs[-1] = (max(runs[-1][0], wm), True)
            else:
                runs.append((wm, cont))
            if math.isfinite(wm):
                prev = wm
        if batch.watermark is not None and batch.watermark != wms[-1]:
            runs.append((batch.watermark, False))
        return runs

    # -- input -----------------------------------------------------------------------------
    def push(self, channels: np.ndarray, times: np.ndarray, *, stream: int = 0, watermark: float | None = None,
             distinct: bool = False) -> int:
        """Buffer events (channel indices, times on the source clock); returns how many were kept.
        ``watermark``: where the events' own batch is complete, when ahead of the stream's watermark
        (events more than ``max_future`` after the later of the two are dropped). ``distinct``: keep
        events that share unit and time with another (:attr:`SpikeBatch.distinct`); else they are
        dropped as duplicates."""
        try:
            tt = np.asarray(times).reshape(-1)
        except (TypeError, ValueError):  # ragged nested sequences
            n = len(times) if hasattr(times, "__len__") else 1
            self.stats.spikes_in += n
            self.stats.spikes_invalid += n
            self._warn("dtype", "dropped %d events: times are not a flat numeric array", n)
            return 0
        n = len(tt)
        self.stats.spikes_in += n
        try:
            ch = np.asarray(channels).reshape(-1)
        except (TypeError, ValueError):
            ch = np.zeros(n + 1)  # a length mismatch: dropped below
        if len(ch) != n:
            self.stats.spikes_invalid += n
            self._warn("shape", "dropped %d events: %d channels for %d times", n, len(ch), n)
            return 0
        if n == 0:
            return 0
        st = self.streams[stream]
        try:
            if tt.dtype.kind not in "biufO" or ch.dtype.kind not in "biufO":  # complex, strings, dates: not events
                raise TypeError(f"dtypes {ch.dtype}/{tt.dtype}")
            tt = tt.astype(np.float64, copy=False)
            chf = ch.astype(np.float64, copy=False)
        except (TypeError, ValueError):
            self.stats.spikes_invalid += n
            self._warn("dtype", "dropped %d events with non-numeric channels or times", n)
            return 0
        ok = np.isfinite(tt) & np.isfinite(chf) & (np.abs(tt) <= MAX_ABS_TIME)
        bad = int(n - ok.sum())
        if bad:
            self.stats.spikes_invalid += bad
            self._warn("nan", "dropped %d events with NaN/inf/absurd time or NaN/inf channel", bad)
        known = ok & (chf >= 0) & (chf < self.n_channels) & (chf == np.floor(chf))
        unknown = int(ok.sum() - known.sum())
        if unknown:
            self.stats.spikes_unknown += unknown
            self._warn("unknown", "dropped %d events on channels outside 0..%d", unknown, self.n_channels - 1)
        chi, tt = chf[known].astype(np.int64), tt[known]
        if st.t0 is None and self._t0 is None and len(tt):
            st.t0 = float(tt.min())
        elif st.t0 is None and self._t0 is not None:
            st.t0 = float(self._t0)
        if st.t0 is not None and len(tt):
            next_start = st.t0 + st.next_chunk * self.chunk_step
            late = tt < next_start
            n_late = int(late.sum())
            if n_late:
                self.stats.spikes_late += n_late
                self._warn("late", "dropped %d late events (older than the last decoded chunk)", n_late)
                chi, tt = chi[~late], tt[~late]
            ref = st.last_watermark if watermark is None or st.last_watermark is None else max(st.last_watermark, watermark)
            if ref is not None:
                fut = tt > ref + self.max_future
                n_fut = int(fut.sum())
                if n_fut:
                    self.stats.spikes_future += n_fut
                    self._warn("future", "dropped %d events more than %.1f s ahead of the stream", n_fut, self.max_future)
                    chi, tt = chi[~fut], tt[~fut]
        if not len(tt):
            return 0
        rows = self._channel_rows_np[chi]
        rows_all = np.concatenate([st.rows, rows])
        times_all = np.concatenate([st.times, tt])
        order = np.lexsort((rows_all, times_all))  # by time, then unit
        rows_all, times_all = rows_all[order], times_all[order]
        dup = np.zeros(len(times_all), bool)
        if not distinct:
            dup[1:] = (times_all[1:] == times_all[:-1]) & (rows_all[1:] == rows_all[:-1])
        n_dup = int(dup.sum())
        if n_dup:
            self.stats.spikes_duplicate += n_dup
            self._warn("dup", "dropped %d duplicated events (same unit, same time)", n_dup)
            rows_all, times_all = rows_all[~dup], times_all[~dup]
        st.rows, st.times = rows_all, times_all
        return len(tt) - n_dup

    # -- decoding --------------------------------------------------------------------------
    def ready(self, watermark: float, *, stream: int = 0) -> int:
        """How many chunks of ``stream`` a watermark would complete."""
        end0 = self.next_chunk_end(stream)
        if end0 is None:
            return 0
        eps = _EPS
        if watermark < end0 - eps:
            return 0
        return int(math.floor((watermark - end0 + eps) / self.chunk_step)) + 1

    def advance(self, watermark: float | None, *, stream: int = 0) -> list[Prediction]:
        """Decode every chunk of ``stream`` that ends at or before ``watermark``."""
        return self.advance_many({stream: watermark})

    def advance_many(self, watermarks: dict[int, float | None], *, continuous: bool = False) -> list[Prediction]:
        """Decode ready chunks of several streams, batching streams that are ready together.
        ``continuous``: the watermarks were reached in steps of at most ``max_gap`` (see
        :meth:`_watermark_runs`): every chunk they complete is decoded, no gap or silence skipped."""
        pending: dict[int, int] = {}
        out: list[Prediction] = []
        for s, wm in watermarks.items():
            if wm is None:
                continue
            try:
                wm = float(wm)
            except (TypeError, ValueError):
                wm = math.nan
            if not (math.isfinite(wm) and abs(wm) <= MAX_ABS_TIME):
                self.stats.watermarks_invalid += 1
                self._warn("watermark", "ignored an unusable watermark %r (NaN, inf, beyond %g s or not a number)", watermarks[s], MAX_ABS_TIME)
                continue
            st = self.streams[s]
            if st.last_watermark is not None and wm < st.last_watermark - self.max_gap - self.chunk_width:
                self._warn("clock", "stream %d: watermark went back %.2f s (the source's clock restarted, or a time was bogus); "
                           "state reset, chunk grid re-anchored", s, st.last_watermark - wm)
                self.stats.spikes_skipped += len(st.times)
                self._reset_state(s)
                st = self.streams[s] = _Stream(st.session_row)
            if st.t0 is None:
                st.t0 = float(self._t0) if self._t0 is not None else float(wm)
            if st.last_watermark is None or wm > st.last_watermark:
                st.last_watermark = wm
            last_end = st.t0 + st.next_chunk * self.chunk_step  # start of the next chunk
            # events buffered inside the span make it a backlog (delivered late, all at once), not a gap:
            # _skip_silences below decodes them and skips only the real silences among them
            backlog = len(st.times) > 0 and st.times[0] < wm - self.max_gap
            if not continuous and wm - last_end > self.max_gap + self.chunk_width and st.next_chunk > 0 and not backlog:
                n_ready = self.ready(wm, stream=s)
                self._warn("gap", "stream %d: %.2f s without data; state reset, %d chunks skipped", s, wm - last_end, n_ready)
                self.stats.chunks_skipped += n_ready
                self._reset_state(s)
                st.next_chunk += n_ready
                keep = st.times >= st.t0 + st.next_chunk * self.chunk_step
                self.stats.spikes_skipped += int(len(keep) - keep.sum())
                st.rows, st.times = st.rows[keep], st.times[keep]
                continue
            n = self.ready(wm, stream=s) if continuous else self._skip_silences(s, wm, out)
            if n:
                pending[s] = n
        while pending:
            batch = sorted(pending)
            out.extend(self._decode(batch))
            for s in batch:
                pending[s] -= 1
                if pending[s] == 0:
                    del pending[s]
        if self.prewarm is not None:
            self._maybe_prewarm(watermarks)
        return out

    def _maybe_prewarm(self, watermarks: dict[int, float | None]) -> None:
        """One throwaway step when a watermark is within ``prewarm`` of its stream's next chunk end."""
        for s, wm in watermarks.items():
            st = self.streams[s]
            if wm is None or st.t0 is None or st.last_watermark is None or self._prewarmed.get(s) == st.next_chunk:
                continue
            if st.last_watermark >= self.next_chunk_end(s) - self.prewarm:
                self._prewarmed[s] = st.next_chunk
                self._throwaway_step(s)
                return  # one per call: the caches are warm for every stream

    def _skip_silences(self, s: int, wm: float, out: list[Prediction]) -> int:
        """How many chunks of stream ``s`` the watermark completes, once every stretch of more than
        ``max_gap`` seconds without events among them is dealt with: the chunks before it are decoded
        (into ``out``), the chunks inside it skipped (counted) and the state reset."""
        limit = self.max_gap + self.chunk_width
        step, width = self.chunk_step, self.chunk_width
        while True:
            n = self.ready(wm, stream=s)
            st = self.streams[s]
            if n == 0:
                return 0
            start = st.t0 + st.next_chunk * step
            horizon = start + (n - 1) * step + width  # end of the last chunk the watermark completes
            if horizon - start <= limit:
                return n
            ev = st.times[: int(np.searchsorted(st.times, horizon, side="left"))]
            marks = np.concatenate(([start], ev, [horizon]))
            big = np.flatnonzero(np.diff(marks) > limit)
            if not len(big):
                return n
            i = int(big[0])
            a, b = float(marks[i]), float(marks[i + 1])
            if i > 0:  # events before the silence: decode every chunk that starts at or before the last one
                k_a = int(math.floor((a - st.t0) / step))
                for _ in range(k_a - st.next_chunk + 1):
                    out.extend(self._decode([s]))
            if i + 1 < len(marks) - 1:  # an event ends the silence: keep the first chunk that holds it
                k_b = int(math.floor((b - width - st.t0) / step)) + 1
                while k_b > st.next_chunk and st.t0 + k_b * step > b:
                    k_b -= 1
            else:  # silent up to the watermark
                k_b = st.next_chunk + self.ready(wm, stream=s)
            skipped = k_b - st.next_chunk
            if skipped <= 0:
                return self.ready(wm, stream=s)
            self._warn("gap", "stream %d: %.2f s without events; state reset, %d chunks skipped", s, b - a, skipped)
            self.stats.chunks_skipped += skipped
            self._reset_state(s)
            st.next_chunk = k_b
            keep = st.times >= st.t0 + k_b * step
            self.stats.spikes_skipped += int(len(keep) - keep.sum())
            st.rows, st.times = st.rows[keep], st.times[keep]

    def _record(self, xs: list[float], v: float) -> None:
        xs.append(v)
        if len(xs) > self._max_lat:
            del xs[: len(xs) - self._max_lat]

    def record_publish_latency(self, ms: float) -> None:
        """Adapters report chunk-end -> publish time here."""
        self._record(self.stats.publish_ms, ms)
