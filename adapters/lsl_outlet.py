"""The LSL prediction sink (outlet): one float32 channel per decoded variable, stamped with the chunk's
end on the inlet's clock, and an optional telemetry outlet. Registered (and importable) through
:mod:`possm_plugin.adapters.lsl`, whose docstring describes the inlet.

Output: :class:`LSLSink` opens an outlet with one float32 channel per decoded variable (labels and
units in ``desc/channels``), nominal rate ``1 / chunk_step``, a stable source_id, and stamps each
sample with its chunk's end time (on the inlet's clock, which is ``local_clock()`` after clock
sync). ``telemetry=True`` adds a second outlet ``<name>-telemetry`` with, per chunk,
``compute_ms`` (the model step), ``publish_ms`` (chunk end -> this push), ``n_spikes`` and
``chunk_index`` (chunks since the grid was anchored), stamped like the prediction.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import numpy as np
import pylsl

from possm_plugin.errors import ConfigError, StreamError
from possm_plugin.realtime.io import Prediction, PredictionSink

__all__ = ["TELEMETRY_CHANNELS", "LSLSink"]

log = logging.getLogger("possm_plugin.adapters.lsl")

TELEMETRY_CHANNELS = (("compute_ms", "ms"), ("publish_ms", "ms"), ("n_spikes", "count"), ("chunk_index", "index"))


# -- sink ---------------------------------------------------------------------------------------------
class LSLSink(PredictionSink):
    """Predictions to an LSL outlet (see the module doc).

    Args:
        name: the outlet's stream name (``possm-lsl --outlet NAME``).
        stype: the stream type.
        source_id: stable unique id, so consumers recover after a restart (default
            ``possm-<name>@<hostname>``).
        units: the physical unit of every output (a string, or one per output separated by commas).
        telemetry: also open ``<name>-telemetry`` (compute_ms, publish_ms, n_spikes, chunk_index).
        telemetry_name: its name, when not ``<name>-telemetry``.
        meta: extra ``desc`` entries (e.g. the checkpoint and session).
    """

    name = "lsl"

    def __init__(
        self,
        name: str = "possm",
        *,
        stype: str = "Prediction",
        source_id: str | None = None,
        units: str | Sequence[str] | None = None,
        telemetry: bool = False,
        telemetry_name: str | None = None,
        meta: dict | None = None,
    ) -> None:
        super().__init__()
        if not name:
            raise ConfigError("the LSL outlet needs a non-empty name (--outlet NAME)")
        self.stream_name = str(name)
        self.stype = stype
        self.source_id = source_id or f"possm-{self.stream_name}@{socket.gethostname()}"
        self.units = units
        self.telemetry = bool(telemetry)
        self.telemetry_name = telemetry_name or f"{self.stream_name}-telemetry"
        self.meta = dict(meta or {})
        self._outlet: pylsl.StreamOutlet | None = None
        self._tele: pylsl.StreamOutlet | None = None
        self.published = 0

    def _units_for(self, n: int) -> list[str]:
        u = self.units
        if u is None:
            return [""] * n
        if isinstance(u, str):
            parts = [p.strip() for p in u.split(",")]
            return parts if len(parts) == n else [u] * n
        u = [str(x) for x in u]
        if len(u) != n:
            raise ConfigError(f"LSL sink units {u} must give one unit per output ({n})")
        return u

    def _connect(self, output_names: list[str], chunk_step: float) -> None:
        rate = 1.0 / float(chunk_step)
        info = pylsl.StreamInfo(self.stream_name, self.stype, len(output_names), rate, "float32", self.source_id)
        chans = info.desc().append_child("channels")
        for label, unit in zip(output_names, self._units_for(len(output_names))):
            ch = chans.append_child("channel")
            ch.append_child_value("label", str(label))
            ch.append_child_value("unit", unit)
            ch.append_child_value("type", "prediction")
        info.desc().append_child_value("timestamps", "chunk end, on the inlet's clock")
        info.desc().append_child_value("chunk_step", repr(float(chunk_step)))
        for k, v in self.meta.items():
            info.desc().append_child_value(str(k), str(v))
        self._outlet = pylsl.StreamOutlet(info, chunk_size=1)
        if self.telemetry:
            t = pylsl.StreamInfo(self.telemetry_name, "Telemetry", len(TELEMETRY_CHANNELS), rate, "float32", self.source_id + "-telemetry")
            tch = t.desc().append_child("channels")
            for label, unit in TELEMETRY_CHANNELS:
                ch = tch.append_child("channel")
                ch.append_child_value("label", label)
                ch.append_child_value("unit", unit)
            self._tele = pylsl.StreamOutlet(t, chunk_size=1)
        log.info("LSL outlet %r (%s, %g Hz, source_id %r)%s", self.stream_name, ", ".join(output_names), rate,
                 self.source_id, f" + telemetry {self.telemetry_name!r}" if self.telemetry else "")

    def _publish(self, predictions: list[Prediction]) -> None:
        out = self._outlet
        if out is None:
            raise StreamError("LSLSink is not connected; call connect() first")
        for p in predictions:
            out.push_sample(np.asarray(p.values, dtype=np.float32), p.t_end)
        self.published += len(predictions)
        if self._tele is not None:
            now = pylsl.local_clock()
            for p in predictions:
                self._tele.push_sample([p.compute_ms, (now - p.t_end) * 1e3, float(p.n_spikes), float(p.chunk_index)], p.t_end)

    def _disconnect(self) -> None:
        self._outlet = None  # liblsl closes the outlet when the object is freed
        self._tele = None


# -- plugin hooks --------------------------------------------------------------------------------------
