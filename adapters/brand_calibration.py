"""``possm-brand`` online calibration, a phase before the runner starts: collect spikes and labels,
run unit identification in the background while the node keeps reading (and dropping) its input, then
build the calibrated decoder, which the runner decodes with from the next entry on.

A mixin of :class:`~possm_plugin.adapters.brand.BrandNode` (see its module docstring, "Online
calibration").
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from possm_plugin.adapters.redis_entries import ParsedEntry
from possm_plugin.adapters.redis_io import RedisUnavailable, StreamReader

__all__ = ["CalibrationMixin"]

log = logging.getLogger("possm_plugin.adapters.brand")


@dataclass
class _Calibration:
    """Spikes and labels collected for online calibration, then the background job."""

    seconds: float
    label_reader: StreamReader
    label_field: bytes
    label_dtype: np.dtype
    channels: list = field(default_factory=list)
    times: list = field(default_factory=list)
    label_times: list = field(default_factory=list)
    label_values: list = field(default_factory=list)
    offsets: list = field(default_factory=list)  # node clock - entry ts, to put labels on the node clock
    t_first: float | None = None
    t_last: float | None = None
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    label_errors: int = 0



class CalibrationMixin:
    """Online calibration of :class:`~possm_plugin.adapters.brand.BrandNode` (uses its params, model,
    session, unit_ids, calibration, source, stop and post_state)."""

    def _calibrate(self, *, poll: float) -> None:
        """Read the source (``poll`` s per read) and calibrate until the calibrated decoder is built
        (:attr:`decoder` set) or :attr:`stop` is set."""
        try:
            self.calibration.label_reader.position()  # labels from this moment on
        except RedisUnavailable:
            pass
        while self.decoder is None and not self.stop.is_set():
            self.source.acquire(timeout=poll)
            for pe in self.source.last_entries:
                self._collect(pe)
            self._poll_calibration()
            self._after_step()

    def _collect(self, pe: ParsedEntry) -> None:
        cal = self.calibration
        if cal is None or cal.thread is not None:
            return  # unit identification is running: input is not decoded meanwhile
        if pe.t_start is None:
            return
        if cal.t_first is None:
            cal.t_first = pe.t_start
        cal.t_last = pe.watermark
        if len(pe.times):
            cal.channels.append(pe.channels)
            cal.times.append(pe.times)
        ts = pe.fields.get(self._time_key_b)
        if ts is not None and len(ts) == 8 and pe.watermark is not None:
            cal.offsets.append(pe.watermark - int(np.frombuffer(ts, np.uint64)[0]) * 1e-9)

    def _poll_calibration(self) -> None:
        cal = self.calibration
        if cal.thread is None:
            width = self.model.config.output_dim
            for eid, flds in cal.label_reader.read(None):
                raw, ts = flds.get(cal.label_field), flds.get(self._time_key_b)
                if raw is None or ts is None or len(ts) != 8 or len(raw) != width * cal.label_dtype.itemsize:
                    cal.label_errors += 1
                    if cal.label_errors in (1, 100, 10000):
                        log.warning("label entry %s skipped (%d so far): needs %r with %d %s values and a uint64 %r",
                                    eid, cal.label_errors, cal.label_field.decode(), width, cal.label_dtype.name, self._time_key)
                    continue
                cal.label_times.append(int(np.frombuffer(ts, np.uint64)[0]) * 1e-9)
                cal.label_values.append(np.frombuffer(raw, cal.label_dtype).astype(np.float32))
            if cal.t_first is not None and cal.t_last is not None and cal.t_last - cal.t_first >= cal.seconds:
                self._start_calibration()
            return
        if cal.thread.is_alive():
            return
        if cal.error is not None:
            self.post_state("error", code=1, message=f"calibration failed: {cal.error}")
            raise cal.error
        self._finish_calibration()

    def _start_calibration(self) -> None:
        cal = self.calibration
        if not cal.label_values:
            log.warning("no labels from %r yet after %.1f s of spikes; still waiting", self.params.label_stream, cal.t_last - cal.t_first)
            cal.t_first = cal.t_last  # collect a fresh window
            cal.channels.clear()
            cal.times.clear()
            cal.offsets.clear()
            return
        offset = float(np.median(cal.offsets)) if cal.offsets else 0.0
        channels = np.concatenate(cal.channels) if cal.channels else np.zeros(0, np.int64)
        times = np.concatenate(cal.times) if cal.times else np.zeros(0, np.float64)
        lt = np.asarray(cal.label_times) + offset
        lv = np.stack(cal.label_values)
        t0, t1 = cal.t_first, cal.t_last
        log.info("calibrating session %r on %.1f s: %d spikes, %d labels; unit identification runs in the background",
                 self.session, t1 - t0, len(times), len(lt))
        self.post_state("calibrating", message=f"unit identification on {t1 - t0:.1f} s")

        cfg = self.model.config

        def job() -> None:
            from possm_plugin.realtime.calibration import build_session, calibrate

            try:
                session = build_session(
                    self.session, self.unit_ids, channels, times, lt, lv, target_names=cfg.output_names, target_scale=cfg.target_scale,
                )
                cal.result = calibrate(self.model, session, epochs=self.params.calibrate_epochs, stop_event=self.stop)
            except BaseException as exc:  # reported to the main loop
                cal.error = exc

        cal.thread = threading.Thread(target=job, name="possm-brand-calibration", daemon=True)
        cal.thread.start()

    def _finish_calibration(self) -> None:
        from possm_plugin.realtime.streaming import StreamingDecoder

        metrics = self.calibration.result or {}  # unit identification extended self.model in place
        if self.params.calibrated_checkpoint:
            from possm_plugin.model.checkpoint import save_checkpoint

            path = save_checkpoint(self.model, self.params.calibrated_checkpoint, default_session=self.session,
                                   meta={"calibration": {k: v for k, v in metrics.items() if k != "history"}})
            log.info("calibrated checkpoint written to %s", path)
        self.decoder = StreamingDecoder(self.model, session=self.session, unit_ids=self.unit_ids, device=self.params.device,
                                        prewarm=self.params.prewarm_ms / 1e3 if self.params.prewarm_ms else None)
        self.calibration_metrics = {k: v for k, v in metrics.items() if k != "history"}
        self.calibration = None
        r2 = metrics.get("valid_r2")
        log.info("calibration done; decoding session %r (calibration R2 %s)", self.session, "n/a" if r2 is None else f"{r2:.3f}")
        self.post_state("running", calibration_r2="n/a" if r2 is None else f"{r2:.4f}")
