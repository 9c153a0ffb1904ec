"""What every baseline shares: the binned data path, the fit/predict/r2 interface, a torch training loop.

A baseline is fit on :class:`~possm_plugin.baselines.binning.TrialSubset` objects (or whole sessions), sees each
session through :func:`~possm_plugin.baselines.binning.bin_session` (the POSSM chunk grid), learns on the chunks
of the given trials only, and predicts every chunk of a session's grid. Baselines are single-session
decoders: every session they see must record the same unit ids (in any order).

Shape letters: T chunks, U units, C outputs, B batch, W chunks per window.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import numpy as np

from possm_plugin.baselines.binning import DEFAULT_STEP, DEFAULT_WIDTH, BinnedSession, TrialSubset, as_subsets, bin_session
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.training.metrics import r2_score

__all__ = ["BinnedDecoder", "Part", "holdout_parts", "feature_stats", "train_torch"]

Data = Session | TrialSubset | Iterable[Session | TrialSubset]


class Part:
    """One training/evaluation piece: the trials it stands for, the binned session, the chunks that
    count (``mask``, (T,) bool) and the counts (T, U) in the decoder's unit order."""

    __slots__ = ("subset", "binned", "mask", "counts")

    def __init__(self, subset: TrialSubset, binned: BinnedSession, mask: np.ndarray, counts: np.ndarray) -> None:
        self.subset = subset
        self.binned = binned
        self.mask = mask
        self.counts = counts

    def with_trials(self, trials: np.ndarray) -> "Part":
        """The same session restricted to ``trials``."""
        sub = TrialSubset(self.subset.session, trials)
        return Part(sub, self.binned, self.binned.mask(sub.trials), self.counts)


def holdout_parts(parts: list[Part], fraction: float = 0.2) -> tuple[list[Part], list[Part]]:
    """Split each part's trials in time order into (first 1-fraction, last fraction), for choosing
    hyperparameters when no validation trials are given. Parts with a single trial stay whole."""
    fit, hold = [], []
    for p in parts:
        trials = np.sort(p.subset.trials)
        n = len(trials)
        n_hold = max(1, int(round(n * fraction))) if n >= 2 else 0
        fit.append(p.with_trials(trials[: n - n_hold]))
        if n_hold:
            hold.append(p.with_trials(trials[n - n_hold :]))
    return fit, hold


