"""The training recipe ``possm train`` uses by default, in one place (work in progress: issue 12).

Entry points the benchmarks and CLI call; their internals are the recipe and may change:

- :func:`recipe_config` -- the default :class:`~possm_plugin.train.TrainConfig` for these sessions.
- :func:`train_recipe` -- a fresh model trained on sessions with that recipe.
- :func:`adapt_recipe` -- a pretrained model adapted to new sessions (``ui`` or ``ft``).
- :func:`predict_session` -- outputs (physical units) for every chunk of a session, one stream.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .model import POSSM
from .session import Session
from .train import TrainConfig, build_model, fit

__all__ = ["recipe_config", "train_recipe", "adapt_recipe", "predict_session", "BUDGETS"]

#: optimiser steps aimed at per budget (epochs are derived from the data size)
BUDGETS = {"default": 600, "quick": 300, "smoke": 2}


def recipe_config(sessions: list[Session], *, seed: int = 0, budget: str = "default", **overrides) -> TrainConfig:
    """The default training config for ``sessions`` (real binned or simulated)."""
    cfg = TrainConfig(batch_size=16, lr=2e-3, seed=seed, progress=False, valid_fraction=0.2, unit_dropout=1.0,
                      phase_weights={"other": 1.0, "hold": 1.0, "reach": 1.0})
    cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def _epochs(model: POSSM, sessions: list[Session], cfg: TrainConfig, steps: int) -> int:
    from .data import WindowSampler, prepare_sessions

    prepared = prepare_sessions(model, sessions, valid_fraction=cfg.valid_fraction)
    sampler = WindowSampler(prepared, readout=model.config.readout, window_chunks=cfg.window_chunks, n_units=model.n_units, seed=0)
    per_epoch = max(1, math.ceil(len(sampler) / cfg.batch_size))
    return int(min(200, max(3, math.ceil(steps / per_epoch))))


def train_recipe(sessions: list[Session], *, seed: int = 0, budget: str = "default", model_spec: dict | None = None,
                 valid_sessions: list[Session] | None = None) -> tuple[POSSM, dict]:
    """A fresh POSSM trained on ``sessions`` with the default recipe; returns (model, info)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(model_spec or {"preset": "small", "backbone": "gru"}, sessions, seed=seed)
    cfg = recipe_config(sessions, seed=seed, budget=budget)
    cfg = dataclasses.replace(cfg, epochs=_epochs(model, sessions, cfg, BUDGETS[budget]))
    res = fit(model, sessions, cfg=cfg, valid_sessions=valid_sessions)
    model.eval()
    return model, {"epochs": cfg.epochs, "best_epoch": res["best_epoch"], "n_parameters": model.n_parameters()}


def adapt_recipe(model: POSSM, sessions: list[Session], *, mode: str = "ui", seed: int = 0, budget: str = "default") -> dict:
    """Adapt a pretrained ``model`` in place to new ``sessions`` by unit identification or full fine-tuning."""
    from .finetune import add_sessions, finetune
    import copy

    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = recipe_config(sessions, seed=seed, budget=budget)
    probe = copy.deepcopy(model)
    add_sessions(probe, sessions)
    epochs = _epochs(probe, sessions, cfg, BUDGETS[budget] // 2)
    if mode == "ft":
        epochs = max(2, epochs)
    res = finetune(model, sessions, mode=mode, epochs=epochs, ui_epochs=None if mode == "ui" else max(1, epochs // 2),
                   lr=1e-2, ft_lr=cfg.lr / 10, batch_size=cfg.batch_size, seed=seed, train_config=cfg)
    return {"epochs": epochs, "trainable_fraction": res["trainable_fraction"]}


@torch.no_grad()
def predict_session(model: POSSM, session: Session, n_chunks: int | None = None) -> np.ndarray:
    """(n_chunks, C) outputs in physical units for chunks 0..n-1 of the session's grid (chunk i ends at
    ``(i + 1) * chunk_step``), decoded as one stream from a fresh state at 0 s."""
    from .data import prepare_sessions
    from .evaluate import predict_span

    ps = prepare_sessions(model, [session], valid_fraction=0.0)[0]
    step = model.config.chunk_step
    if n_chunks is None:
        n_chunks = int(np.floor((session.duration - model.config.chunk_width) / step + 1e-9)) + 1
    model.eval()
    device = next(model.parameters()).device
    return predict_span(model, ps, 0, n_chunks, device=device) * model.config.target_scale
