"""POSSM in ezmsg: a stateful transformer and its unit, usable in any ezmsg graph (e.g. after
ezmsg-lsl's ``LSLInletUnit`` and before its ``LSLOutletUnit``).

Input: :class:`~ezmsg.util.messages.axisarray.AxisArray` messages with a ``time`` dimension, either

- **binned counts** (the time axis is a ``LinearAxis``, i.e. a regular stream): data (T, C), one
  column per channel, ``gain`` the bin width; samples are stamped with their bin's end by default
  (``bin_stamp``), as POSSM's LSL streams are. When the ``ch`` axis labels are unit ids the model
  knows, they give the channel order; otherwise ``unit_ids`` (or the session's units) do;
- **spike events** (the time axis is a ``CoordinateAxis``, an irregular stream): data (S,) or
  (S, K), one row per spike, the channel index in column ``channel_column`` (``[channel, unit, ...]``
  as POSSM's and the neural-data-simulator's LSL event streams lay it out), the spike times in the
  time axis. The latest spike time of a message is its watermark.

Output: one message per input message that completed chunks, data (P, O) float32 predictions,
dims ``["time", "ch"]``, ``time`` a ``LinearAxis`` (gain = chunk step, offset = the first
prediction's chunk end), ``ch`` the output names (e.g. ``vx``, ``vy``). Nothing is published for an
input that completes no chunk.

The decoder state is reset (a new :class:`~possm_plugin.plugins.decoder_node.PossmDecoderNode`)
when the input's key, channels or rate change, as every ezmsg-baseproc stateful processor does.

Example::

    import ezmsg.core as ez
    from ezmsg.lsl.units import LSLInletSettings, LSLInletUnit, LSLInfo, LSLOutletSettings, LSLOutletUnit
    from possm_plugin.integrations.ezmsg import PossmDecoderSettings, PossmDecoderUnit

    comps = {
        "INLET": LSLInletUnit(LSLInletSettings(info=LSLInfo(name="spikes"))),
        "POSSM": PossmDecoderUnit(PossmDecoderSettings(checkpoint="model.yaml")),
        "OUTLET": LSLOutletUnit(LSLOutletSettings(stream_name="possm", stream_type="Control")),
    }
    ez.run(components=comps, connections=(
        (comps["INLET"].OUTPUT_SIGNAL, comps["POSSM"].INPUT_SIGNAL),
        (comps["POSSM"].OUTPUT_SIGNAL, comps["OUTLET"].INPUT_SIGNAL),
    ))
"""

from __future__ import annotations

import numpy as np

try:
    import ezmsg.core as ez
    from ezmsg.baseproc import BaseStatefulTransformer, BaseTransformerUnit, processor_state
    from ezmsg.util.messages.axisarray import AxisArray
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"possm_plugin.integrations.ezmsg needs ezmsg and ezmsg-baseproc ({exc}); "
        "install them with `pip install possm-plugin[ezmsg]`"
    ) from exc

from possm_plugin.errors import ConfigError, DataError
from possm_plugin.plugins.decoder_node import BINNED_COUNTS, SPIKE_EVENTS, PossmDecoderNode

__all__ = ["PossmDecoderSettings", "PossmDecoderState", "PossmDecoderTransformer", "PossmDecoderUnit"]

_KINDS = ("auto", SPIKE_EVENTS, BINNED_COUNTS)


class PossmDecoderSettings(ez.Settings):
    """Settings of :class:`PossmDecoderUnit` (the node's parameters, see
    :class:`~possm_plugin.plugins.decoder_node.PossmDecoderNode`)."""

    checkpoint: str | None = None
    """Checkpoint path (None: the checkpoint bundled with possm-plugin)."""
    session: str | None = None
    """Session to decode as (None: the checkpoint's default)."""
    device: str = "cpu"
    unit_ids: tuple[str, ...] | None = None
    """Unit id of each input channel (None: the ``ch`` labels if the model knows them, else the session's units)."""
    input_kind: str = "auto"
    """``auto`` (regular stream: binned counts; irregular: spike events), ``spike_events`` or ``binned_counts``."""
    bin_stamp: str = "end"
    """Whether a binned sample's time marks its bin's ``end`` or ``start``."""
    channel_column: int = 0
    """Spike events: the column of the data holding the channel index."""
    output_key: str = "possm"
    """Key of the published messages."""


@processor_state
class PossmDecoderState:
    node: PossmDecoderNode | None = None
    kind: str | None = None
    template: AxisArray | None = None


