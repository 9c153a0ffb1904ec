"""A POYO-style transformer (Azabou et al., 2023) that re-reads a 1 s window of spike tokens every step.

This is the "re-encode the whole context at every step" design that POSSM replaces with a recurrent
state: to decode chunk ``j`` it tokenizes every spike of the last ``window_s`` seconds (unit
embedding, spike time by RoPE), lets a set of latents (spread over the window, each with its own time)
cross-attend to them, runs ``depth`` rotary self-attention layers over the latents, and reads the
output out of a query at the chunk's end. The cost of one step therefore grows with the window's
spike count, not with one chunk's.

Shape letters: B windows, N tokens per window, L latents, Q output queries, D features, C outputs.
Times inside the model are seconds relative to the window's end (spikes in ``[-window_s, 0)``).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from possm_plugin.baselines.base import BinnedDecoder, Part, train_torch
from possm_plugin.baselines.binning import DEFAULT_STEP, DEFAULT_WIDTH, TrialSubset
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.nn import FeedForward, RotaryCrossAttention, RotaryTimeEmbedding
from possm_plugin.training.metrics import r2_score

__all__ = ["POYO", "POYODecoder", "POYOStream", "window_tokens"]


class POYO(nn.Module):
    """The network: spike tokens of one window -> outputs at query times.

    Args:
        n_units: units (embedding rows 1..n_units; row 0 is the blank/padding token).
        n_outputs: outputs C.
        dim: token / latent features D.
        dim_head: features per attention head (64 as in POYO; half of them rotated).
        self_heads: heads of the latent self-attention.
        cross_heads: heads of the two cross-attentions (spikes -> latents, latents -> outputs).
        depth: latent self-attention layers.
        window_s: seconds of spikes read per step.
        latent_step, latents_per_step: latents sit every ``latent_step`` seconds across the window,
            ``latents_per_step`` of them at each time (``window_s / latent_step * latents_per_step``).
        ffn_mult: GEGLU feed-forward multiple.
        dropout: feed-forward dropout (training only).
        t_min, t_max: rotary periods (seconds).

    The default configuration has about 1.3M parameters with ~100 units.
    """

    def __init__(
        self,
        *,
        n_units: int,
        n_outputs: int = 2,
        dim: int = 128,
        dim_head: int = 64,
        self_heads: int = 2,
        cross_heads: int = 1,
        depth: int = 3,
        window_s: float = 1.0,
        latent_step: float = 0.125,
        latents_per_step: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        t_min: float = 1e-4,
        t_max: float = 10.0,
    ) -> None:
        super().__init__()
        for name, v in (("n_units", n_units), ("n_outputs", n_outputs), ("dim", dim), ("dim_head", dim_head),
                        ("self_heads", self_heads), ("cross_heads", cross_heads), ("latents_per_step", latents_per_step), ("ffn_mult", ffn_mult)):
            if int(v) < 1:
                raise ConfigError(f"POYO: {name} must be >= 1, got {v!r}")
        if depth < 0:
            raise ConfigError(f"POYO: depth must be >= 0, got {depth!r}")
        if not (window_s > 0 and 0 < latent_step <= window_s):
            raise ConfigError(f"POYO: need 0 < latent_step <= window_s, got {latent_step!r}, {window_s!r}")
        if dim_head % 4:
            raise ConfigError(f"POYO: dim_head must be a multiple of 4, got {dim_head}")
        self.config = dict(
            n_units=n_units, n_outputs=n_outputs, dim=dim, dim_head=dim_head, self_heads=self_heads, cross_heads=cross_heads, depth=depth,
            window_s=window_s, latent_step=latent_step, latents_per_step=latents_per_step, ffn_mult=ffn_mult,
            dropout=dropout, t_min=t_min, t_max=t_max,
        )
        self.window_s = float(window_s)
        n_steps = max(1, int(round(window_s / latent_step)))
        self.unit_emb = nn.Embedding(n_units + 1, dim)
        self.latent_emb = nn.Parameter(torch.randn(latents_per_step, dim) * 0.02)
        self.query_emb = nn.Parameter(torch.randn(dim) * 0.02)
        nn.init.normal_(self.unit_emb.weight, std=0.02)
        self.rotary = RotaryTimeEmbedding(head_dim=dim_head, rotate_dim=dim_head // 2, t_min=t_min, t_max=t_max)
        self.enc_atn = RotaryCrossAttention(dim=dim, heads=cross_heads, dim_head=dim_head)
        self.enc_ffn = nn.Sequential(nn.LayerNorm(dim), FeedForward(dim=dim, mult=ffn_mult, dropout=dropout))
        self.proc = nn.ModuleList(
            nn.ModuleList([
                RotaryCrossAttention(dim=dim, heads=self_heads, dim_head=dim_head),
                nn.Sequential(nn.LayerNorm(dim), FeedForward(dim=dim, mult=ffn_mult, dropout=dropout)),
            ])
            for _ in range(depth)
        )
        self.dec_atn = RotaryCrossAttention(dim=dim, heads=cross_heads, dim_head=dim_head)
        self.dec_ffn = nn.Sequential(nn.LayerNorm(dim), FeedForward(dim=dim, mult=ffn_mult, dropout=dropout))
        self.out_norm = nn.LayerNorm(dim)
        self.readout = nn.Linear(dim, n_outputs)
        lat_t = -window_s + (torch.arange(n_steps, dtype=torch.float32) + 0.5) * (window_s / n_steps)
        lat_t = lat_t.repeat_interleave(latents_per_step)
        self.register_buffer("latent_times", lat_t, persistent=False)
        self.n_steps = n_steps

    @property
    def num_latents(self) -> int:
        return len(self.latent_times)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, units: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """Decode one window per row.

        Args:
            units: (B, N) int64 embedding rows (0 = blank / padding).
            times: (B, N) float32 spike times relative to the window end (seconds, in [-window_s, 0)).
            mask: (B, N) bool, True for real tokens (an empty window holds one blank token).
            query_times: (Q,) or (B, Q) output times relative to the window end (0 = its end).

        Returns:
            (B, Q, C) outputs (scaled targets).
        """
        b = units.shape[0]
        lat = self.latent_emb.repeat(self.n_steps, 1).unsqueeze(0).expand(b, -1, -1)
        l_rot = tuple(r.unsqueeze(0) for r in self.rotary(self.latent_times))  # (1, L, r)
        # a token's key and value depend on its unit only (time enters by rotation): project the
        # unit table once and gather, instead of projecting every spike
        kv = self.enc_atn.project_context(self.unit_emb.weight)[units]
        x = lat + self.enc_atn(lat, None, l_rot, self.rotary(times), mask, kv=kv)
        x = x + self.enc_ffn(x)
        l_rot_b = tuple(r.expand(b, -1, -1) for r in l_rot)
        for atn, ffn in self.proc:
            x = x + atn(x, x, l_rot, l_rot_b)
            x = x + ffn(x)
        if query_times.dim() == 1:
            query_times = query_times.unsqueeze(0).expand(b, -1)
        q = self.query_emb.expand(b, query_times.shape[1], -1)
        y = q + self.dec_atn(q, x, self.rotary(query_times), l_rot_b)
        y = y + self.dec_ffn(y)
        return self.readout(self.out_norm(y))


def window_tokens(
    rows: np.ndarray, times: np.ndarray, ends: np.ndarray, *, window_s: float, max_tokens: int = 4096
) -> dict[str, torch.Tensor]:
    """Tokens of the windows ``[end - window_s, end)`` for each end -> padded (B, N) tensors.

    Args:
        rows: (S,) embedding rows of the spikes (>= 1), sorted by time with ``times``.
        times: (S,) spike times, ascending.
        ends: (B,) window end times.
        window_s: window length.
        max_tokens: keep at most this many (the latest) spikes of a window.

    Returns:
        ``units`` (B, N) int64, ``times`` (B, N) float32 relative to the end, ``mask`` (B, N) bool.
    """
    ends = np.asarray(ends, dtype=np.float64).reshape(-1)
    lo = np.searchsorted(times, ends - window_s, side="left")
    hi = np.searchsorted(times, ends, side="left")
    lo = np.maximum(lo, hi - max_tokens)
    n = np.maximum(hi - lo, 1)
    width = int(n.max()) if len(n) else 1
    b = len(ends)
    units = np.zeros((b, width), dtype=np.int64)
    rel = np.zeros((b, width), dtype=np.float32)
    mask = np.zeros((b, width), dtype=bool)
    for i in range(b):
        k = hi[i] - lo[i]
        if k:
            units[i, :k] = rows[lo[i] : hi[i]]
            rel[i, :k] = times[lo[i] : hi[i]] - ends[i]
            mask[i, :k] = True
        else:
            mask[i, 0] = True  # blank token (row 0, time 0)
    return {"units": torch.from_numpy(units), "times": torch.from_numpy(rel), "mask": torch.from_numpy(mask)}


class POYOStream:
    """Streaming use of a fitted POYO: push spikes as they arrive, ask for a prediction at a time.

    Every :meth:`predict` re-encodes the whole last ``window_s`` of spikes (the cost POSSM avoids).
    Spikes older than the window are discarded.
    """

    def __init__(self, decoder: "POYODecoder") -> None:
        decoder._check_fitted()
        self.decoder = decoder
        self.window_s = decoder.net.window_s
        self._rows = np.zeros(0, np.int64)
        self._times = np.zeros(0, np.float64)

    def reset(self) -> None:
        self._rows = np.zeros(0, np.int64)
        self._times = np.zeros(0, np.float64)

    def push(self, rows: np.ndarray, times: np.ndarray) -> None:
        """Add spikes (embedding rows >= 1, times on the stream clock, not older than what was pushed)."""
        self._rows = np.concatenate([self._rows, np.asarray(rows, np.int64).reshape(-1)])
        self._times = np.concatenate([self._times, np.asarray(times, np.float64).reshape(-1)])
        if len(self._times) > 1 and np.any(np.diff(self._times) < 0):
            order = np.argsort(self._times, kind="stable")
            self._rows, self._times = self._rows[order], self._times[order]

    def predict(self, t_end: float) -> np.ndarray:
        """Outputs (C,) in physical units at ``t_end`` from the spikes of ``[t_end - window_s, t_end)``."""
        keep = self._times >= t_end - self.window_s
        self._rows, self._times = self._rows[keep], self._times[keep]
        tok = window_tokens(self._rows, self._times, np.asarray([t_end]), window_s=self.window_s,
                            max_tokens=self.decoder.max_tokens)
        with torch.no_grad():
            out = self.decoder.net(tok["units"], tok["times"], tok["mask"], torch.zeros(1))
        return out[0, 0].numpy() * self.decoder.target_scale


class POYODecoder(BinnedDecoder):
    """POYO baseline on the chunk grid: one prediction per chunk end, from the last ``window_s``.

    Args:
        model_kwargs: arguments of :class:`POYO` besides ``n_units`` / ``n_outputs``.
        max_tokens: spikes read per window at most (the latest are kept).
        width, step: the chunk grid (seconds).
    """

    name = "poyo"

    def __init__(
        self,
        *,
        max_tokens: int = 4096,
        width: float = DEFAULT_WIDTH,
        step: float = DEFAULT_STEP,
        **model_kwargs,
    ) -> None:
        super().__init__(width=width, step=step)
        known = set(inspect.signature(POYO).parameters) - {"n_units", "n_outputs"}
        unknown = sorted(set(model_kwargs) - known)
        if unknown:
            raise ConfigError(f"POYODecoder: unknown POYO argument(s) {unknown}; known: {sorted(known)}")
        if int(max_tokens) < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens!r}")
        self.model_kwargs = dict(model_kwargs)
        self.max_tokens = int(max_tokens)
        self.net: POYO | None = None

    # -- spikes ---------------------------------------------------------------------------------
    def _spikes(self, session: Session) -> tuple[np.ndarray, np.ndarray]:
        """Embedding rows and times of ``session``'s spikes (rows follow the decoder's unit order)."""
        cols = self._columns(session)
        row_of = np.zeros(session.n_units, dtype=np.int64)
        row_of[cols] = np.arange(1, len(cols) + 1)
        return row_of[session.spike_units], session.spike_times

    def unit_rows(self, unit_ids: list[str]) -> np.ndarray:
        """Embedding rows of unit ids (for :meth:`POYOStream.push`); unknown ids raise DataError."""
        self._check_fitted()
        index = {u: i + 1 for i, u in enumerate(self.unit_ids)}
        missing = [u for u in unit_ids if u not in index]
        if missing:
            raise DataError(f"POYODecoder was not fit on units {missing[:5]}")
        return np.asarray([index[u] for u in unit_ids], dtype=np.int64)

    def _window_queries(self) -> torch.Tensor:
        n = max(1, int(round(self.net.window_s / self.step)))
        return -self.step * torch.arange(n - 1, -1, -1, dtype=torch.float32)

    # -- fit ------------------------------------------------------------------------------------
    def _fit(
        self,
        train: list[Part],
        valid: list[Part],
        *,
        epochs: int = 20,
        batch_size: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
        steps: int | None = None,
        eval_every: int | None = None,
    ) -> None:
        """``epochs`` counts passes over the training chunks as queries (each window answers
        ``window_s / step`` of them), so one epoch is only a few optimiser steps on a short session;
        ``steps`` (if given) sets the number of optimiser steps directly. ``eval_every``: steps between
        validations (and ``history`` rows; default: one epoch). A validation re-reads a 1 s window per
        validation chunk and costs about ten training steps: validate every few dozen steps at most."""
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        if steps is not None and int(steps) < 1:
            raise ConfigError(f"steps must be >= 1, got {steps!r}")
        if eval_every is not None and int(eval_every) < 1:
            raise ConfigError(f"eval_every must be >= 1, got {eval_every!r}")
        torch.manual_seed(seed)
        self.net = POYO(n_units=self.n_units, n_outputs=self.n_outputs, **self.model_kwargs)
        q_rel = self._window_queries()
        w = len(q_rel)
        spikes = [self._spikes(p.subset.session) for p in train]
        ys = [self._scaled(p).astype(np.float32) for p in train]
        picks = []
        for i, p in enumerate(train):  # windows ending at chunk j whose W query chunks hold a training chunk
            c = np.concatenate([[0], np.cumsum(p.mask)])
            j = np.arange(len(p.mask))
            ok = (c[j + 1] - c[np.maximum(j + 1 - w, 0)]) > 0
            picks.append(np.stack([np.full(ok.sum(), i), j[ok]], axis=1))
        picks = np.concatenate(picks)
        n_chunks = sum(int(p.mask.sum()) for p in train)
        steps_per_epoch = max(1, -(-n_chunks // (w * batch_size)))
        offs = np.arange(w) - (w - 1)

        def batch(rng: np.random.Generator) -> torch.Tensor:
            sel = picks[rng.integers(0, len(picks), size=batch_size)]
            units, times, masks, yb, mb = [], [], [], [], []
            for i, j in sel:
                p = train[i]
                tok = window_tokens(*spikes[i], p.binned.ends[j : j + 1], window_s=self.net.window_s, max_tokens=self.max_tokens)
                units.append(tok["units"][0])
                times.append(tok["times"][0])
                masks.append(tok["mask"][0])
                idx = j + offs
                ok = idx >= 0
                idx = np.maximum(idx, 0)
                yb.append(ys[i][idx])
                mb.append(p.mask[idx] & ok)
            units = nn.utils.rnn.pad_sequence(units, batch_first=True)
            times = nn.utils.rnn.pad_sequence(times, batch_first=True)
            masks = nn.utils.rnn.pad_sequence(masks, batch_first=True)
            out = self.net(units, times, masks, q_rel)
            y = torch.from_numpy(np.stack(yb))
            m = torch.from_numpy(np.stack(mb)).unsqueeze(-1).float()
            return ((out - y) ** 2 * m).sum() / (m.sum() * out.shape[-1]).clamp_min(1.0)

        evaluate = None
        if valid:

            def evaluate() -> float:
                yt = np.concatenate([self._scaled(p)[p.mask] for p in valid])
                yp = np.concatenate([self._predict_part(p, only=p.mask) for p in valid])
                return float(r2_score(yt, yp).mean())

        n_steps = int(steps) if steps is not None else epochs * steps_per_epoch
        every = int(eval_every) if eval_every is not None else steps_per_epoch
        train_torch(
            self.net, batches=batch, n_steps=n_steps, lr=lr, weight_decay=weight_decay,
            evaluate=evaluate, eval_every=min(every, n_steps), history=self.history, seed=seed,
        )

    # -- predict --------------------------------------------------------------------------------
    def _predict_part(self, part: Part, *, only: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Scaled outputs for every chunk (or only the chunks in ``only``), batched windows."""
        rows, times = self._spikes(part.subset.session)
        ends = part.binned.ends if only is None else part.binned.ends[only]
        out = np.zeros((len(ends), self.n_outputs), dtype=np.float32)
        q = torch.zeros(1)
        with torch.no_grad():
            for a in range(0, len(ends), batch_size):
                tok = window_tokens(rows, times, ends[a : a + batch_size], window_s=self.net.window_s, max_tokens=self.max_tokens)
                out[a : a + batch_size] = self.net(tok["units"], tok["times"], tok["mask"], q)[:, 0].numpy()
        return out

    def stream(self) -> POYOStream:
        """A :class:`POYOStream` for this decoder (push spikes, predict at chunk ends)."""
        return POYOStream(self)

    def predict_stream(self, session: Session) -> np.ndarray:
        """Predictions as a live decoder makes them: for each chunk of the grid, push its spikes and
        re-encode the last ``window_s`` -> (T, C) in physical units. Equals :meth:`predict`."""
        self._check_fitted()
        part = self._parts([TrialSubset.all(session)])[0]
        rows, times = self._spikes(session)
        st = self.stream()
        out = np.zeros((len(part.binned), self.n_outputs), dtype=np.float32)
        ends = part.binned.ends
        pushed = np.searchsorted(times, ends[0] - st.window_s, side="left") if len(ends) else 0
        for j, e in enumerate(ends):
            upto = np.searchsorted(times, e, side="left")
            st.push(rows[pushed:upto], times[pushed:upto])
            pushed = upto
            out[j] = st.predict(e)
        return out

    def n_parameters(self) -> int:
        self._check_fitted()
        return self.net.n_parameters()

