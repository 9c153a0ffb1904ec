"""POSSM in Timeflux: a node class for YAML graphs (``module: possm_plugin.integrations.timeflux``,
``class: PossmDecoder``).

Input port ``i``: a DataFrame indexed by time (Timeflux's ``datetime64`` index, or float seconds),

- ``input: binned_counts`` (default): one column per channel, one row per bin, counts; the index
  marks each bin's end (``bin_stamp: end``, as POSSM's LSL streams stamp bins) or start
  (``bin_stamp: start``, as Timeflux's ``Random`` node spaces its rows). The bin width is
  ``bin_width``, else ``1 / meta["rate"]``, else the spacing of the rows. Columns named with unit
  ids the model knows give the channel order; otherwise ``unit_ids`` (or the session's units) do;
- ``input: spike_events``: one row per spike, the channel index in column ``channel_column`` (the
  first column if there is no such column), the spike time in the index.

Output port ``o``: a DataFrame of predictions, one row per decoded chunk, indexed by the chunk's
end (same clock and index type as the input), one column per output (``vx``, ``vy``), with
``meta = {"rate": 1 / chunk_step}``. Nothing is set when no chunk completed.

Example graph (see examples/timeflux/possm.yaml)::

    - id: decoder
      module: possm_plugin.integrations.timeflux
      class: PossmDecoder
      params:
        checkpoint: model.yaml
        bin_stamp: start
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

try:
    import pandas as pd
    from timeflux.core.node import Node
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"possm_plugin.integrations.timeflux needs timeflux and pandas ({exc}); "
        "install them with `pip install --no-deps timeflux==0.17.2 && pip install possm-plugin[timeflux]`"
    ) from exc

from possm_plugin.errors import ConfigError, DataError
from possm_plugin.plugins.decoder_node import BINNED_COUNTS, SPIKE_EVENTS, PossmDecoderNode

__all__ = ["PossmDecoder"]


def _is_datetime(index: pd.Index) -> bool:
    return isinstance(index, pd.DatetimeIndex) or np.issubdtype(np.asarray(index).dtype, np.datetime64)


def _ns(index: pd.Index) -> np.ndarray:
    return np.asarray(index.values).astype("datetime64[ns]").astype(np.int64)


class PossmDecoder(Node):
    """Decode spikes with POSSM.

    Args:
        checkpoint: checkpoint path (None: the one bundled with possm-plugin).
        session: session to decode as (None: the checkpoint's default).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        unit_ids: unit id of each input channel (None: the column names if the model knows them,
            else the session's units).
        input: ``binned_counts`` or ``spike_events``.
        bin_width: bin width in seconds (binned counts; None: ``meta["rate"]`` or the row spacing).
        bin_stamp: ``end`` or ``start``: which edge of its bin a row's time marks.
        channel_column: spike events: the column holding the channel index.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        session: str | None = None,
        device: str = "cpu",
        unit_ids: Sequence[str] | None = None,
        input: str = BINNED_COUNTS,
        bin_width: float | None = None,
        bin_stamp: str = "end",
        channel_column: str = "channel",
    ) -> None:
        if input not in (BINNED_COUNTS, SPIKE_EVENTS):
            raise ConfigError(f"PossmDecoder input={input!r} must be {BINNED_COUNTS!r} or {SPIKE_EVENTS!r}")
        self._params = dict(checkpoint=checkpoint or None, session=session, device=device, bin_stamp=bin_stamp, bin_width=bin_width)
        self._unit_ids = None if unit_ids is None else [str(u) for u in unit_ids]
        self._input = input
        self._channel_column = channel_column
        self._columns: list[str] | None = None
        self._origin_ns: int | None = None
        # load now: Timeflux builds every node before its scheduler starts, so loading never stalls a cycle
        self.node: PossmDecoderNode = PossmDecoderNode(unit_ids=self._unit_ids, **self._params)

    def _node_for(self, columns: list[str]) -> PossmDecoderNode:
        """The node for binned data with these columns; a new one (fresh state) when they change."""
        if columns == self._columns:
            return self.node
        node = self.node
        if self._unit_ids is None and columns != node.unit_ids and not node.unknown_units(columns):
            unit_ids = columns  # the columns are unit ids the model knows: they give the channel order
        elif len(columns) != len(node.unit_ids):
            raise DataError(
                f"the input has {len(columns)} columns but the decoder expects {len(node.unit_ids)} "
                f"(session {node.session!r}); name the columns with unit ids or pass unit_ids"
            )
        else:
            unit_ids = node.unit_ids
        if self._columns is not None or unit_ids != node.unit_ids:
            if self._columns is not None:
                self.logger.info("input columns changed: the decoder state is reset")
            node.close()
            self.node = PossmDecoderNode(unit_ids=unit_ids, **self._params)
        self._columns = columns
        self.logger.info("POSSM: session %r, %d channels -> %s", self.node.session, len(self.node.unit_ids), self.node.output_names)
        return self.node

    def _times(self, index: pd.Index) -> np.ndarray:
        """Seconds on the decoder's clock. A datetime index (Unix epoch) is counted from a whole
        second near its first sample, in integer nanoseconds, so that float64 keeps sub-microsecond
        precision and the chunk grid stays exact."""
        if _is_datetime(index):
            ns = _ns(index)
            if self._origin_ns is None:
                self._origin_ns = int(ns[0] // 1_000_000_000 * 1_000_000_000)
            return (ns - self._origin_ns) / 1e9
        try:
            return np.asarray(index, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"POSSM needs a time index (datetime64 or seconds), got {index.dtype}") from None

    def _index(self, seconds: np.ndarray) -> pd.Index:
        if self._origin_ns is None:
            return pd.Index(np.asarray(seconds, dtype=np.float64))
        ns = self._origin_ns + np.round(np.asarray(seconds) * 1e9).astype(np.int64)
        return pd.DatetimeIndex(ns.astype("datetime64[ns]").astype("datetime64[us]"))

    def update(self) -> None:
        if not self.i.ready():
            return
        df = self.i.data
        times = self._times(df.index)
        if self._input == BINNED_COUNTS:
            node = self._node_for([str(c) for c in df.columns])
            rate = (self.i.meta or {}).get("rate")
            width = None if node.bin_width is not None or not rate else 1.0 / float(rate)
            preds = node.process_binned(df.to_numpy(), times, bin_width=width)
        else:
            col = df[self._channel_column] if self._channel_column in df.columns else df.iloc[:, 0]
            preds = self.node.process_events(col.to_numpy(), times)
        if preds:
            node = self.node
            self.o.data = pd.DataFrame(
                np.stack([p.values for p in preds]).astype(np.float32),
                index=self._index(np.array([p.t_end for p in preds])),
                columns=node.output_names,
            )
            self.o.meta = {"rate": 1.0 / node.chunk_step}

    def terminate(self) -> None:
        self.node.close()
