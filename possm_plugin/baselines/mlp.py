"""MLP on lagged binned counts (torch): a non-linear Wiener filter.

Input: the counts of the current chunk and the L-1 before it, z-scored with the training statistics.
Two hidden layers (GELU, dropout), trained with AdamW on the MSE of the scaled targets; when
validation trials are given, the weights of the best validation R2 are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from possm_plugin.baselines.base import BinnedDecoder, Part, feature_stats, train_torch
from possm_plugin.baselines.binning import DEFAULT_STEP, DEFAULT_WIDTH, lagged
from possm_plugin.errors import ConfigError
from possm_plugin.training.metrics import r2_score

__all__ = ["MLPDecoder"]


class MLPDecoder(BinnedDecoder):
    """MLP regression from L lagged chunks of counts.

    Args:
        n_lags: chunks of history, including the current one.
        hidden: widths of the hidden layers.
        dropout: dropout after each hidden layer.
        width, step: the chunk grid (seconds).
    """

    name = "mlp"

    def __init__(
        self,
        *,
        n_lags: int = 5,
        hidden: tuple[int, ...] = (256, 256),
        dropout: float = 0.2,
        width: float = DEFAULT_WIDTH,
        step: float = DEFAULT_STEP,
    ) -> None:
        super().__init__(width=width, step=step)
        if int(n_lags) < 1:
            raise ConfigError(f"n_lags must be >= 1, got {n_lags!r}")
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"hidden must be a non-empty list of positive widths, got {hidden!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        self.n_lags = int(n_lags)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.net: nn.Module | None = None

    def _features(self, part: Part) -> np.ndarray:
        return (lagged(part.counts, self.n_lags) - self.mu) / self.sd

    def _build(self, n_in: int) -> nn.Module:
        layers: list[nn.Module] = []
        for h in self.hidden:
            layers += [nn.Linear(n_in, h), nn.GELU(), nn.Dropout(self.dropout)]
            n_in = h
        layers.append(nn.Linear(n_in, self.n_outputs))
        return nn.Sequential(*layers)

    def _fit(
        self,
        train: list[Part],
        valid: list[Part],
        *,
        epochs: int = 30,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        seed: int = 0,
    ) -> None:
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        raw = np.concatenate([lagged(p.counts, self.n_lags)[p.mask] for p in train])
        self.mu, self.sd = feature_stats(raw)
        x = torch.from_numpy(((raw - self.mu) / self.sd).astype(np.float32))
        y = torch.from_numpy(np.concatenate([self._scaled(p)[p.mask] for p in train]).astype(np.float32))
        torch.manual_seed(seed)
        self.net = self._build(x.shape[1])
        n = len(x)
        steps_per_epoch = max(1, -(-n // batch_size))

        def batch(rng: np.random.Generator) -> torch.Tensor:
            idx = torch.from_numpy(rng.integers(0, n, size=min(batch_size, n)))
            return nn.functional.mse_loss(self.net(x[idx]), y[idx])

        evaluate = None
        if valid:
            xv = torch.from_numpy(np.concatenate([self._features(p)[p.mask] for p in valid]).astype(np.float32))
            yv = np.concatenate([self._scaled(p)[p.mask] for p in valid])

            def evaluate() -> float:
                with torch.no_grad():
                    return float(r2_score(yv, self.net(xv).numpy()).mean())

        train_torch(
            self.net, batches=batch, n_steps=epochs * steps_per_epoch, lr=lr, weight_decay=weight_decay,
            evaluate=evaluate, eval_every=steps_per_epoch, history=self.history, seed=seed,
        )

    def _predict_part(self, part: Part) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.from_numpy(self._features(part).astype(np.float32))).numpy()
