"""Wiener filter: ridge regression of the targets on the last L chunks' counts (closed form, numpy).

The workhorse linear decoder of clinical BCIs. Features are the counts of every unit in the current
chunk and the L-1 before it (:func:`possm_plugin.baselines.binning.lagged`), centred; the intercept is not
penalised. The ridge penalty is chosen from a grid on validation trials (the given ``valid`` data, or
else the last 20% of the training trials); the filter is then refit at that penalty on all the trials it
was given (training and validation).
"""

from __future__ import annotations

import numpy as np

from possm_plugin.baselines.base import BinnedDecoder, Part, holdout_parts
from possm_plugin.baselines.binning import DEFAULT_STEP, DEFAULT_WIDTH, lagged
from possm_plugin.errors import ConfigError
from possm_plugin.training.metrics import r2_score

__all__ = ["WienerFilter", "DEFAULT_LAMBDAS"]

#: Penalties relative to the mean eigenvalue of the feature covariance (so the grid is unit-free).
DEFAULT_LAMBDAS = tuple(float(x) for x in np.logspace(-4, 2, 13))


class WienerFilter(BinnedDecoder):
    """Ridge regression on lagged binned counts.

    Args:
        n_lags: chunks of history, including the current one (L).
        lambdas: candidate penalties, relative to the mean eigenvalue of the feature covariance.
        width, step: the chunk grid (seconds).

    After :meth:`fit`: ``weights`` (L*U, C), ``bias`` (C,) in scaled units, ``lam`` (the chosen
    relative penalty) and ``history`` (validation R2 of every candidate).
    """

    name = "wiener"

    def __init__(
        self,
        *,
        n_lags: int = 5,
        lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
        width: float = DEFAULT_WIDTH,
        step: float = DEFAULT_STEP,
    ) -> None:
        super().__init__(width=width, step=step)
        if int(n_lags) < 1:
            raise ConfigError(f"n_lags must be >= 1, got {n_lags!r}")
        if not len(lambdas) or min(lambdas) < 0:
            raise ConfigError(f"lambdas must be a non-empty list of penalties >= 0, got {lambdas!r}")
        self.n_lags = int(n_lags)
        self.lambdas = tuple(float(x) for x in lambdas)
        self.weights: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.lam: float | None = None

    def _xy(self, parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
        xs = [lagged(p.counts.astype(np.float64), self.n_lags)[p.mask] for p in parts]
        ys = [self._scaled(p).astype(np.float64)[p.mask] for p in parts]
        return np.concatenate(xs), np.concatenate(ys)

    def _solve(self, x: np.ndarray, y: np.ndarray, lams: tuple[float, ...]):
        """Ridge solutions for every relative penalty (one eigendecomposition)."""
        mx, my = x.mean(axis=0), y.mean(axis=0)
        xc = x - mx
        g = xc.T @ xc / len(x)
        evals, evecs = np.linalg.eigh(g)
        evals = np.maximum(evals, 0.0)
        scale = max(float(evals.mean()), 1e-12)
        proj = evecs.T @ (xc.T @ (y - my) / len(x))  # (F, C)
        out = []
        for lam in lams:
            w = evecs @ (proj / (evals + lam * scale + 1e-12)[:, None])
            out.append((w, my - mx @ w))
        return out

    def _fit(self, train: list[Part], valid: list[Part], *, lambdas: tuple[float, ...] | None = None) -> None:
        lams = self.lambdas if lambdas is None else tuple(float(x) for x in lambdas)
        self.lam = lams[0]
        if len(lams) > 1:
            # choose on the given validation trials, or else on the last 20% of the training trials
            fit_parts, val_parts = (train, valid) if valid else holdout_parts(train)
            if val_parts:
                x, y = self._xy(fit_parts)
                xv, yv = self._xy(val_parts)
                scores = [float(r2_score(yv, xv @ w + b).mean()) for w, b in self._solve(x, y, lams)]
                self.lam = lams[int(np.argmax(scores))]
                self.history = [{"lambda": lam, "valid_r2": s} for lam, s in zip(lams, scores)]
        # then refit on every trial it was given (training and validation) at the chosen penalty
        x, y = self._xy(train + valid)
        w, b = self._solve(x, y, (self.lam,))[0]
        self.weights, self.bias = w.astype(np.float64), b.astype(np.float64)

    def _predict_part(self, part: Part) -> np.ndarray:
        x = lagged(part.counts.astype(np.float64), self.n_lags)
        return (x @ self.weights + self.bias).astype(np.float32)

