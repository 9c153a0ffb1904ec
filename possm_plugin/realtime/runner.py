"""The decode loop: source -> :class:`~possm_plugin.realtime.streaming.StreamingDecoder` -> sinks.

One iteration: ``source.acquire`` (a short blocking pull) -> ``decoder.decode(batch)`` (the one decode
call: anchors the chunk grid, buffers the events, decodes every chunk the watermark completes, and
passes each input entry's pass-through fields, e.g. BRAND's ``sync``, to :attr:`Prediction.extra`) ->
``sink.publish`` for every sink; then the chunk-end -> publish latency of each prediction is
recorded with ``decoder.record_publish_latency`` (when the source can tell the time on its clock,
through an optional ``source.now()``).

Failures never stop the loop: an exception from ``acquire`` or ``publish`` is logged (rate-limited)
and counted, and the loop goes on. Tests set ``POSSM_RAISE_IN_THREADS=1`` to make it raise instead.

Source loss: a source that sets ``source.lost = True`` (the LSL source does after ``lost_after``
seconds without data) is reported once, the loop keeps running, and when data comes back
(``lost`` turns False) the decoder is reset: **decoding resumes with a fresh state** (no recurrent
state, history or buffered spikes from before the loss; the chunk grid is re-anchored at the first
new event). Independently of this, the StreamingDecoder itself resets a stream whose watermark jumps
more than ``max_gap`` seconds.

Stopping: :meth:`DecoderRunner.stop`, a ``threading.Event`` given as ``stop_event``, ``duration``
seconds, or SIGINT/SIGTERM when :meth:`run` is called with ``handle_signals=True`` (main thread).
:meth:`run` returns a summary: ``decoder.stats.summary()`` plus the runner's own counts.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

from possm_plugin.realtime.io import Prediction, PredictionSink, SpikeSource
from possm_plugin.realtime.streaming import StreamingDecoder

__all__ = ["DecoderRunner", "raise_in_threads"]

log = logging.getLogger("possm_plugin.realtime.runner")


def raise_in_threads() -> bool:
    """True when ``POSSM_RAISE_IN_THREADS`` asks acquisition errors to raise (tests)."""
    return os.environ.get("POSSM_RAISE_IN_THREADS", "").strip().lower() in ("1", "true", "yes")


class DecoderRunner:
    """Run a decoder on a source until told to stop.

    Args:
        source: a connected (or connectable) :class:`~possm_plugin.realtime.io.SpikeSource`.
        decoder: the :class:`~possm_plugin.realtime.streaming.StreamingDecoder` (stream 0 is decoded).
        sinks: prediction sinks, connected by :meth:`run` if they are not yet.
        stop_event: set it to stop the loop (from another thread or a signal handler).
        duration: stop after this many seconds (None: run until stopped).
        poll_timeout: the longest one ``acquire`` call waits for data, seconds.
        on_predictions: called with each list of published predictions (e.g. a progress display).
        on_step: called after every iteration (e.g. ``possm-brand``'s state post after a reconnection).
        error_backoff: pause after an acquisition error, seconds.
        warmup: throwaway steps of the decoder's engine before the loop starts
            (:meth:`~possm_plugin.realtime.streaming.StreamingDecoder.warmup`: keeps the first calls, slow,
            out of the first chunks' latency).
    """

    def __init__(
        self,
        source: SpikeSource,
        decoder: StreamingDecoder,
        sinks: Sequence[PredictionSink] = (),
        *,
        stop_event: threading.Event | None = None,
        duration: float | None = None,
        poll_timeout: float = 0.005,
        on_predictions: Callable[[list[Prediction]], None] | None = None,
        on_step: Callable[[], None] | None = None,
        error_backoff: float = 0.05,
        warmup: int = 5,
    ) -> None:
        if duration is not None and not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"duration={duration!r} must be a positive number of seconds or None")
        if poll_timeout < 0:
            raise ValueError(f"poll_timeout={poll_timeout!r} must be >= 0")
        self.source = source
        self.decoder = decoder
        self.sinks = list(sinks)
        self.stop_event = stop_event or threading.Event()
        self.duration = duration
        self.poll_timeout = float(poll_timeout)
        self._overdue: float | None = None  # the chunk end the loop last woke for without closing it
        self.on_predictions = on_predictions
        self.on_step = on_step
        self.error_backoff = float(error_backoff)
        self.warmup = int(warmup)
        self.acquire_errors = 0
        self.publish_errors = 0
        self.source_losses = 0
        self.source_returns = 0
        self.published = 0
        self.runtime_s = 0.0
        self._was_lost = False
        self._last_err_log = -math.inf

    def stop(self) -> None:
        """Ask the loop to stop after the current iteration."""
        self.stop_event.set()

    # -- the loop ------------------------------------------------------------------------------
    def run(self, *, handle_signals: bool = False) -> dict:
        """Decode until stopped; returns :meth:`summary`. Sinks are disconnected at the end (the
        source is left to its owner)."""
        restore = self._install_signals() if handle_signals else {}
        for sink in self.sinks:
            if not sink.connected:
                sink.connect(output_names=self.decoder.output_names, chunk_step=self.decoder.chunk_step)
        if not self.source.connected:
            self.source.connect()
        self.decoder.warmup(self.warmup)
        t_start = time.monotonic()
        deadline = None if self.duration is None else t_start + self.duration
        try:
            while not self.stop_event.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.step()
                if self.on_step is not None:
                    self.on_step()
        finally:
            self.runtime_s = time.monotonic() - t_start
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            for sink in self.sinks:
                try:
                    sink.disconnect()
                except Exception:  # noqa: BLE001 - closing must not hide the summary
                    log.exception("closing sink %s failed", type(sink).__name__)
        return self.summary()

    def step(self) -> list[Prediction]:
        """One iteration (acquire, push, advance, publish); returns the published predictions."""
        try:
            batch = self.source.acquire(timeout=self._poll_timeout())
        except Exception as exc:  # noqa: BLE001 - a failing source must not stop the decoder
            if raise_in_threads():
                raise
            self.acquire_errors += 1
            self._log_error("acquisition failed (%d so far): %s", self.acquire_errors, exc)
            self.stop_event.wait(self.error_backoff)
            return []
        lost = bool(getattr(self.source, "lost", False))
        if lost and not self._was_lost:
            self.source_losses += 1
            log.warning("source lost; the decoder keeps running and resumes (fresh state) when it returns")
        elif self._was_lost and not lost:
            self.source_returns += 1
            self.decoder.reset()
            log.warning("source is back; decoding resumes with a fresh state")
        self._was_lost = lost
        preds = self.decoder.decode(batch)
        if preds:
            self._publish(preds)
        return preds

    def _poll_timeout(self) -> float:
        """``poll_timeout``, cut short to wake when the next chunk closes by the clock: at its end plus the
        source's ``watermark_lag()`` (sources whose watermark follows the clock, e.g. LSL ``clock_lag``)."""
        lag_fn = getattr(self.source, "watermark_lag", None)
        now_fn = getattr(self.source, "now", None)
        if not (callable(lag_fn) and callable(now_fn)):
            return self.poll_timeout
        try:
            lag, end = lag_fn(), self.decoder.next_chunk_end(0)
            if lag is None or end is None:
                return self.poll_timeout
            wait = end + lag - now_fn()
        except Exception:  # noqa: BLE001 - a best-effort wake-up time; never stop the loop for it
            return self.poll_timeout
        if wait <= 0:  # due: one immediate pull closes it; still open after that, the source holds it back (a stall)
            if self._overdue == end:
                return self.poll_timeout
            self._overdue = end
            return 0.0
        return min(self.poll_timeout, wait)

    def _publish(self, preds: list[Prediction]) -> None:
        for sink in self.sinks:
            try:
                sink.publish(preds)
            except Exception as exc:  # noqa: BLE001
                if raise_in_threads():
                    raise
                self.publish_errors += 1
                self._log_error("publishing to %s failed (%d so far): %s", type(sink).__name__, self.publish_errors, exc)
        self.published += len(preds)
        now = getattr(self.source, "now", None)
        if callable(now):
            t = now()
            if t is not None:
                for p in preds:
                    self.decoder.record_publish_latency((t - p.t_end) * 1e3)
        if self.on_predictions is not None:
            self.on_predictions(preds)

    def _log_error(self, msg: str, *args) -> None:
        t = time.monotonic()
        if t - self._last_err_log > 5.0:
            self._last_err_log = t
            log.error(msg, *args)

    # -- signals -------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):  # noqa: ARG001
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.stop_event.set()

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return old

    # -- results -------------------------------------------------------------------------------
    def summary(self) -> dict:
        s = self.decoder.stats.summary()
        s.update(
            runtime_s=round(self.runtime_s, 3),
            predictions_published=self.published,
            acquire_errors=self.acquire_errors,
            publish_errors=self.publish_errors,
            source_losses=self.source_losses,
            source_returns=self.source_returns,
        )
        return s
