"""A regular numeric LSL stream read as ``(times, values)``: the behaviour (e.g. the simulator's
velocity) that online calibration fits the readout to (:mod:`possm_plugin.realtime.calibration`)."""

from __future__ import annotations

import numpy as np
import pylsl
from pylsl.util import LostError

from possm_plugin.adapters.lsl_layout import build_predicate, channel_labels, usable_labels
from possm_plugin.errors import StreamError

__all__ = ["LSLSignalInlet"]


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
        self.channel_names = labels if usable_labels(labels, n) else [f"ch{i}" for i in range(n)]
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
