"""Resuming in real time after a gap: the LSL source's stream loss and recovery, and the backlog it
skips when decoding starts (or resumes after the caller stopped reading). A mixin of
:class:`~possm_plugin.adapters.lsl.LSLSource`.

Start: the first clock-offset estimate is taken while connecting (it takes ~0.6 s; in the first pull
it would delay the first chunks), and samples that queued before the first pull are dropped, so
decoding starts on fresh data.

Loss: no sample for ``lost_after`` seconds, or pylsl's ``LostError``, marks the source ``lost`` (the
watermark stops); the inlet recovers by itself when the stream comes back with the same source_id,
and otherwise the source re-resolves its query every ``reconnect_interval`` seconds and opens the
new stream if its units are the same. ``lost`` turns False with the first new sample.
"""

from __future__ import annotations

import logging

import pylsl

from possm_plugin.errors import StreamError

__all__ = ["ResumeMixin"]

log = logging.getLogger("possm_plugin.adapters.lsl")


class ResumeMixin:
    """Loss, recovery and backlog skipping of :class:`~possm_plugin.adapters.lsl.LSLSource` (uses its
    inlet, info, predicate, clock offset and ``_open``)."""

    def skip_backlog(self, why: str) -> None:
        """Start the next pull on fresh data, as the first one does: samples queued in the inlet until
        then are dropped (counted in ``stale_dropped``) and one log line says how many and why. For a
        caller that stopped reading for a while (e.g. online calibration: the unit identification,
        building the decoder), so that decoding resumes in real time, not with a burst of stale chunks."""
        self._fresh, self._fresh_why = True, why

    def _skip(self, now: float, last: float | None) -> None:
        """Drop the inlet's backlog (see :meth:`skip_backlog`); samples stamped before now that are still
        in transit are dropped by the next pulls (``_since``)."""
        flushed = int(self._inlet.flush() or 0)
        self.stale_dropped += flushed
        if self._fresh_why:
            gap = "" if last is None else f" (not read for {now - last:.2f} s)"
            log.info("LSL source: skipped %d queued samples%s while %s; decoding resumes on fresh data, in real time",
                     flushed, gap, self._fresh_why)
            self._fresh_why = ""
        self._since = now - self._tc
        self._last_data = now

    def _mark_lost(self, why: str) -> None:
        if not self.lost:
            self.lost = True
            self.losses += 1
            self._last_retry = pylsl.local_clock()
            log.warning("LSL source lost: %s; still running, waiting for it to come back", why)

    def _try_reconnect(self, now: float) -> None:
        if now - self._last_retry < self.reconnect_interval:
            return
        self._last_retry = now
        infos = pylsl.resolve_bypred(self.predicate, 1, 0.05)
        current = self.info.uid() if (self.info is not None and self._inlet is not None) else None
        fresh = [i for i in infos if i.uid() != current and i.uid() not in self._rejected]
        if not fresh:
            return
        old = self._inlet
        try:
            fresh = sorted(fresh, key=lambda i: i.created_at())
            self._open(fresh[-1], first=False)
        except StreamError as exc:
            self._rejected.add(fresh[-1].uid())
            log.error("%s", exc)
            return
        if old is not None:
            try:
                old.close_stream()
            except Exception:
                pass
        log.info("LSL source re-resolved: new inlet on %r", self.info.name())
