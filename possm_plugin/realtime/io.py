"""What every source and sink adapter implements.

A *source* produces spike events: the index of a channel (into ``source.unit_ids``) and a time on the
source's clock, plus a *watermark*, the time up to which the source has delivered everything. Binned
sources turn counts into events with :meth:`SpikeBatch.from_bins` (one conversion for every source and
the training importer: :mod:`possm_plugin.realtime.binned_events`). A batch is decoded by one call,
:meth:`possm_plugin.realtime.streaming.StreamingDecoder.decode`.
A *sink* publishes predictions, each stamped with the end time of the chunk it decodes.

Lifecycle (as in mne-lsl): ``connect()`` -> ``acquire()``... -> ``disconnect()``; sources and sinks
are context managers.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from possm_plugin.realtime.binned_events import MAX_COUNT, binned_to_events

__all__ = ["SpikeBatch", "Prediction", "SpikeSource", "PredictionSink"]


@dataclass
class SpikeBatch:
    """Events acquired in one call.

    Attributes:
        channels: (S,) int64 channel indices into the source's ``unit_ids``.
        times: (S,) float64 event times on the source clock (seconds).
        watermark: every event with time < watermark has been delivered (None: unknown, e.g. no data).
        labels: optional behaviour samples that arrived with the spikes: (times (M,), values (M, C)).
        start: earliest time the batch covers (a binned source's first bin start), anchoring the grid.
        marks: pass-through of the input entries the batch holds, in order: ``(watermark, fields)``
            with the watermark after the entry and the fields a prediction completed by it carries
            in :attr:`Prediction.extra` (e.g. BRAND's ``sync``), a dict or a function that makes it
            (called only for the entries that complete a chunk); empty: nothing to pass through. The
            decoder advances along these watermarks: a batch of entries whose watermark moved a bin at
            a time decodes as entry by entry would (its spike-free stretches are data, not gaps).
        bins_invalid: bad (bin, channel) counts dropped when the batch was made from bins.
        distinct: every event is a spike of its own, even one with the unit and time of another (LSL
            delivers each sample once; a sender that stamps a whole push with one time, as the
            neural-data-simulator does, sends two spikes of one electrode with one stamp). False: such
            an event is a re-sent one, dropped and counted as ``spikes_duplicate``.
    """

    channels: np.ndarray
    times: np.ndarray
    watermark: float | None
    labels: tuple[np.ndarray, np.ndarray] | None = None
    start: float | None = None  # earliest time covered (a binned source's first bin start): anchors the chunk grid
    marks: list[tuple[float, Any]] = field(default_factory=list)
    bins_invalid: int = 0
    distinct: bool = False

    @classmethod
    def empty(cls, watermark: float | None = None) -> "SpikeBatch":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), watermark)

    @classmethod
    def from_bins(
        cls,
        counts: np.ndarray,
        bin_starts: np.ndarray,
        bin_width: float,
        *,
        watermark: float | None = None,
        span_starts: np.ndarray | None = None,
        max_count: float = MAX_COUNT,
    ) -> "SpikeBatch":
        """Binned counts as events (:func:`~possm_plugin.realtime.binned_events.binned_to_events`).

        Args:
            counts: (T, C) counts; bin_starts: (T,) bin starts; bin_width: seconds.
            watermark: default: the last bin's end.
            span_starts, max_count: see :func:`~possm_plugin.realtime.binned_events.binned_to_events`.

        The batch's ``start`` is the first bin's start (the chunk grid is anchored on bin edges, not on
        the first spike) and ``bins_invalid`` the bad counts dropped.
        """
        ch, times, n_bad = binned_to_events(counts, bin_starts, bin_width, span_starts=span_starts, max_count=max_count)
        starts = np.asarray(bin_starts, dtype=np.float64).reshape(-1)
        if not len(starts):
            return cls.empty(watermark)
        if watermark is None:
            watermark = float(starts[-1] + bin_width)
        return cls(ch, times, watermark, start=float(starts[0]), bins_invalid=n_bad)

    def __len__(self) -> int:
        return len(self.times)


@dataclass
class Prediction:
    """One decoded chunk.

    Attributes:
        values: (C,) float32 predictions in physical units (e.g. cm/s) or class scores.
        t_start, t_end: the chunk's span on the source clock; sinks stamp samples with ``t_end``.
        chunk_index: index of the chunk since the stream's grid was anchored.
        stream: which stream (when several are batched through one model).
        compute_ms: model compute time of the step that produced it.
        n_spikes: spikes in the chunk.
        extra: pass-through of the input entry that completed the chunk (e.g. BRAND's ``sync``),
            filled by :meth:`~possm_plugin.realtime.streaming.StreamingDecoder.decode` from
            :attr:`SpikeBatch.marks`; sinks that can (Redis) write it along.
    """

    values: np.ndarray
    t_start: float
    t_end: float
    chunk_index: int
    stream: int = 0
    compute_ms: float = 0.0
    n_spikes: int = 0
    extra: dict = field(default_factory=dict)


class SpikeSource(abc.ABC):
    """Base class of spike sources. Subclasses implement the three private steps."""

    #: the name users pass to ``possm-lsl --source NAME``
    name: str = "source"

    def __init__(self) -> None:
        self._connected = False
        self.unit_ids: list[str] = []
        self.lost = False  # True while the source is gone; the decoder loop resets the decoder when it returns

    def now(self) -> float | None:
        """The current time on the clock of the delivered timestamps, if the source can tell."""
        return None

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self, timeout: float | None = None) -> "SpikeSource":
        self._connect(timeout)
        self._connected = True
        return self

    def acquire(self, timeout: float = 0.0) -> SpikeBatch:
        """Events since the last call (waits up to ``timeout`` seconds for some)."""
        if not self._connected:
            raise RuntimeError(f"{type(self).__name__} is not connected; call connect() first")
        return self._acquire(timeout)

    def disconnect(self) -> None:
        if self._connected:
            self._disconnect()
        self._connected = False

    def __enter__(self) -> "SpikeSource":
        if not self._connected:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    @abc.abstractmethod
    def _connect(self, timeout: float | None) -> None: ...

    @abc.abstractmethod
    def _acquire(self, timeout: float) -> SpikeBatch: ...

    @abc.abstractmethod
    def _disconnect(self) -> None: ...


class PredictionSink(abc.ABC):
    """Base class of prediction sinks."""

    name: str = "sink"

    def __init__(self) -> None:
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self, *, output_names: list[str], chunk_step: float) -> "PredictionSink":
        self._connect(output_names, chunk_step)
        self._connected = True
        return self

    def publish(self, predictions: list[Prediction]) -> None:
        if predictions:
            self._publish(predictions)

    def disconnect(self) -> None:
        if self._connected:
            self._disconnect()
        self._connected = False

    def __enter__(self) -> "PredictionSink":
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    @abc.abstractmethod
    def _connect(self, output_names: list[str], chunk_step: float) -> None: ...

    @abc.abstractmethod
    def _publish(self, predictions: list[Prediction]) -> None: ...

    @abc.abstractmethod
    def _disconnect(self) -> None: ...
