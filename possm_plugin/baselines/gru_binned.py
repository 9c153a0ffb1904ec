"""GRU on binned counts (torch): POSSM's recurrent backbone without the spike tokenizer.

Input per chunk: every unit's count, z-scored with the training statistics, through a linear layer
into a GRU; a linear readout per chunk. Trained as POSSM is, on windows of ``window_chunks`` chunks
(20 x 50 ms = 1 s) that start from a zero state at random places of the training trials, with the MSE
counted on the chunks of training trials only. Decoding runs the GRU once over the whole chunk grid
of a session, carrying its state from chunk to chunk as a streaming decoder would.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from possm_plugin.baselines.base import BinnedDecoder, Part, feature_stats, train_torch
from possm_plugin.baselines.binning import DEFAULT_STEP, DEFAULT_WIDTH
from possm_plugin.errors import ConfigError
from possm_plugin.training.metrics import r2_score

__all__ = ["GRUDecoder", "BinnedGRU"]


class BinnedGRU(nn.Module):
    """counts (B, T, U) -> outputs (B, T, C); ``forward`` takes and returns the GRU state."""

    def __init__(self, *, n_units: int, n_outputs: int, hidden: int = 128, layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(n_units, hidden), nn.GELU(), nn.Dropout(dropout))
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.gru(self.inp(x), h)
        return self.out(y), h


class GRUDecoder(BinnedDecoder):
    """GRU regression from binned counts.

    Args:
        hidden, layers: GRU size.
        dropout: dropout on the GRU input.
        window_chunks: chunks per training window (20 = 1 s at 50 ms).
        width, step: the chunk grid (seconds).
    """

    name = "gru"

    def __init__(
        self,
        *,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.1,
        window_chunks: int = 20,
        width: float = DEFAULT_WIDTH,
        step: float = DEFAULT_STEP,
    ) -> None:
        super().__init__(width=width, step=step)
        if hidden < 1 or layers < 1 or window_chunks < 1:
            raise ConfigError(f"hidden, layers and window_chunks must be >= 1, got {hidden}, {layers}, {window_chunks}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        self.hidden, self.layers, self.dropout = int(hidden), int(layers), float(dropout)
        self.window_chunks = int(window_chunks)
        self.net: BinnedGRU | None = None

    def _inputs(self, part: Part) -> np.ndarray:
        return ((part.counts - self.mu) / self.sd).astype(np.float32)

    def _fit(
        self,
        train: list[Part],
        valid: list[Part],
        *,
        epochs: int = 30,
        batch_size: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> None:
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        self.mu, self.sd = feature_stats(np.concatenate([p.counts[p.mask] for p in train]))
        w = self.window_chunks
        xs = [torch.from_numpy(self._inputs(p)) for p in train]
        ys = [torch.from_numpy(self._scaled(p).astype(np.float32)) for p in train]
        ms = [torch.from_numpy(p.mask) for p in train]
        # window starts: every start whose window holds at least one training chunk
        starts = []
        for i, p in enumerate(train):
            t = len(p.mask)
            if t < w:
                continue
            c = np.concatenate([[0], np.cumsum(p.mask)])
            s0 = np.flatnonzero(c[w:] - c[:-w] > 0)
            starts.append(np.stack([np.full(len(s0), i), s0], axis=1))
        if not starts:
            raise ConfigError(f"no session is {w} chunks long; lower window_chunks")
        starts = np.concatenate(starts)
        n_chunks = sum(int(p.mask.sum()) for p in train)
        steps_per_epoch = max(1, -(-n_chunks // (w * batch_size)))
        torch.manual_seed(seed)
        self.net = BinnedGRU(n_units=self.n_units, n_outputs=self.n_outputs, hidden=self.hidden, layers=self.layers, dropout=self.dropout)
        offs = torch.arange(w)

        def batch(rng: np.random.Generator) -> torch.Tensor:
            pick = starts[rng.integers(0, len(starts), size=batch_size)]
            xb, yb, mb = [], [], []
            for i, s in pick:
                idx = s + offs
                xb.append(xs[i][idx])
                yb.append(ys[i][idx])
                mb.append(ms[i][idx])
            out, _ = self.net(torch.stack(xb))
            m = torch.stack(mb).unsqueeze(-1).float()
            return ((out - torch.stack(yb)) ** 2 * m).sum() / (m.sum() * out.shape[-1]).clamp_min(1.0)

        evaluate = None
        if valid:

            def evaluate() -> float:
                yt = np.concatenate([self._scaled(p)[p.mask] for p in valid])
                yp = np.concatenate([self._predict_part(p)[p.mask] for p in valid])
                return float(r2_score(yt, yp).mean())

        train_torch(
            self.net, batches=batch, n_steps=epochs * steps_per_epoch, lr=lr, weight_decay=weight_decay,
            evaluate=evaluate, eval_every=steps_per_epoch, history=self.history, seed=seed,
        )

    def _predict_part(self, part: Part) -> np.ndarray:
        with torch.no_grad():
            out, _ = self.net(torch.from_numpy(self._inputs(part)).unsqueeze(0))
        return out[0].numpy()
