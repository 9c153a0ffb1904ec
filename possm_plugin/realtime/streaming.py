"""The streaming decoder: owns a POSSM and its recurrent state, turns spike events into one
prediction per chunk, and never reprocesses the past.

It knows nothing of I/O: adapters push events (channel index, time) and advance a watermark (the
time up to which a stream is complete); every chunk whose end the watermark has passed is tokenized
with the same code as training (:func:`possm_plugin.model.tokenize.tokenize`) and decoded with one O(1)
step of an inference engine (:mod:`possm_plugin.engines`, which owns the recurrent state). Several
streams can be decoded in one batched step.

Input: drivers call :meth:`StreamingDecoder.decode` (a :class:`~possm_plugin.realtime.io.SpikeBatch` in,
predictions out); buffering, watermarks, the chunk grid, gaps and the accounting of bad input live in
:mod:`possm_plugin.realtime.chunk_grid` (its docstring has the rules), model, engines and state here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from possm_plugin.errors import ConfigError
from possm_plugin.model.checkpoint import load_checkpoint
from possm_plugin.model.possm import POSSM
from possm_plugin.model.tokenize import chunk_end, tokenize, tokenize_one
from possm_plugin.realtime import unit_map
from possm_plugin.realtime.chunk_grid import MAX_ABS_TIME, ChunkGrid, DecoderStats, _Stream
from possm_plugin.realtime.io import Prediction

__all__ = ["MAX_ABS_TIME", "DecoderStats", "StreamingDecoder"]

log = logging.getLogger("possm_plugin.realtime.streaming")


class StreamingDecoder(ChunkGrid):
    """Decode spike streams chunk by chunk.

    Drivers call :meth:`decode` with a :class:`~possm_plugin.realtime.io.SpikeBatch` (spike events, or binned
    counts through :meth:`SpikeBatch.from_bins`) and get the predictions of every chunk its watermark
    completes; :meth:`warmup` once before a live loop. Unit ids and the session are resolved by
    :mod:`possm_plugin.realtime.unit_map`.

    Args:
        model: a POSSM (moved to ``device`` and put in eval mode).
        session: a session id the model knows (its embedding is used as the output query); default:
            the checkpoint's default session, else the model's first.
        unit_ids: the unit id of each input channel, in channel order; default: the session's units.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        n_streams: independent streams decoded in one batched step (same channels and session).
        t0: start of the chunk grid (source clock); default: the first event's or watermark's time.
        max_gap: seconds of missing watermark after which a stream is reset and re-anchored.
        max_future: events later than the watermark by more than this are dropped.
        max_tokens: spikes kept per chunk (default: the model's ``max_tokens_per_chunk``).
        max_latency_samples: latency samples kept (a ring of the most recent).
        default_session: the session used when ``session`` is None (checkpoints name one).
        fast: decode with folded tables (exact same outputs as ``model.step`` up to float rounding);
            False: with ``model.step`` itself (``engine="reference"``). Call :meth:`refresh` after
            changing the model's weights.
        engine: which engine decodes (see :mod:`possm_plugin.engines`): ``"auto"`` (default: on the
            CPU, for the built-in backbones, ``"numba"``, otherwise ``"torch"``), ``"numba"``
            (:class:`~possm_plugin.engines.numba_step.NumbaEngine`: compiled, the fastest on a CPU
            at every stream count measured), ``"torch"``
            (:class:`~possm_plugin.engines.torch_step.TorchEngine`: any device, any backbone) or
            ``"reference"`` (``model.step``).
        prewarm: seconds (e.g. 0.002): once a stream's watermark is within this much of its next
            chunk's end, :meth:`advance` runs one throwaway step (a blank chunk on a copy of the state;
            outputs, state and counters untouched) so that the real step a moment later finds its
            code and weights in the CPU caches. A live decoder is idle for most of each 50 ms chunk and
            other work evicts them: on a shared 2-core machine this halves the step's p50. Costs one
            extra step per chunk (counted in ``stats.prewarms``). None: off.
    """

    def __init__(
        self,
        model: POSSM,
        *,
        session: str | None = None,
        unit_ids: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        n_streams: int = 1,
        t0: float | None = None,
        max_gap: float = 1.0,
        max_future: float = 5.0,
        max_tokens: int | None = None,
        max_latency_samples: int = 100_000,
        default_session: str | None = None,
        fast: bool = True,
        engine: str = "auto",
        prewarm: float | None = None,
    ) -> None:
        if n_streams < 1:
            raise ConfigError(f"n_streams must be >= 1, got {n_streams}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={str(device)!r} asked for CUDA but torch sees no GPU; use --device cpu")
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.chunk_width, self.chunk_step = float(cfg.chunk_width), float(cfg.chunk_step)
        self.output_names = list(cfg.output_names) if cfg.readout == "regression" else [f"class{i}" for i in range(cfg.output_dim)]
        self.max_gap, self.max_future = float(max_gap), float(max_future)
        self.max_tokens = int(max_tokens or cfg.max_tokens_per_chunk)
        self._max_lat = int(max_latency_samples)
        session = session or unit_map.default_session(model, default_session)
        self.session = session
        session_row = int(model.session_vocab.index(session))
        if unit_ids is None:
            unit_ids = unit_map.session_units(model, session, hint="pass unit_ids")
        self.unit_ids = list(unit_ids)
        self._channel_rows = torch.as_tensor(model.unit_vocab.lookup(self.unit_ids))  # raises UnknownUnitError
        self._channel_rows_np = self._channel_rows.numpy()
        self._session = torch.full((n_streams,), session_row, dtype=torch.long, device=self.device)
        self._t0 = t0
        self.streams = [_Stream(session_row) for _ in range(n_streams)]
        self.stats = DecoderStats()
        self._warned: dict[str, float] = {}
        if prewarm is not None and not (isinstance(prewarm, (int, float)) and 0 < prewarm < self.chunk_step):
            raise ConfigError(f"prewarm={prewarm!r} must be None or seconds in (0, chunk_step={self.chunk_step:g})")
        self.prewarm = None if prewarm is None else float(prewarm)
        self._prewarmed: dict[int, int] = {}  # stream -> the chunk index prewarmed for
        self.fast = fast
        self._engine_choice = engine if fast else "reference"
        self._engine = None
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the inference engine from the model's current weights (the streams' state is kept)."""
        from possm_plugin.engines import build_engine

        cfg = self.model.config
        scale = float(cfg.target_scale) if cfg.readout == "regression" else 1.0
        old = self._engine
        self._engine = build_engine(self.model, engine=self._engine_choice, device=self.device,
                                    sessions=[st.session_row for st in self.streams], output_scale=scale)
        if old is not None:
            self._engine.load_state(old.state)
        self.engine = self._engine.name

    @property
    def state(self) -> tuple:
        """The streams' recurrent state as :meth:`POSSM.initial_state` lays it out (the engine's own
        arrays, NumPy or torch: read them, do not keep them across chunks)."""
        return self._engine.state

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path=None, **kwargs) -> "StreamingDecoder":
        """Load a checkpoint (None: the bundled default) and wrap it."""
        model, doc = load_checkpoint(path)
        kwargs.setdefault("default_session", doc.get("default_session"))
        dec = cls(model, **kwargs)
        dec.checkpoint_doc = doc
        return dec

    @staticmethod
    def check_units(model: POSSM, unit_ids: Sequence[str]) -> list[str]:
        """The ids among ``unit_ids`` that ``model`` does not know (empty if all are known)."""
        return unit_map.unknown_units(model, unit_ids)

    @property
    def n_channels(self) -> int:
        return len(self.unit_ids)

    # -- state -----------------------------------------------------------------------------
    def reset(self, stream: int | None = None) -> None:
        """Forget the recurrent state and buffered events of one stream (or all); the grid is
        re-anchored at the next event or watermark."""
        idx = range(self.n_streams) if stream is None else [stream]
        for i in idx:
            self._engine.reset(i)
            st = self.streams[i]
            self.stats.spikes_skipped += len(st.times)
            self.streams[i] = _Stream(st.session_row)
        self.stats.resets += 1

    def warmup(self, steps: int = 5) -> None:
        """Run ``steps`` throwaway steps of the decoding engine (a blank chunk on a copy of stream 0's
        state; outputs, state and counters untouched) so that the first real chunks find the engine's
        code compiled and its weights in the caches. Drivers call it once before their loop."""
        n = self.stats.prewarms
        for _ in range(max(0, int(steps))):
            self._throwaway_step(0)
        self.stats.prewarms = n

    def _throwaway_step(self, s: int) -> None:
        self._engine.warm(s)
        self.stats.prewarms += 1

    def _reset_state(self, s: int) -> None:
        self._engine.reset(s)
        self.stats.resets += 1

    def _decode(self, streams: list[int]) -> list[Prediction]:
        """Decode the next chunk of each stream in ``streams`` in one batched step."""
        chunks, spans = [], []
        for s in streams:
            st = self.streams[s]
            start = st.t0 + st.next_chunk * self.chunk_step
            nxt = st.t0 + (st.next_chunk + 1) * self.chunk_step  # the next chunk's start, as the grid computes it
            end = chunk_end(start, self.chunk_width, nxt)  # tiling chunks end at the next start
            c = tokenize_one(st.rows, st.times, start=start, end=end, max_tokens=self.max_tokens)
            count, dropped = c[3], c[4]
            if dropped:
                self.stats.chunks_oversized += 1
                self.stats.spikes_truncated += dropped
                self._warn("oversize", "chunk with %d spikes truncated to %d", count + dropped, self.max_tokens)
            lo = np.searchsorted(st.times, nxt, side="left")
            st.rows, st.times = st.rows[lo:], st.times[lo:]
            chunks.append(c)
            spans.append((s, st.next_chunk, start, end, count))
            st.next_chunk += 1
        b = len(streams)
        if b == 1:
            units, rel, mask = chunks[0][:3]
        else:
            width = max(c[0].shape[1] for c in chunks)
            units = np.zeros((b, width), np.int64)
            rel = np.zeros((b, width), np.float32)
            mask = np.zeros((b, width), bool)
            for i, c in enumerate(chunks):
                w = c[0].shape[1]
                units[i, :w], rel[i, :w], mask[i, :w] = c[0][0], c[1][0], c[2][0]
        t_start = time.perf_counter()
        values = self._engine.step(units, rel, mask, None if len(streams) == self.n_streams else streams)
        ms = (time.perf_counter() - t_start) * 1e3
        self._record(self.stats.compute_ms, ms)
        self.stats.chunks_decoded += b
        preds = []
        for i, (s, k, start, end, n_sp) in enumerate(spans):
            self.stats.spikes_decoded += n_sp
            preds.append(Prediction(values=values[i], t_start=start, t_end=end, chunk_index=k, stream=s, compute_ms=ms, n_spikes=n_sp))
        return preds


    # -- offline twin ------------------------------------------------------------------------
    def decode_offline(self, channels: np.ndarray, times: np.ndarray, *, t0: float, n_chunks: int) -> np.ndarray:
        """The batched forward on the same spikes and grid (for checking streaming == offline).
        Returns (n_chunks, C) in the same units as :class:`Prediction` values."""
        from possm_plugin.model.tokenize import chunk_starts, collate

        ch = np.asarray(channels, dtype=np.int64)
        rows = self._channel_rows_np[ch]
        c = tokenize(rows, np.asarray(times, np.float64), starts=chunk_starts(t0, n_chunks, self.chunk_step), width=self.chunk_width,
                     max_tokens=self.max_tokens, next_start=t0 + n_chunks * self.chunk_step)
        bt = collate([c], device=self.device)
        with torch.inference_mode():
            out, _ = self.model(bt["units"], bt["times"], bt["mask"], self._session[:1])
        out = out[0]
        if self.model.config.readout == "regression":
            out = out * self.model.config.target_scale
        return out.float().cpu().numpy()
