"""The layout of an LSL spike stream, read from its own metadata: which stream to open (an XPath
predicate), what its channel labels say, and which unit id each sample belongs to.

Two forms, decided from the stream's nominal rate (``form="auto"``):

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

:func:`stream_units` turns a stream's description into the unit ids and sample fields that
:class:`possm_plugin.adapters.lsl.LSLSource` decodes by.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pylsl

from possm_plugin.errors import ConfigError, StreamError

__all__ = [
    "CHANNEL_LABELS",
    "MAX_ELECTRODE",
    "StreamUnits",
    "build_predicate",
    "channel_labels",
    "event_fields",
    "sample_units",
    "stream_units",
    "usable_labels",
]

log = logging.getLogger("possm_plugin.adapters.lsl")  # one logger for the LSL adapters (see lsl_log)

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


def usable_labels(labels: Sequence[str], n: int | None = None) -> bool:
    """Labels that can be unit ids: none empty, none twice, and ``n`` of them when ``n`` is given."""
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


class StreamUnits(NamedTuple):
    """What a stream's description says about its units (see :func:`stream_units`)."""

    unit_ids: list[str]
    has_labels: bool  # False: the unit ids are indices
    pair_table: np.ndarray | None  # sorted units: ``[channel, unit]`` -> index into unit_ids (-1: unknown)
    fields: tuple[int, int | None]  # events: the sample's electrode field and unit field (None: no unit field)
    discovers: bool  # events without electrode labels or n_units: the unit ids come from the data


def stream_units(info: pylsl.StreamInfo, form: str, *, labels_are: str = "auto", n_units: int | None = None) -> StreamUnits:
    """The unit ids of a stream in form ``"binned"`` or ``"events"``, from its full description.

    Args:
        info: the stream's description (``StreamInlet.info()``, with ``desc``).
        form: ``"binned"`` (one channel per unit) or ``"events"``.
        labels_are: what the ``desc/channels`` labels of an event stream are: ``"auto"``,
            ``"electrodes"`` or ``"fields"`` (the ``channel_labels`` option of the source).
        n_units: event streams without electrode labels: unit ids ``"0" .. str(n_units - 1)``.

    Raises:
        StreamError: sorted units whose channel/unit are not whole numbers >= 0, or labels that name
            more fields than the stream has channels.
    """
    labels = channel_labels(info)
    n_ch = info.channel_count()
    if form == "binned":
        if usable_labels(labels, n_ch):
            return StreamUnits(labels, True, None, (0, 1), False)
        if labels:
            log.warning("LSL stream %r: channel labels missing, duplicated or not one per channel; using indices", info.name())
        return StreamUnits([str(i) for i in range(n_ch)], False, None, (0, 1), False)
    sorted_units = _sorted_units(info)
    if sorted_units and usable_labels([s[0] for s in sorted_units]):
        try:
            pairs = [(int(c or i), int(u or 0)) for i, (_, c, u) in enumerate(sorted_units)]
        except ValueError:
            raise StreamError(f"LSL stream {info.name()!r}: desc/units/unit channel and unit must be integers") from None
        if min(min(p) for p in pairs) < 0:
            raise StreamError(f"LSL stream {info.name()!r}: desc/units/unit channel and unit must be >= 0")
        table = np.full((max(p[0] for p in pairs) + 1, max(p[1] for p in pairs) + 1), -1, np.int64)
        for k, (c, u) in enumerate(pairs):
            table[c, u] = k
        return StreamUnits([s[0] for s in sorted_units], True, table, event_fields(labels) or (0, 1), False)
    return _event_units(info, labels, labels_are=labels_are, n_units=n_units)


def _event_units(info: pylsl.StreamInfo, labels: list[str], *, labels_are: str, n_units: int | None) -> StreamUnits:
    """Unit ids of an event stream without sorted units: its electrode labels, or, when its labels
    name the sample's fields (:func:`event_fields`) or are missing, ``n_units`` indices or the
    electrodes in the data (``discovers``)."""
    name, n_ch = info.name(), info.channel_count()
    fields = None if labels_are == "electrodes" else event_fields(labels)
    if fields is None and labels_are == "fields":
        fields = (0, 1 if n_ch > 1 else None)
    if fields is not None:
        if max(f for f in fields if f is not None) >= n_ch:
            raise StreamError(f"LSL stream {name!r}: its labels {labels[:4]} name more fields than its {n_ch} channels")
        log.info("LSL stream %r: labels %s name each sample's fields (electrode: field %d, unit: %s); not electrode labels",
                 name, labels[: max(f for f in fields if f is not None) + 1], fields[0],
                 "none" if fields[1] is None else f"field {fields[1]}")
        labels = []
    else:
        fields = (0, 1 if n_ch > 1 else None)
        if labels and not usable_labels(labels):
            log.warning("LSL stream %r: channel labels missing or duplicated; electrodes are indices", name)
            labels = []
        elif labels and len(labels) == n_ch and n_ch > 2:
            log.warning(
                "LSL stream %r: its %d channel labels (%s, ...) are read as electrode labels, indexed by each sample's "
                "first value; if they name the %d values of each sample, pass --source-opt channel_labels=fields",
                name, n_ch, ", ".join(repr(x) for x in labels[:3]), n_ch)
    if labels:
        if n_units is not None and n_units != len(labels):
            log.warning("LSL stream %r labels %d electrodes; n_units=%d is ignored", name, len(labels), n_units)
        return StreamUnits(labels, True, None, fields, False)
    if n_units is not None:
        return StreamUnits([str(i) for i in range(n_units)], False, None, fields, False)
    return StreamUnits([], False, None, fields, True)


def sample_units(data: np.ndarray, *, fields: tuple[int, int | None], pair_table: np.ndarray | None) -> np.ndarray:
    """The unit index of each sample of a spike-event stream.

    Args:
        data: the samples (N, F), fields ``[channel, unit, ...]`` in the order ``fields`` says.
        fields: the electrode field and the unit field (None: none) of a sample (see :func:`event_fields`).
        pair_table: sorted units (:class:`StreamUnits`): ``[channel, unit]`` -> unit index; None: the
            electrode value is the unit index (units of an electrode merged).

    Returns:
        (N,) float64 unit indices, as sent when there is no table (the source drops invalid ones),
        else -1 for a pair that is not in the table.
    """
    fe, fu = fields
    ch = np.asarray(data[:, fe], dtype=np.float64)
    if pair_table is None:
        return ch
    un = np.asarray(data[:, fu], dtype=np.float64) if fu is not None and data.shape[1] > fu else np.zeros(len(ch))
    t = pair_table
    ok = np.isfinite(ch) & np.isfinite(un) & (ch >= 0) & (un >= 0) & (ch < t.shape[0]) & (un < t.shape[1])
    ok &= (ch == np.floor(ch)) & (un == np.floor(un))
    idx = np.full(len(ch), -1, np.int64)
    idx[ok] = t[ch[ok].astype(np.int64), un[ok].astype(np.int64)]
    return idx.astype(np.float64)
