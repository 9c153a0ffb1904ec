"""Lab Streaming Layer (LSL) adapters: a spike source (inlet) and a prediction sink (outlet).

Both register themselves through the same hooks a third-party plugin uses (the module is the
``lsl`` entry point of the ``possm_plugin`` group).

Input: spike events (irregular rate: one sample per spike, ``[channel, unit, ...]``) or binned
counts (regular rate: one channel per unit), decided from the stream's own metadata
(``form="auto"``); the layouts and how unit ids are read from the labels are described in
:mod:`possm_plugin.adapters.lsl_layout`. Binned counts are turned into events spread evenly inside
their bin by :func:`possm_plugin.realtime.binned_events.binned_to_events`.

Timestamps: the inlet uses ``proc_clocksync`` (sample times are mapped onto this machine's
``local_clock()``), never dejitter for irregular streams (``dejitter=True`` adds it for regular
streams); bins of a binned stream are put back on their grid
(:func:`possm_plugin.adapters.lsl_timing.snap_bin_starts`). Pulls are short and blocking (``pull_chunk(timeout,
min_samples=1)``): they return as soon as one sample is there.

Watermark (the time up to which everything has been delivered): the latest timestamp delivered (the
end of the latest bin for binned streams); for spike-event streams also the clock, while the
neurons are quiet (``idle_delay``) or always (``clock_lag``): see :mod:`possm_plugin.adapters.lsl_timing`.

Loss and recovery, and the backlog skipped at the start: :mod:`possm_plugin.adapters.lsl_resume`.

Output: :class:`LSLSink` (:mod:`possm_plugin.adapters.lsl_outlet`).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pylsl
from pylsl.util import LostError
from pylsl.util import TimeoutError as LSLTimeoutError

from possm_plugin.adapters.lsl_layout import (  # the stream layout; its names stay importable from here
    CHANNEL_LABELS,
    MAX_ELECTRODE,
    build_predicate,
    channel_labels,
    event_fields,
    sample_units,
    stream_units,
)
from possm_plugin.adapters.lsl_outlet import TELEMETRY_CHANNELS, LSLSink  # the outlet; its import path stays this module
from possm_plugin.adapters.lsl_resume import ResumeMixin
from possm_plugin.adapters.lsl_signal import LSLSignalInlet  # the behaviour inlet; its import path stays this module
from possm_plugin.adapters.lsl_timing import ArrivalStats, snap_bin_starts
from possm_plugin.errors import ConfigError, StreamError
from possm_plugin.plugins.markers import hookimpl
from possm_plugin.realtime.io import SpikeBatch, SpikeSource

__all__ = [
    "LSLSource",
    "LSLSink",
    "LSLSignalInlet",
    "TELEMETRY_CHANNELS",
    "build_predicate",
    "channel_labels",
    "event_fields",
    "possm_register_sources",
    "possm_register_sinks",
]

log = logging.getLogger("possm_plugin.adapters.lsl")

FORMS = ("auto", "events", "binned")


# -- source -------------------------------------------------------------------------------------------
class LSLSource(ResumeMixin, SpikeSource):
    """Spike events from an LSL inlet (spike-event or binned-count streams; see the module doc).

    Args:
        name: the stream name to resolve (``possm-lsl --inlet NAME``).
        predicate: any LSL XPath predicate, e.g. ``"type='Spikes' and hostname='rig1'"`` (combined
            with ``name`` when both are given).
        stype, source_id: further exact matches on the stream's type / source_id.
        form: ``"auto"`` (irregular rate: events; regular rate: binned), ``"events"`` or ``"binned"``.
        resolve_timeout: seconds :meth:`connect` waits for the stream when given no timeout.
        idle_delay: safety delay of the clock-driven watermark of event streams, seconds.
        clock_lag: low-latency chunk closing for event streams (default None or ``"off"``: off). A number of
            seconds, or ``"auto"``: at every pull, not only idle ones, the watermark is at least
            ``now - lag``, so a chunk closes ``lag`` after its end even when no later spike has
            arrived yet; spikes arriving later than that are late (dropped and counted). ``"auto"``
            sets the lag from the stream itself: 1.5x the largest delay (arrival - timestamp) seen
            over the last 1-2 s, plus 0.5 ms, at most ``idle_delay`` (which it uses until it has
            watched the stream for a second). See :meth:`watermark_lag`.
        stall_events: the clock-driven watermark stops while a silence is longer than this many of
            the stream's recent inter-spike intervals (the sender stalls rather than the neurons).
        max_future: timestamps more than this many seconds ahead of the clock do not move the
            watermark (one bogus timestamp must not make every later spike late).
        max_count: binned counts above this are invalid (counted in ``bad_values``, taken as 0).
        lost_after: seconds without a sample after which the source counts as lost (at least five
            sample intervals of a regular stream).
        reconnect_interval: seconds between re-resolutions while lost.
        bin_stamp: ``"end"`` or ``"start"``: which edge of its bin a binned sample's timestamp marks.
        dejitter: add ``proc_dejitter`` for regular-rate streams.
        clocksync: map timestamps onto this machine's clock (``proc_clocksync``); False keeps the
            sender's timestamps as sent (the watermark and :meth:`now` then use the sender's clock
            through one ``time_correction()`` estimate taken at connect).
        n_units: for event streams without electrode labels: the electrode indices are ``0 .. n_units - 1``
            (unit ids ``"0"``, ``"1"``, ...). Without it, they come from the data: every electrode index
            seen until :meth:`freeze_units` (online calibration freezes them when it stops collecting).
        channel_labels: what the ``desc/channels`` labels of an event stream are: ``"auto"`` (fields when
            :func:`event_fields` recognises them, else electrode labels), ``"electrodes"`` or ``"fields"``.
        max_samples: most samples returned by one pull.
        max_buflen: inlet buffer, seconds (or x100 samples for irregular streams).
    """

    name = "lsl"

    def __init__(
        self,
        name: str | None = None,
        predicate: str | None = None,
        *,
        stype: str | None = None,
        source_id: str | None = None,
        form: str = "auto",
        resolve_timeout: float = 5.0,
        idle_delay: float = 0.02,
        clock_lag: float | str | None = None,
        stall_events: float = 20.0,
        max_future: float = 5.0,
        max_count: int = 1000,
        lost_after: float = 1.0,
        reconnect_interval: float = 0.5,
        bin_stamp: str = "end",
        dejitter: bool = False,
        clocksync: bool = True,
        n_units: int | None = None,
        channel_labels: str = "auto",
        max_samples: int = 65536,
        max_buflen: int = 30,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ConfigError(f"LSL source form={form!r} must be one of {FORMS}")
        if channel_labels not in CHANNEL_LABELS:
            raise ConfigError(f"LSL source channel_labels={channel_labels!r} must be one of {CHANNEL_LABELS}")
        if n_units is not None and not (isinstance(n_units, int) and not isinstance(n_units, bool) and 0 < n_units <= MAX_ELECTRODE + 1):
            raise ConfigError(f"LSL source n_units={n_units!r} must be a whole number of electrodes in 1..{MAX_ELECTRODE + 1}")
        if bin_stamp not in ("end", "start"):
            raise ConfigError(f"LSL source bin_stamp={bin_stamp!r} must be 'end' or 'start'")
        for key, v in (("resolve_timeout", resolve_timeout), ("lost_after", lost_after), ("reconnect_interval", reconnect_interval)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"LSL source {key}={v!r} must be a positive number of seconds")
        if not (isinstance(idle_delay, (int, float)) and idle_delay >= 0):
            raise ConfigError(f"LSL source idle_delay={idle_delay!r} must be >= 0 seconds")
        if clock_lag is False or (isinstance(clock_lag, str) and clock_lag.lower() in ("off", "none")):
            clock_lag = None
        if not (clock_lag is None or clock_lag == "auto" or (isinstance(clock_lag, (int, float)) and not isinstance(clock_lag, bool)
                                                              and 0 <= clock_lag <= 1)):
            raise ConfigError(f"LSL source clock_lag={clock_lag!r} must be 'auto', 'off' or seconds in [0, 1]")
        self.stream_name = name
        self.predicate = build_predicate(name, predicate, stype=stype, source_id=source_id)
        self.form_option = form
        self.resolve_timeout = float(resolve_timeout)
        self.idle_delay = float(idle_delay)
        self.clock_lag = clock_lag if clock_lag in (None, "auto") else float(clock_lag)
        self.stall_events = float(stall_events)
        self.max_future = float(max_future)
        self.max_count = int(max_count)
        self._arrivals = ArrivalStats()  # events: rate and arrival delays (stalls, clock_lag='auto')
        self.lost_after = float(lost_after)
        self._lost_after = self.lost_after
        self.reconnect_interval = float(reconnect_interval)
        self.bin_stamp = bin_stamp
        self.dejitter = bool(dejitter)
        self.clocksync = bool(clocksync)
        self._tc = 0.0
        self.n_units_option = None if n_units is None else int(n_units)
        self.channel_labels = channel_labels
        self._fields: tuple[int, int | None] = (0, 1)  # events: the sample's electrode and unit fields
        self.discovers_units = False  # events without electrode labels or n_units: unit ids from the data
        self.max_samples = int(max_samples)
        self.max_buflen = int(max_buflen)
        self.form: str | None = None  # "events" or "binned" once connected
        self.has_labels = False
        self.info: pylsl.StreamInfo | None = None
        self.srate = 0.0
        self.lost = False
        self.losses = 0
        self.bad_values = 0
        self._inlet: pylsl.StreamInlet | None = None
        self._pair_table: np.ndarray | None = None
        self._wm: float | None = None
        self._bin0: float | None = None  # binned: a bin start that anchors the bin grid (see snap_bin_starts)
        self._last_data = 0.0
        self._last_retry = 0.0
        self._fresh = False
        self._since: float | None = None
        self.stale_dropped = 0
        self._fresh_why = ""  # why the next pull skips the backlog (see skip_backlog), for its log line
        self._last_pull: float | None = None
        self._rejected: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    def describe(self) -> str:
        return f"an LSL stream with {self.predicate}"

    def _connect(self, timeout: float | None) -> None:
        timeout = self.resolve_timeout if timeout is None else float(timeout)
        infos = pylsl.resolve_bypred(self.predicate, 1, timeout)
        if not infos:
            raise StreamError(f"no LSL stream with {self.predicate} appeared within {timeout:g} s")
        if len(infos) > 1:
            log.warning("%d LSL streams match %s; using the newest (source_id %r)", len(infos), self.predicate, infos[-1].source_id())
            infos = sorted(infos, key=lambda i: i.created_at())
        self._open(infos[-1], first=True)

    def _open(self, info: pylsl.StreamInfo, *, first: bool) -> None:
        srate = info.nominal_srate()
        irregular = srate == pylsl.IRREGULAR_RATE
        flags = pylsl.proc_clocksync if self.clocksync else pylsl.proc_none
        if self.dejitter and not irregular:
            flags |= pylsl.proc_dejitter
        inlet = pylsl.StreamInlet(info, max_buflen=self.max_buflen, recover=True, processing_flags=flags)
        try:
            full = inlet.info(timeout=max(self.resolve_timeout, 1.0))
        except LSLTimeoutError:
            raise StreamError(f"the LSL stream {info.name()!r} was found but did not send its description") from None
        form = self.form_option if self.form_option != "auto" else ("events" if irregular else "binned")
        if form == "binned" and irregular:
            raise StreamError(f"LSL stream {info.name()!r} has an irregular rate; binned counts need a regular rate (use form=events)")
        if form == "events" and full.channel_count() < 1:
            raise StreamError(f"LSL stream {info.name()!r} has no channels")
        su = stream_units(full, form, labels_are=self.channel_labels, n_units=self.n_units_option)
        unit_ids, has_labels, table, discovers = su.unit_ids, su.has_labels, su.pair_table, su.discovers
        if not first and discovers:  # unit ids learnt from the data: the returning stream keeps them (and the freeze)
            unit_ids, discovers = self.unit_ids, self.discovers_units
        if not first:
            if form != self.form or unit_ids != self.unit_ids:
                inlet.close_stream()
                raise StreamError(
                    f"the LSL stream {info.name()!r} came back with other units or another form; restart the decoder"
                )
        inlet.open_stream(timeout=max(self.resolve_timeout, 1.0))
        try:  # the first clock-offset estimate takes ~0.6 s; take it now, not in the first pull
            tc = float(inlet.time_correction(timeout=max(self.resolve_timeout, 1.0)))
        except LSLTimeoutError:
            raise StreamError(f"the LSL stream {info.name()!r} did not answer the clock-offset query") from None
        self._tc = 0.0 if self.clocksync else tc
        self._inlet, self.info, self.form, self.srate = inlet, full, form, float(srate)
        # a slow regular stream is not lost between two samples
        self._lost_after = max(self.lost_after, 5.0 / srate) if srate > 0 else self.lost_after
        self.unit_ids, self.has_labels, self._pair_table = unit_ids, has_labels, table
        self._fields, self.discovers_units = su.fields, discovers
        self._last_data = pylsl.local_clock()
        self._fresh = True
        log.info(
            "LSL inlet %r (%s, %s, %s%s, source_id %r)", full.name(), form,
            "irregular" if irregular else f"{srate:g} Hz",
            "units from the data" if self.discovers_units else f"{len(unit_ids)} units",
            "" if has_labels else ", no labels: indices", full.source_id(),
        )

    def freeze_units(self) -> list[str]:
        """Stop learning unit ids from the data (event streams without electrode labels or
        ``n_units``): from now on an electrode index beyond :attr:`unit_ids` is an unknown channel.
        Returns the unit ids: ``"0" .. str(max electrode seen)``."""
        if self.discovers_units:
            self.discovers_units = False
            log.info("LSL source: %d unit ids from the data (electrodes 0..%d)", len(self.unit_ids), len(self.unit_ids) - 1)
        return list(self.unit_ids)

    def _disconnect(self) -> None:
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception:  # the stream may be gone already
                pass
        self._inlet = None
        self._wm = None
        self._bin0 = None

    # -- clock ---------------------------------------------------------------------------------
    def now(self) -> float:
        """The current time on the clock of the delivered timestamps (``local_clock()`` when
        clock-synced, else the sender's clock)."""
        return pylsl.local_clock() - self._tc

    # -- acquisition ---------------------------------------------------------------------------
    def _acquire(self, timeout: float) -> SpikeBatch:
        now = pylsl.local_clock()
        self._last_pull, last = now, self._last_pull
        if self._inlet is None:
            self._try_reconnect(now)
            if self._inlet is None:
                if timeout > 0:
                    time.sleep(min(timeout, 0.05))
                return SpikeBatch.empty(None)
        try:
            if self._fresh:  # decode from the first pull on, not what queued up while the decoder got ready
                self._fresh = False
                self._skip(now, last)
            data, ts = self._inlet.pull_chunk(timeout=timeout, max_samples=self.max_samples, min_samples=1, as_numpy=True)
            if self._since is not None and len(ts):
                keep = np.asarray(ts) >= self._since
                if keep.all():
                    self._since = None  # caught up: the backlog is gone
                else:
                    self.stale_dropped += int((~keep).sum())
                    data, ts = data[keep], np.asarray(ts)[keep]
        except LostError:
            self._mark_lost("the LSL stream was lost (no source_id to recover it by)")
            self._inlet = None
            return SpikeBatch.empty(None)
        now = pylsl.local_clock()
        if len(ts) == 0:
            if not self.lost and self._wm is not None and now - self._last_data > self._lost_after:
                self._mark_lost(f"no sample for {self._lost_after:g} s")
            if self.lost:
                self._try_reconnect(now)
                return SpikeBatch.empty(None)
            return SpikeBatch.empty(self._idle_watermark(now))
        self._last_data = now
        if self.lost:
            self.lost = False
            self._wm = self._bin0 = None  # follow the returning stream's clock
            log.warning("LSL stream %r is back; decoding resumes", self.info.name() if self.info else self.predicate)
        if self.form == "binned":
            return self._binned(data, ts)
        self._arrivals.count(len(ts), now)
        batch = self._events(data, ts)
        if self.clock_lag is not None and self._wm is not None:
            finite = batch.times[np.isfinite(batch.times)]
            self._arrivals.observe_delay(now - self._tc - float(finite.min()) if len(finite) else 0.0, now)
            batch.watermark = self._wm = max(self._wm, now - self._tc - self.watermark_lag())
        return batch

    def _idle_watermark(self, now: float) -> float | None:
        if self.form != "events" or self._wm is None:
            return self._wm
        if self._arrivals.stalled(now - self._last_data, stall_events=self.stall_events):
            return self._wm  # too long a silence for this stream's rate: the sender stalls; wait for its data
        lag = self.idle_delay if self.clock_lag is None else self.watermark_lag()
        self._wm = max(self._wm, now - self._tc - lag)
        return self._wm

    def watermark_lag(self) -> float | None:
        """How far behind the clock the watermark of an event stream may trail while data flow: the
        ``clock_lag`` (``"auto"``: from the delays seen), or None when ``clock_lag`` is unset (the
        watermark then follows the data, and the clock only after an idle pull, at ``idle_delay``).
        The decoder loop wakes at each chunk's end plus this lag (see ``DecoderRunner``)."""
        if self.clock_lag is None or self.form != "events":
            return None
        return self._arrivals.auto_lag(self.idle_delay) if self.clock_lag == "auto" else self.clock_lag

    def _events(self, data: np.ndarray, ts: np.ndarray) -> SpikeBatch:
        if self.discovers_units:
            self._discover(np.asarray(data[:, self._fields[0]], dtype=np.float64))
        ch = sample_units(data, fields=self._fields, pair_table=self._pair_table)
        times = np.asarray(ts, dtype=np.float64)
        plausible = times[np.isfinite(times) & (times <= pylsl.local_clock() - self._tc + self.max_future)]
        if len(plausible):
            top = float(plausible.max())
            self._wm = top if self._wm is None else max(self._wm, top)
        # LSL delivers each sample once: two samples of one electrode with one stamp are two spikes (a
        # sender that stamps a whole push with one time, as the neural-data-simulator does), not a re-send
        return SpikeBatch(ch, times, self._wm, distinct=True)

    def _discover(self, ch: np.ndarray) -> None:
        """Grow :attr:`unit_ids` to cover the largest valid electrode index in ``ch``."""
        ok = ch[np.isfinite(ch) & (ch >= 0) & (ch <= MAX_ELECTRODE) & (ch == np.floor(ch))]
        if len(ok) and int(ok.max()) >= len(self.unit_ids):
            self.unit_ids = [str(i) for i in range(int(ok.max()) + 1)]

    def _binned(self, data: np.ndarray, ts: np.ndarray) -> SpikeBatch:
        w = 1.0 / self.srate
        stamps = np.asarray(ts, dtype=np.float64) - (w if self.bin_stamp == "end" else 0.0)
        starts, self._bin0 = snap_bin_starts(stamps, w, self._bin0)
        lo = starts
        if self._wm is not None:  # a bin that straddles the watermark already given keeps its part after it
            lo = np.where((starts < self._wm) & (starts + w > self._wm), self._wm, starts)
        ends = starts + w
        ends = ends[ends <= pylsl.local_clock() - self._tc + self.max_future]
        if len(ends):
            end = float(ends.max())
            self._wm = end if self._wm is None else max(self._wm, end)
        batch = SpikeBatch.from_bins(data, starts, w, span_starts=lo, watermark=self._wm, max_count=self.max_count)
        self.bad_values += batch.bins_invalid
        batch.start = float(starts[0])  # the first bin's start: anchors the chunk grid on bin edges
        return batch



@hookimpl
def possm_register_sources(register):
    register("lsl", LSLSource, description="Lab Streaming Layer inlet: spike events or binned counts (possm-lsl --inlet NAME)")


@hookimpl
def possm_register_sinks(register):
    register("lsl", LSLSink, description="Lab Streaming Layer outlet: one float32 channel per output, stamped at chunk ends")
