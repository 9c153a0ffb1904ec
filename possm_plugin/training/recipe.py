"""The training recipe ``possm train`` uses by default (:data:`~possm_plugin.training.train.RECIPE`), from Python.

Entry points the benchmarks and CLI call; their internals are the recipe and may change:

- :func:`recipe_config` -- the default :class:`~possm_plugin.training.train.TrainConfig`.
- :func:`train_recipe` -- a fresh model trained on sessions with that recipe.
- :func:`adapt_recipe` -- a pretrained model adapted to new sessions (``ui`` or ``ft``).
- :func:`predict_session` -- outputs (physical units) for every chunk of a session, one stream.
"""

from __future__ import annotations

import numpy as np
import torch

from possm_plugin.data.session import Session
from possm_plugin.model.possm import POSSM
from possm_plugin.training.train import RECIPE, TrainConfig, build_model, fit

__all__ = ["recipe_config", "train_recipe", "adapt_recipe", "predict_session", "BUDGETS", "UI_LR", "FT_LR_SCALE"]

#: optimiser steps aimed at per budget (epochs are derived from the data size)
BUDGETS = {"default": 600, "quick": 300, "smoke": 2}
#: learning rate of unit identification (only new embedding rows train)
UI_LR = 1e-2
#: learning rate of the full stage of ``ft`` as a multiple of the recipe's: once unfrozen, the pretrained
#: weights train as fast as fresh ones would (at 1/10 FT ended 0.03 R2 lower on both real sessions at 25 %
#: of the training trials; docs/real-data-dev.json)
FT_LR_SCALE = 1.0


def recipe_config(*, seed: int = 0, budget: str = "default", **overrides) -> TrainConfig:
    """What ``possm train`` uses by default (:data:`~possm_plugin.training.train.RECIPE`), for ``budget``'s
    number of optimiser steps at least."""
    return TrainConfig(**{**RECIPE, "min_steps": BUDGETS[budget], "seed": seed, "progress": False, **overrides})


def train_recipe(sessions: list[Session], *, seed: int = 0, budget: str = "default", model_spec: dict | None = None,
                 valid_sessions: list[Session] | None = None) -> tuple[POSSM, dict]:
    """A fresh POSSM trained on ``sessions`` as ``possm train`` trains by default; returns (model, info).
    Validation: the last 20 % of each session's trials (or ``valid_sessions``)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(model_spec or {"preset": "small", "backbone": "gru"}, sessions, seed=seed)
    cfg = recipe_config(seed=seed, budget=budget)
    res = fit(model, sessions, cfg=cfg, valid_sessions=valid_sessions)
    model.eval()
    return model, {"epochs": len(res["history"]), "best_epoch": res["best_epoch"], "n_parameters": model.n_parameters()}


def adapt_recipe(model: POSSM, sessions: list[Session], *, mode: str = "ui", seed: int = 0, budget: str = "default") -> dict:
    """Adapt a pretrained ``model`` in place to new ``sessions``: unit identification (``ui``), or UI
    then every weight (``ft``, each stage half the budget), as ``possm finetune`` does by default."""
    from possm_plugin.training.finetune import finetune

    torch.manual_seed(seed)
    np.random.seed(seed)
    steps = BUDGETS[budget] if mode == "ui" else max(1, BUDGETS[budget] // 2)
    cfg = recipe_config(seed=seed, budget=budget, min_steps=steps)
    epochs = cfg.epochs if mode == "ui" else 2 * cfg.epochs
    res = finetune(model, sessions, mode=mode, epochs=epochs, lr=UI_LR, ft_lr=cfg.lr * FT_LR_SCALE, batch_size=cfg.batch_size,
                   seed=seed, train_config=cfg)
    model.eval()
    return {"epochs": len(res["history"]), "trainable_fraction": res["trainable_fraction"]}


@torch.no_grad()
def predict_session(model: POSSM, session: Session, n_chunks: int | None = None) -> np.ndarray:
    """(n_chunks, C) outputs in physical units for chunks 0..n-1 of the session's grid (chunk i ends at
    ``(i + 1) * chunk_step``), decoded as one stream from a fresh state at 0 s."""
    from possm_plugin.data.prepared import prepare_sessions
    from possm_plugin.training.evaluate import predict_span

    ps = prepare_sessions(model, [session], valid_fraction=0.0)[0]
    step = model.config.chunk_step
    if n_chunks is None:
        n_chunks = int(np.floor((session.duration - model.config.chunk_width) / step + 1e-9)) + 1
    model.eval()
    device = next(model.parameters()).device
    return predict_span(model, ps, 0, n_chunks, device=device) * model.config.target_scale
