"""Lab Streaming Layer (LSL) adapters: a spike source (inlet) and a prediction sink (outlet).

Both register themselves through the same hooks a third-party plugin uses (the module is the
``lsl`` entry point of the ``possm_plugin`` group).

Input, two forms, decided from the stream's own metadata (``form="auto"``):

* **spike events** - irregular rate (``nominal_srate == 0``): one sample per spike laid out
  ``[channel, unit, ...]`` (the neural-data-simulator's ``SpikeEvents`` layout; any further values,
  e.g. a waveform, are ignored). The sample's LSL timestamp is the spike time. Unit ids are the
  labels in ``desc/channels/channel/label``; the sample's ``channel`` value indexes that list and its
  ``unit`` value is ignored (all units of an electrode are merged, as with threshold crossings),
  unless the stream lists sorted units in ``desc/units/unit`` (children ``label``, ``channel``,
  ``unit``): then each ``(channel, unit)`` pair maps to its own unit id. A ``channels`` list that
  only names the sample's fields (first label ``channel``) is not taken for electrode labels.
* **binned counts** - regular rate: one channel per unit, int or float counts per bin. Unit ids are
  the channel labels. The timestamp of a sample marks the *end* of its bin (``bin_stamp="end"``, the
  moment the counts are complete; ``"start"`` is accepted too). Counts are turned into events spread
  evenly inside the bin by :func:`possm_plugin.realtime.binned_events.binned_to_events` (the conversion every
  source and the training importer share): ``k`` spikes of a bin ``[s, s + w)`` get the times
  ``s + (i + 0.5) w / k``, ``i = 0..k-1``. NaN, infinite, negative, non-whole or absurd
  (> ``max_count``, 1000) counts count as 0 (and are counted in ``bad_values``).

Without labels, unit ids are the channel indices as strings (``"0"``, ``"1"``, ...); map them to a
known session with ``possm-lsl --session ID``.

Start: the first clock-offset estimate is taken while connecting (it takes ~0.6 s; in the first pull
it would delay the first chunks), and samples that queued before the first pull are dropped, so
decoding starts on fresh data.

Timestamps: the inlet uses ``proc_clocksync`` (sample times are mapped onto this machine's
``local_clock()``), never dejitter for irregular streams (``dejitter=True`` adds it for regular
streams). Each new clock-offset estimate moves the mapped times by a few microseconds, so bins of a
binned stream are put back on their grid (:meth:`LSLSource._bin_starts`): a chunk closes with the
sample of its last bin, not a bin later. Pulls are short and blocking (``pull_chunk(timeout,
min_samples=1)``): they return as soon as one sample is there.

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
:meth:`LSLSource.watermark_lag`).

Loss: no sample for ``lost_after`` seconds, or pylsl's ``LostError``, marks the source ``lost`` (the
watermark stops); the inlet recovers by itself when the stream comes back with the same source_id,
and otherwise the source re-resolves its query every ``reconnect_interval`` seconds and opens the
new stream if its units are the same. ``lost`` turns False with the first new sample.

Output: :class:`LSLSink` opens an outlet with one float32 channel per decoded variable (labels and
units in ``desc/channels``), nominal rate ``1 / chunk_step``, a stable source_id, and stamps each
sample with its chunk's end time (on the inlet's clock, which is ``local_clock()`` after clock
sync). ``telemetry=True`` adds a second outlet ``<name>-telemetry`` with, per chunk,
``compute_ms`` (the model step), ``publish_ms`` (chunk end -> this push), ``n_spikes`` and
``chunk_index`` (chunks since the grid was anchored), stamped like the prediction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pylsl
from pylsl.util import LostError
from pylsl.util import TimeoutError as LSLTimeoutError

from possm_plugin.adapters.lsl_outlet import TELEMETRY_CHANNELS, LSLSink  # the outlet; its import path stays this module
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
    "possm_register_sources",
    "possm_register_sinks",
]

log = logging.getLogger("possm_plugin.adapters.lsl")

FORMS = ("auto", "events", "binned")
BIN_SNAP = 0.25  # binned: bin starts this close to the bin grid (fraction of a bin) are put on it
#: channels of the telemetry outlet (label, unit)
#: what senders call the fields of a spike-event sample, after :func:`_field_word` (``"ch_id"`` -> ``"ch"``)
_ELECTRODE_WORDS = {"channel", "chan", "chn", "ch", "electrode", "elec", "elc", "site", "wire"}
_UNIT_WORDS = {"unit", "cluster", "clu", "neuron", "sortcode", "sort", "sortedunit"}
CHANNEL_LABELS = ("auto", "electrodes", "fields")
MAX_ELECTRODE = 65535  # unlabelled event streams: larger electrode indices are invalid, not new units


# -- metadata helpers ---------------------------------------------------------------------------------
def build_predicate(name: str | None = None, predicate: str | None = None, *, stype: str | None = None, source_id: str | None = None) -> str:
    """An LSL XPath predicate from a stream name and/or a free predicate (combined with ``and``)."""
    parts = []
    for key, value in (("name", name), ("type", stype), ("source_id", source_id)):
        if value:
            if "'" in value:
                raise ConfigError(f"LSL stream {key} {value!r} must not contain a single quote")
            parts.append(f"{key}='{value}'")
    if predicate:
        parts.append(f"({predicate})" if parts else predicate)
    if not parts:
        raise ConfigError("an LSL source needs a stream name (--inlet NAME) or a predicate (--source-opt predicate=...)")
    return " and ".join(parts)


def _children(node, child: str, value: str) -> list[str]:
    out = []
    ch = node.child(child)
    while not ch.empty():
        out.append(ch.child_value(value))
        ch = ch.next_sibling(child)
    return out


def channel_labels(info: pylsl.StreamInfo) -> list[str]:
    """The labels in ``desc/channels/channel/label`` (empty strings where a label is missing)."""
    channels = info.desc().child("channels")
    return [] if channels.empty() else _children(channels, "channel", "label")


def _sorted_units(info: pylsl.StreamInfo) -> list[tuple[str, str, str]]:
    """``(label, channel, unit)`` of each ``desc/units/unit`` entry."""
    units = info.desc().child("units")
    if units.empty():
        return []
    out = []
    u = units.child("unit")
    while not u.empty():
        out.append((u.child_value("label"), u.child_value("channel"), u.child_value("unit")))
        u = u.next_sibling("unit")
    return out


def _usable(labels: Sequence[str], n: int | None = None) -> bool:
    return bool(labels) and all(labels) and len(set(labels)) == len(labels) and (n is None or len(labels) == n)


def _field_word(label: str) -> str:
    """The word a label says, however spelled: lower case, only letters and digits, an ``id`` /
    ``idx`` / ``index`` / ``number`` / ``no`` suffix and a plural ``s`` dropped (``"ch_id"`` -> ``"ch"``,
    ``"Units"`` -> ``"unit"``, ``"electrode number"`` -> ``"electrode"``)."""
    w = "".join(c for c in label.lower() if c.isascii() and c.isalnum())
    for suffix in ("index", "idx", "id", "number", "num", "nr", "no"):
        if w.endswith(suffix) and len(w) > len(suffix):
            w = w[: -len(suffix)]
            break
    if w.endswith("s") and w[:-1] in _ELECTRODE_WORDS | _UNIT_WORDS:
        w = w[:-1]
    return w


def event_fields(labels: Sequence[str]) -> tuple[int, int | None] | None:
    """Where each sample of a spike-event stream keeps its electrode index and its unit, when the
    stream's ``desc/channels`` labels name the sample's fields rather than electrodes.

    Returns ``(electrode_field, unit_field)`` (``unit_field`` None when no field is a unit), or None
    when none of the first four labels names an electrode or unit field. Recognised in any case and
    spelling, plural, with an ``_id`` / ``idx`` / ``index`` / ``number`` suffix: ``channel``, ``chan``,
    ``ch``, ``electrode``, ``elec``, ``site`` for the electrode; ``unit``, ``cluster``, ``neuron``,
    ``sortcode`` for the unit. Examples: neural-data-simulator 0.2.10's ``ephys_generator``
    ``["channels", "units", "0", ..., "47"]`` (48 waveform samples follow) -> ``(0, 1)``; its
    ``streamer`` ``["ch_id", "unit_id"]`` -> ``(0, 1)``; ``["u0", "u1", "u2"]`` -> None.
    """
    words = [_field_word(x) for x in labels[:4]]  # the fields come first, a waveform after them
    el = next((i for i, w in enumerate(words) if w in _ELECTRODE_WORDS), None)
    un = next((i for i, w in enumerate(words) if w in _UNIT_WORDS), None)
    if el is None:
        return None if un is None else (un, None)  # only a unit field: it indexes the units
    return el, un


# -- source -------------------------------------------------------------------------------------------
class LSLSource(SpikeSource):
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
        self._delay_now = 0.0  # largest spike delay (arrival - timestamp) in the current 1 s bucket
        self._delay_prev = 0.0  # ... in the bucket before
        self._delay_t: float | None = None  # start of the current bucket
        self._delay_since: float | None = None  # first delay observation
        self.stall_events = float(stall_events)
        self.max_future = float(max_future)
        self.max_count = int(max_count)
        self._rate = 0.0
        self._rate_t: float | None = None
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
        self._bin0: float | None = None  # binned: a bin start that anchors the bin grid (see _bin_starts)
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
        learning = self.discovers_units
        unit_ids, has_labels, table = self._units_from(full, form)
        if not first:
            if self.discovers_units:  # unit ids learnt from the data: the returning stream keeps them (and the freeze)
                unit_ids, self.discovers_units = self.unit_ids, learning
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
        self._last_data = pylsl.local_clock()
        self._fresh = True
        log.info(
            "LSL inlet %r (%s, %s, %s%s, source_id %r)", full.name(), form,
            "irregular" if irregular else f"{srate:g} Hz",
            "units from the data" if self.discovers_units else f"{len(unit_ids)} units",
            "" if has_labels else ", no labels: indices", full.source_id(),
        )

    def _units_from(self, info: pylsl.StreamInfo, form: str) -> tuple[list[str], bool, np.ndarray | None]:
        labels = channel_labels(info)
        n_ch = info.channel_count()
        if form == "binned":
            if _usable(labels, n_ch):
                return labels, True, None
            if labels:
                log.warning("LSL stream %r: channel labels missing, duplicated or not one per channel; using indices", info.name())
            return [str(i) for i in range(n_ch)], False, None
        # events
        sorted_units = _sorted_units(info)
        if sorted_units and _usable([s[0] for s in sorted_units]):
            try:
                pairs = [(int(c or i), int(u or 0)) for i, (_, c, u) in enumerate(sorted_units)]
            except ValueError:
                raise StreamError(f"LSL stream {info.name()!r}: desc/units/unit channel and unit must be integers") from None
            if min(min(p) for p in pairs) < 0:
                raise StreamError(f"LSL stream {info.name()!r}: desc/units/unit channel and unit must be >= 0")
            table = np.full((max(p[0] for p in pairs) + 1, max(p[1] for p in pairs) + 1), -1, np.int64)
            for k, (c, u) in enumerate(pairs):
                table[c, u] = k
            self._fields = event_fields(labels) or (0, 1)
            return [s[0] for s in sorted_units], True, table
        return self._event_units(info, labels)

    def _event_units(self, info: pylsl.StreamInfo, labels: list[str]) -> tuple[list[str], bool, None]:
        """Unit ids of an event stream without sorted units: its electrode labels, or, when its labels
        name the sample's fields (:func:`event_fields`) or are missing, ``n_units`` indices or the
        electrodes in the data (:attr:`discovers_units`). Sets the fields read from each sample."""
        name, n_ch = info.name(), info.channel_count()
        fields = None if self.channel_labels == "electrodes" else event_fields(labels)
        if fields is None and self.channel_labels == "fields":
            fields = (0, 1 if n_ch > 1 else None)
        if fields is not None:
            if max(f for f in fields if f is not None) >= n_ch:
                raise StreamError(f"LSL stream {name!r}: its labels {labels[:4]} name more fields than its {n_ch} channels")
            self._fields = fields
            log.info("LSL stream %r: labels %s name each sample's fields (electrode: field %d, unit: %s); not electrode labels",
                     name, labels[: max(f for f in fields if f is not None) + 1], fields[0],
                     "none" if fields[1] is None else f"field {fields[1]}")
            labels = []
        else:
            self._fields = (0, 1 if n_ch > 1 else None)
            if labels and not _usable(labels):
                log.warning("LSL stream %r: channel labels missing or duplicated; electrodes are indices", name)
                labels = []
            elif labels and len(labels) == n_ch and n_ch > 2:
                log.warning(
                    "LSL stream %r: its %d channel labels (%s, ...) are read as electrode labels, indexed by each sample's "
                    "first value; if they name the %d values of each sample, pass --source-opt channel_labels=fields",
                    name, n_ch, ", ".join(repr(x) for x in labels[:3]), n_ch)
        if labels:
            if self.n_units_option is not None and self.n_units_option != len(labels):
                log.warning("LSL stream %r labels %d electrodes; n_units=%d is ignored", name, len(labels), self.n_units_option)
            return labels, True, None
        if self.n_units_option is not None:
            return [str(i) for i in range(self.n_units_option)], False, None
        self.discovers_units = True
        return [], False, None

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
        self._update_rate(len(ts), now)
        batch = self._events(data, ts)
        if self.clock_lag is not None and self._wm is not None:
            finite = batch.times[np.isfinite(batch.times)]
            self._observe_delay(now - self._tc - float(finite.min()) if len(finite) else 0.0, now)
            batch.watermark = self._wm = max(self._wm, now - self._tc - self.watermark_lag())
        return batch

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

    def _idle_watermark(self, now: float) -> float | None:
        if self.form != "events" or self._wm is None:
            return self._wm
        if self._rate * (now - self._last_data) > self.stall_events:
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
        if self.clock_lag != "auto":
            return self.clock_lag
        if self._delay_since is None or self._delay_t is None or self._delay_t - self._delay_since < 1.0:
            return self.idle_delay  # not watched long enough yet
        return min(self.idle_delay, 1.5 * max(self._delay_now, self._delay_prev) + 0.0005)

    def _observe_delay(self, delay: float, now: float) -> None:
        """Track the largest arrival delay per 1 s bucket (the lag of ``clock_lag="auto"``)."""
        if not (np.isfinite(delay) and delay >= 0.0):  # a bogus timestamp; a huge delay is capped by watermark_lag
            delay = 0.0
        if self._delay_since is None:
            self._delay_since = self._delay_t = now
        elif now - self._delay_t >= 1.0:
            self._delay_prev, self._delay_now, self._delay_t = self._delay_now, 0.0, now
        self._delay_now = max(self._delay_now, delay)

    def _update_rate(self, n: int, now: float) -> None:
        """Events per second, averaged over about a second of batches."""
        if self._rate_t is not None and now > self._rate_t:
            dt = now - self._rate_t
            self._rate += min(1.0, dt) * (n / dt - self._rate)
        self._rate_t = now

    def _events(self, data: np.ndarray, ts: np.ndarray) -> SpikeBatch:
        fe, fu = self._fields
        ch = np.asarray(data[:, fe], dtype=np.float64)
        if self.discovers_units:
            self._discover(ch)
        if self._pair_table is not None:
            un = np.asarray(data[:, fu], dtype=np.float64) if fu is not None and data.shape[1] > fu else np.zeros(len(ch))
            t = self._pair_table
            ok = np.isfinite(ch) & np.isfinite(un) & (ch >= 0) & (un >= 0) & (ch < t.shape[0]) & (un < t.shape[1])
            ok &= (ch == np.floor(ch)) & (un == np.floor(un))
            idx = np.full(len(ch), -1, np.int64)
            idx[ok] = t[ch[ok].astype(np.int64), un[ok].astype(np.int64)]
            ch = idx.astype(np.float64)
        times = np.asarray(ts, dtype=np.float64)
        plausible = times[np.isfinite(times) & (times <= pylsl.local_clock() - self._tc + self.max_future)]
        if len(plausible):
            top = float(plausible.max())
            self._wm = top if self._wm is None else max(self._wm, top)
        return SpikeBatch(ch, times, self._wm)

    def _discover(self, ch: np.ndarray) -> None:
        """Grow :attr:`unit_ids` to cover the largest valid electrode index in ``ch``."""
        ok = ch[np.isfinite(ch) & (ch >= 0) & (ch <= MAX_ELECTRODE) & (ch == np.floor(ch))]
        if len(ok) and int(ok.max()) >= len(self.unit_ids):
            self.unit_ids = [str(i) for i in range(int(ok.max()) + 1)]

    def _binned(self, data: np.ndarray, ts: np.ndarray) -> SpikeBatch:
        w = 1.0 / self.srate
        starts = self._bin_starts(np.asarray(ts, dtype=np.float64) - (w if self.bin_stamp == "end" else 0.0), w)
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

    def _bin_starts(self, starts: np.ndarray, w: float) -> np.ndarray:
        """Bin starts put back on the stream's bin grid. Clock sync maps every timestamp with the latest
        clock-offset estimate, and each new estimate moves them by a few microseconds (+-4 us on one
        machine, more across a network). A bin that ends 3 us before a chunk's end would then leave the
        chunk open until the next bin arrives: a whole bin of latency, for as long as that estimate
        lasts. So a start within ``BIN_SNAP`` of a bin width from the grid (anchored on the first bin)
        is moved onto it, exactly. Beyond that (clocks that drift apart, a sender that skips), the grid
        re-anchors on that bin (and :meth:`_binned` keeps a bin that then straddles the watermark
        already given to its part after it, so that its spikes are not late)."""
        if not len(starts) or not np.isfinite(starts).all():
            return starts
        if self._bin0 is None:
            self._bin0 = float(starts[0])
        grid = self._bin0 + np.rint((starts - self._bin0) / w) * w
        near = np.abs(starts - grid) <= BIN_SNAP * w
        if near.all():
            return grid
        out = starts.copy()
        for i in range(len(out)):  # rare: re-anchor the grid at each bin that is off it
            g = self._bin0 + round((out[i] - self._bin0) / w) * w
            if abs(out[i] - g) <= BIN_SNAP * w:
                out[i] = g
            else:
                self._bin0 = float(out[i])
        return out

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


# -- behaviour inlet (calibration labels) ------------------------------------------------------------
class LSLSignalInlet:
    """A regular numeric LSL stream read as ``(times, values)`` (e.g. the simulator's velocity).

    Args:
        name: the stream name (or ``predicate``).
        resolve_timeout: seconds to wait for it.
    """

    def __init__(self, name: str | None = None, predicate: str | None = None, *, resolve_timeout: float = 5.0) -> None:
        self.predicate = build_predicate(name, predicate)
        self.resolve_timeout = float(resolve_timeout)
        self._inlet: pylsl.StreamInlet | None = None
        self.channel_names: list[str] = []

    def connect(self, timeout: float | None = None) -> "LSLSignalInlet":
        timeout = self.resolve_timeout if timeout is None else float(timeout)
        infos = pylsl.resolve_bypred(self.predicate, 1, timeout)
        if not infos:
            raise StreamError(f"no LSL stream with {self.predicate} appeared within {timeout:g} s")
        self._inlet = pylsl.StreamInlet(infos[-1], max_buflen=360, recover=True, processing_flags=pylsl.proc_clocksync)
        info = self._inlet.info(timeout=max(timeout, 1.0))
        labels = channel_labels(info)
        n = info.channel_count()
        self.channel_names = labels if _usable(labels, n) else [f"ch{i}" for i in range(n)]
        self._inlet.open_stream(timeout=max(timeout, 1.0))
        return self

    def acquire(self, timeout: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Samples since the last call: times (M,) and values (M, C) float64."""
        if self._inlet is None:
            raise StreamError("LSLSignalInlet is not connected; call connect() first")
        try:
            data, ts = self._inlet.pull_chunk(timeout=timeout, max_samples=65536, min_samples=1, as_numpy=True)
        except LostError:
            return np.zeros(0), np.zeros((0, len(self.channel_names)))
        return np.asarray(ts, np.float64), np.asarray(data, np.float64).reshape(len(ts), len(self.channel_names))

    def disconnect(self) -> None:
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception:
                pass
        self._inlet = None

    def __enter__(self) -> "LSLSignalInlet":
        return self.connect() if self._inlet is None else self

    def __exit__(self, *exc) -> None:
        self.disconnect()


@hookimpl
def possm_register_sources(register):
    register("lsl", LSLSource, description="Lab Streaming Layer inlet: spike events or binned counts (possm-lsl --inlet NAME)")


@hookimpl
def possm_register_sinks(register):
    register("lsl", LSLSink, description="Lab Streaming Layer outlet: one float32 channel per output, stamped at chunk ends")
