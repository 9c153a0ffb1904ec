"""The POSSM decoder node: what a host instantiates to decode spikes, found through the
``possm_register_decoder_nodes`` hook as ``"possm"``.

A node wraps one :class:`possm_plugin.realtime.streaming.StreamingDecoder` and speaks only numbers: it
declares its ports (``inputs``, ``outputs``), takes spike events or binned counts, and returns the
predictions of every chunk that the input completed. It never reaches into the decoder; host
integrations (:mod:`possm_plugin.integrations`) wrap the node in turn.

Shape letters: S events, T bins, C channels (input units), P predictions, O outputs.

Binned counts become events by :func:`possm_plugin.realtime.binned_events.binned_to_events` (spread evenly
inside each bin; bad counts dropped and counted in ``stats["bins_invalid"]``), the conversion every
live path and the training importer share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from possm_plugin.errors import ConfigError, DataError, PossmError, UnknownUnitError
from possm_plugin.plugins.markers import hookimpl
from possm_plugin.realtime.binned_events import binned_to_events  # noqa: F401  (re-exported: hosts import it from here)
from possm_plugin.realtime.io import Prediction, SpikeBatch

__all__ = ["Port", "PossmDecoderNode", "binned_to_events", "possm_register_decoder_nodes"]

SPIKE_EVENTS = "spike_events"
BINNED_COUNTS = "binned_counts"
PREDICTIONS = "predictions"


@dataclass(frozen=True)
class Port:
    """A port description.

    Attributes:
        name: the port's name (``spikes``, ``counts``, ``predictions``).
        kind: ``spike_events``, ``binned_counts`` or ``predictions``.
        channels: channel labels, in channel order (unit ids in, output names out).
        rate: samples per second; None for an irregular stream (spike events).
        description: one line for people.
    """

    name: str
    kind: str
    channels: tuple[str, ...]
    rate: float | None
    description: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class PossmDecoderNode:
    """A running POSSM decoder with declared inputs and outputs.

    Args:
        checkpoint: a checkpoint path (``.yaml``/``.safetensors``/stem/directory); None: the
            checkpoint bundled with the package.
        session: the session to decode as (default: the checkpoint's default session).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        unit_ids: the unit id of each input channel, in channel order (default: the session's).
        bin_width: width of the bins given to :meth:`process_binned` (seconds); default: inferred
            from the spacing of the bin times.
        bin_stamp: whether bin times mark each bin's ``"end"`` (default: the moment its counts are
            complete, as LSL and BRAND stamp them) or its ``"start"``.
        model: an already loaded :class:`possm_plugin.model.possm.POSSM` instead of ``checkpoint``.
        **decoder_options: passed to :class:`~possm_plugin.realtime.streaming.StreamingDecoder` (``t0``,
            ``max_gap``, ``max_future``, ``max_tokens``).

    Raises:
        CheckpointError: the checkpoint is missing or invalid.
        ConfigError, UnknownUnitError: bad session, unit ids or options.
    """

    #: the name hosts find this node under
    name = "possm"

    def __init__(
        self,
        checkpoint: str | None = None,
        session: str | None = None,
        device: str = "cpu",
        unit_ids: Sequence[str] | None = None,
        *,
        bin_width: float | None = None,
        bin_stamp: str = "end",
        model=None,
        **decoder_options,
    ) -> None:
        from possm_plugin.realtime.streaming import StreamingDecoder

        if bin_stamp not in ("start", "end"):
            raise ConfigError(f"bin_stamp={bin_stamp!r} must be 'start' or 'end'")
        if bin_width is not None and not (isinstance(bin_width, (int, float)) and math.isfinite(bin_width) and bin_width > 0):
            raise ConfigError(f"bin_width={bin_width!r} must be a positive number of seconds (or None to infer it)")
        unknown = set(decoder_options) - {"t0", "max_gap", "max_future", "max_tokens", "max_latency_samples"}
        if unknown:
            raise ConfigError(f"PossmDecoderNode got unknown option(s) {sorted(unknown)}")
        common = dict(session=session, unit_ids=None if unit_ids is None else list(unit_ids), device=device, **decoder_options)
        if model is not None:
            if checkpoint is not None:
                raise ConfigError("pass either checkpoint or model, not both")
            self.decoder = StreamingDecoder(model, **common)
        else:
            self.decoder = StreamingDecoder.from_checkpoint(checkpoint, **common)
        self.checkpoint = checkpoint
        self.bin_width = None if bin_width is None else float(bin_width)
        self.bin_stamp = bin_stamp
        self._closed = False
        self._bins_in = 0
        self._bins_invalid = 0
        self._last_width: float | None = None
        self._final_stats: dict | None = None
        dec = self.decoder
        units = tuple(dec.unit_ids)
        self.session: str = dec.session
        self.unit_ids: list[str] = list(units)
        self.output_names: list[str] = list(dec.output_names)
        self.chunk_width: float = dec.chunk_width
        self.chunk_step: float = dec.chunk_step
        self.inputs: list[Port] = [
            Port("spikes", SPIKE_EVENTS, units, None, "spike events: channel index into `channels`, time in seconds"),
            Port("counts", BINNED_COUNTS, units, None if self.bin_width is None else 1.0 / self.bin_width,
                 "binned spike counts (T, C), one column per channel"),
        ]
        self.outputs: list[Port] = [
            Port(PREDICTIONS, PREDICTIONS, tuple(dec.output_names), 1.0 / dec.chunk_step,
                 f"one prediction per {dec.chunk_step * 1e3:g} ms chunk, stamped with the chunk's end"),
        ]

    @classmethod
    def for_channels(cls, labels: Sequence[str] | None, *, unit_ids: Sequence[str] | None = None, **params) -> PossmDecoderNode:
        """A node for a binned stream whose channels carry ``labels``.

        The labels are taken as the unit ids when ``unit_ids`` is None and the model knows every
        label (LSL streams label channels with unit ids); otherwise ``unit_ids`` (default: the
        session's units) are used, and there must be as many as there are labels.
        """
        if unit_ids is None and labels:
            try:
                return cls(unit_ids=[str(x) for x in labels], **params)
            except UnknownUnitError:
                pass
        node = cls(unit_ids=unit_ids, **params)
        if labels is not None and len(labels) != len(node.unit_ids):
            node.close()
            raise DataError(
                f"the stream has {len(labels)} channels but the decoder expects {len(node.unit_ids)} "
                f"(session {node.session!r}); label the channels with unit ids or pass unit_ids"
            )
        return node

    # -- facts ---------------------------------------------------------------------------------
    def unknown_units(self, unit_ids: Sequence[str]) -> list[str]:
        """The ids among ``unit_ids`` that the model does not know (empty: a node could decode them)."""
        self._check_open()
        from possm_plugin.realtime.streaming import StreamingDecoder

        return StreamingDecoder.check_units(self.decoder.model, [str(u) for u in unit_ids])

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> dict:
        """Counters and latency percentiles (see :class:`possm_plugin.realtime.streaming.DecoderStats`)."""
        if self._final_stats is not None:
            return dict(self._final_stats)
        s = self.decoder.stats.summary()
        s["bins_in"] = self._bins_in
        s["bins_invalid"] = self._bins_invalid
        return s

    def describe(self) -> dict:
        """Everything a host may want to show: ports, session, chunking."""
        return {
            "name": self.name,
            "session": self.session,
            "chunk_width": self.chunk_width,
            "chunk_step": self.chunk_step,
            "inputs": [p.to_dict() for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
        }

    # -- processing ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise PossmError("this PossmDecoderNode is closed; create a new one")

    def process_events(self, channels, times, watermark: float | None = None) -> list[Prediction]:
        """Push spike events and decode every chunk that ``watermark`` completes.

        Args:
            channels: (S,) channel indices into ``inputs[0].channels``.
            times: (S,) event times in seconds, on one clock.
            watermark: the time up to which every event has been given; None: the latest event
                time seen (right for a source that delivers events in time order).

        Returns:
            the predictions of the completed chunks, oldest first (often empty).
        """
        self._check_open()
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if watermark is None:
            finite = times[np.isfinite(times)]
            watermark = float(finite.max()) if len(finite) else None
        return self.decoder.decode(SpikeBatch(channels, times, watermark))

    def process_binned(self, counts, bin_times, *, bin_width: float | None = None) -> list[Prediction]:
        """Spread binned counts into events (evenly inside each bin) and decode every chunk that the
        last bin's end completes.

        Args:
            counts: (T, C) spike counts, one column per input channel.
            bin_times: (T,) times of the bins: their ends (or their starts with ``bin_stamp="start"``).
            bin_width: bin width in seconds; default: the node's, else the spacing of ``bin_times``,
                else the width seen last.

        Returns:
            the predictions of the completed chunks, oldest first.
        """
        self._check_open()
        c = np.asarray(counts)
        if c.ndim == 1:
            c = c.reshape(1, -1)
        if c.ndim != 2 or c.shape[1] != self.decoder.n_channels:
            raise DataError(
                f"binned counts must be (T, {self.decoder.n_channels}) (one column per input channel), got shape {np.shape(counts)}"
            )
        t = np.asarray(bin_times, dtype=np.float64).reshape(-1)
        if len(t) != c.shape[0]:
            raise DataError(f"got {c.shape[0]} bins of counts but {len(t)} bin times; pass one time per bin")
        if not len(t):
            return []
        width = self._bin_width(t, bin_width)
        batch = SpikeBatch.from_bins(c, t - width if self.bin_stamp == "end" else t, width)
        self._bins_in += len(t)
        self._bins_invalid += batch.bins_invalid
        return self.decoder.decode(batch)

    def _bin_width(self, t: np.ndarray, given: float | None) -> float:
        width = given if given is not None else self.bin_width
        if width is None and len(t) > 1:
            d = np.diff(t)
            d = d[np.isfinite(d) & (d > 0)]
            if len(d):
                width = float(np.median(d))
        if width is None:
            width = self._last_width
        if width is None or not (math.isfinite(width) and width > 0):
            raise DataError(
                "cannot tell the bin width from a single bin; pass bin_width= to process_binned or to the node"
            )
        self._last_width = float(width)
        return float(width)

    # -- lifecycle ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the recurrent state and buffered events; the chunk grid re-anchors on the next input."""
        self._check_open()
        self.decoder.reset()

    def close(self) -> None:
        """Release the decoder and its model (idempotent); a closed node refuses input and keeps
        its final ``stats``."""
        if not self._closed:
            self._final_stats = self.stats
            self._closed = True
            self.decoder = None

    def __enter__(self) -> PossmDecoderNode:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"session={self.session!r}, {len(self.unit_ids)} channels -> {self.output_names}"
        return f"PossmDecoderNode({state})"


@hookimpl
def possm_register_decoder_nodes(register):
    register("possm", PossmDecoderNode, description="POSSM streaming decoder (spike events or binned counts -> predictions)")