class BinnedDecoder:
    """Base class of the baselines. Subclasses implement ``_fit(train_parts, valid_parts, **kw)`` and
    ``_predict_part(part) -> (T, C)`` in scaled units (targets / target_scale)."""

    name = "baseline"

    def __init__(self, *, width: float = DEFAULT_WIDTH, step: float = DEFAULT_STEP) -> None:
        if not (width > 0 and 0 < step <= width):
            raise ConfigError(f"need 0 < step <= width, got width={width!r}, step={step!r}")
        self.width = float(width)
        self.step = float(step)
        self.unit_ids: list[str] | None = None
        self.target_names: list[str] | None = None
        self.target_scale: float = 1.0
        self.history: list[dict] = []

    # -- data path ----------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.unit_ids is not None

    @property
    def n_units(self) -> int:
        self._check_fitted()
        return len(self.unit_ids)

    @property
    def n_outputs(self) -> int:
        self._check_fitted()
        return len(self.target_names)

    def _check_fitted(self) -> None:
        if self.unit_ids is None:
            raise DataError(f"{type(self).__name__} is not fitted; call fit(train_sessions) first")

    def _columns(self, session: Session) -> np.ndarray:
        """Column of each of the decoder's units in ``session.unit_ids``."""
        index = {u: i for i, u in enumerate(session.unit_ids)}
        missing = [u for u in self.unit_ids if u not in index]
        extra = len(session.unit_ids) - (len(self.unit_ids) - len(missing))
        if missing or extra:
            raise DataError(
                f"{type(self).__name__} was fit on {len(self.unit_ids)} units but session "
                f"{session.session_id!r} has {len(session.unit_ids)} ({len(missing)} of the fitted units missing, "
                f"e.g. {missing[:3]}); baselines decode the units they were fit on only"
            )
        return np.asarray([index[u] for u in self.unit_ids], dtype=np.int64)

    def _parts(self, subsets: list[TrialSubset]) -> list[Part]:
        cache: dict[int, BinnedSession] = {}
        parts = []
        for s in subsets:
            b = cache.get(id(s.session))
            if b is None:
                b = cache[id(s.session)] = bin_session(s.session, width=self.width, step=self.step)
            if b.targets.shape[1] != len(self.target_names) or b.target_names != self.target_names:
                raise DataError(
                    f"session {s.session.session_id!r} has targets {b.target_names}, the decoder {self.target_names}"
                )
            counts = b.counts[:, self._columns(s.session)]
            parts.append(Part(s, b, b.mask(s.trials), counts))
        return parts

    def _scaled(self, part: Part) -> np.ndarray:
        return part.binned.targets / np.float32(self.target_scale)

    # -- interface ----------------------------------------------------------------------------
    def fit(self, train: Data, valid: Data | None = None, **kwargs) -> "BinnedDecoder":
        """Fit on the chunks of the training trials.

        Args:
            train: Session(s) (all their trials) or :class:`~possm_plugin.baselines.binning.TrialSubset` (s).
            valid: held-out trials for choosing hyperparameters / the best epoch (optional).
            kwargs: the subclass's training options (``epochs``, ``seed``, ...).

        Returns:
            self.
        """
        tr = as_subsets(train)
        if not tr:
            raise DataError("fit needs at least one training session")
        first = tr[0].session
        if first.task != "regression":
            raise DataError(f"baselines decode regression targets; session {first.session_id!r} has task {first.task!r}")
        self.unit_ids = list(first.unit_ids)
        self.target_names = list(first.target_names)
        self.target_scale = float(first.target_scale)
        train_parts = self._parts(tr)
        if not sum(int(p.mask.sum()) for p in train_parts):
            raise DataError("the training trials hold no whole chunk")
        valid_parts = self._parts(as_subsets(valid))
        self.history = []
        self._fit(train_parts, valid_parts, **kwargs)
        return self

    def predict(self, session: Session) -> np.ndarray:
        """Predictions for every chunk of ``session``'s grid -> (T, C) float32 in physical units.

        The grid is :func:`~possm_plugin.baselines.binning.session_grid` (same as :func:`bin_session`).
        """
        self._check_fitted()
        part = self._parts([TrialSubset.all(session)])[0]
        return (self._predict_part(part) * self.target_scale).astype(np.float32)

    def r2(self, data: Data, *, trials: np.ndarray | None = None) -> np.ndarray:
        """R2 of each output on the chunks of the given trials (pooled over sessions) -> (C,).

        ``data`` is a session (all its trials, or ``trials``) or TrialSubset(s).
        """
        self._check_fitted()
        if trials is not None:
            if not isinstance(data, Session):
                raise ConfigError("trials= is only accepted with a single Session")
            data = TrialSubset(data, trials)
        yt, yp = [], []
        for part in self._parts(as_subsets(data)):
            pred = self._predict_part(part) * self.target_scale
            yt.append(part.binned.targets[part.mask])
            yp.append(pred[part.mask])
        yt, yp = np.concatenate(yt), np.concatenate(yp)
        if len(yt) < 2:
            raise DataError("fewer than 2 chunks to score")
        return r2_score(yt, yp)

    def r2_mean(self, data: Data, *, trials: np.ndarray | None = None) -> float:
        """R2 averaged over outputs."""
        return float(self.r2(data, trials=trials).mean())

    # -- for subclasses ------------------------------------------------------------------------
    def _fit(self, train: list[Part], valid: list[Part], **kwargs) -> None:  # pragma: no cover
        raise NotImplementedError

    def _predict_part(self, part: Part) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        state = f"{len(self.unit_ids)} units" if self.unit_ids is not None else "not fitted"
        return f"{type(self).__name__}({state})"


# -- torch helpers -----------------------------------------------------------------------------
def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (std floored at 1e-3 of the largest, and > 0) of each column."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    floor = max(float(sd.max()) * 1e-3, 1e-6) if sd.size else 1e-6
    return mu.astype(np.float32), np.maximum(sd, floor).astype(np.float32)


def train_torch(
    model,
    *,
    batches,
    n_steps: int,
    lr: float,
    weight_decay: float,
    evaluate=None,
    eval_every: int,
    history: list,
    seed: int,
):
    """AdamW with linear warm-up then cosine decay; keeps the weights of the best ``evaluate()`` score.

    Args:
        model: a torch module.
        batches: callable ``(rng) -> loss tensor`` computing the loss of one random batch.
        n_steps: optimisation steps.
        evaluate: callable ``() -> float`` (higher is better) or None (keep the last weights).
        eval_every: steps between evaluations.
        history: list that receives one dict per evaluation.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, n_steps // 20)

    def lr_at(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, n_steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    best, best_state = -math.inf, None
    running = 0.0
    for i in range(n_steps):
        model.train()
        loss = batches(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (i + 1) % eval_every == 0 or i + 1 == n_steps:
            n = eval_every if (i + 1) % eval_every == 0 else (i + 1) % eval_every
            rec = {"step": i + 1, "loss": running / n}
            running = 0.0
            if evaluate is not None:
                model.eval()
                score = float(evaluate())
                rec["valid_r2"] = score
                if score > best:
                    best, best_state = score, copy.deepcopy(model.state_dict())
            history.append(rec)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model