def _labels(message: AxisArray) -> list[str] | None:
    ax = message.axes.get("ch")
    data = getattr(ax, "data", None)
    if data is None:
        return None
    if data.dtype.names and "label" in data.dtype.names:
        return [str(x) for x in data["label"]]
    return [str(x) for x in data]


class PossmDecoderTransformer(BaseStatefulTransformer[PossmDecoderSettings, AxisArray, AxisArray | None, PossmDecoderState]):
    """AxisArray of spike events or binned counts -> AxisArray of predictions (or None)."""

    def _reset_state(self, message: AxisArray) -> None:
        s = self.settings
        if s.input_kind not in _KINDS:
            raise ConfigError(f"input_kind={s.input_kind!r} must be one of {_KINDS}")
        if "time" not in message.dims:
            raise DataError(f"POSSM needs messages with a 'time' dimension, got dims {message.dims}")
        kind = s.input_kind
        if kind == "auto":
            kind = BINNED_COUNTS if hasattr(message.axes.get("time"), "gain") else SPIKE_EVENTS
        if self._state.node is not None:
            self._state.node.close()
        params = dict(checkpoint=s.checkpoint, session=s.session, device=s.device, bin_stamp=s.bin_stamp)
        unit_ids = None if s.unit_ids is None else list(s.unit_ids)
        if kind == BINNED_COUNTS:
            n_ch = int(np.prod([n for d, n in zip(message.dims, message.data.shape) if d != "time"]))
            labels = _labels(message) or [str(i + 1) for i in range(n_ch)]
            node = PossmDecoderNode.for_channels(labels, unit_ids=unit_ids, **params)
        else:
            node = PossmDecoderNode(unit_ids=unit_ids, **params)
        ez.logger.info("POSSM decoder: %s input, session %r, %d channels -> %s", kind, node.session, len(node.unit_ids), node.output_names)
        self._state.node = node
        self._state.kind = kind
        self._state.template = AxisArray(
            data=np.zeros((0, len(node.output_names)), np.float32),
            dims=["time", "ch"],
            axes={
                "time": AxisArray.LinearAxis(unit="s", gain=node.chunk_step, offset=0.0),
                "ch": AxisArray.CoordinateAxis(np.array(node.output_names), dims=["ch"]),
            },
            key=s.output_key,
            attrs={"session": node.session, "chunk_width": node.chunk_width},
            stream_dim="time",
        )

    def _process(self, message: AxisArray) -> AxisArray | None:
        node = self._state.node
        t_idx = message.get_axis_idx("time")
        data = np.moveaxis(np.asarray(message.data), t_idx, 0)
        time_ax = message.axes["time"]
        if self._state.kind == BINNED_COUNTS:
            if not hasattr(time_ax, "gain"):
                raise DataError("binned counts need a regular time axis (a LinearAxis)")
            counts = data.reshape(data.shape[0], -1)
            times = time_ax.offset + time_ax.gain * np.arange(counts.shape[0])
            preds = node.process_binned(counts, times, bin_width=time_ax.gain)
        else:
            if hasattr(time_ax, "gain"):  # events forced onto a regular axis: one per sample
                times = time_ax.offset + time_ax.gain * np.arange(data.shape[0])
            else:
                times = np.asarray(time_ax.data, dtype=np.float64)
            channels = data if data.ndim == 1 else data.reshape(data.shape[0], -1)[:, self.settings.channel_column]
            preds = node.process_events(channels, times)
        if not preds:
            return None
        tmpl = self._state.template
        values = np.stack([p.values for p in preds]).astype(np.float32, copy=False)
        return AxisArray(
            data=values,
            dims=tmpl.dims,
            axes={**tmpl.axes, "time": AxisArray.LinearAxis(unit="s", gain=node.chunk_step, offset=preds[0].t_end)},
            key=tmpl.key,
            attrs=tmpl.attrs,
            stream_dim="time",
        )

    @property
    def node(self) -> PossmDecoderNode | None:
        """The current decoder node (None before the first message)."""
        return self._state.node

    def close(self) -> None:
        if self._state.node is not None:
            self._state.node.close()


class PossmDecoderUnit(BaseTransformerUnit[PossmDecoderSettings, AxisArray, AxisArray, PossmDecoderTransformer]):
    """ezmsg unit: ``INPUT_SIGNAL`` spike events or binned counts -> ``OUTPUT_SIGNAL`` predictions."""

    SETTINGS = PossmDecoderSettings
