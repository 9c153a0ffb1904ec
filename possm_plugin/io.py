"""What every source and sink adapter implements.

A *source* produces spike events: the index of a channel (into ``source.unit_ids``) and a time on the
source's clock, plus a *watermark*, the time up to which the source has delivered everything. Binned
sources turn counts into events inside each bin (spread evenly over the bin, documented per adapter).
A *sink* publishes predictions, each stamped with the end time of the chunk it decodes.

Lifecycle (as in mne-lsl): ``connect()`` -> ``acquire()``... -> ``disconnect()``; sources and sinks
are context managers.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

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
    """

    channels: np.ndarray
    times: np.ndarray
    watermark: float | None
    labels: tuple[np.ndarray, np.ndarray] | None = None
    start: float | None = None  # earliest time covered (a binned source's first bin start): anchors the chunk grid

    @classmethod
    def empty(cls, watermark: float | None = None) -> "SpikeBatch":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), watermark)

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
        extra: adapter-specific pass-through (e.g. BRAND's ``sync`` field).
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
