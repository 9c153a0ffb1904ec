"""Adapting a trained POSSM to new sessions.

- Unit identification (``ui``): the new sessions' unit and session ids are added to the
  vocabularies (new rows drawn from N(0, emb_init_scale)) and only those new rows are trained; every
  other weight, old embedding rows included, stays bit-identical (their gradients are masked and
  embeddings carry no weight decay). Optionally the latent queries train too (``train_latents``),
  which changes the model for old sessions as well.
- Full fine-tuning (``ft``): unit identification for ``ui_epochs``, then every parameter trains.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from possm_plugin.data.identity import check_sessions
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError
from possm_plugin.model.possm import POSSM
from possm_plugin.training.recipe import FT_LR_SCALE
from possm_plugin.training.train import TrainConfig, fit

__all__ = ["finetune", "add_sessions", "ui_parameters"]

log = logging.getLogger("possm_plugin.training.finetune")


def add_sessions(model: POSSM, sessions: list[Session]) -> tuple[list[str], list[str]]:
    """Extend the model's vocabularies with the sessions' units and ids (recording their unit lists and
    fingerprints); returns (new units, new sessions). A session whose id the model knows with other
    content is refused (:func:`~possm_plugin.data.identity.check_sessions`)."""
    check_sessions(model, sessions)
    new_units = model.extend_units([u for s in sessions for u in s.unit_ids])
    new_sessions = model.extend_sessions([s.session_id for s in sessions], units={s.session_id: s.unit_ids for s in sessions},
                                         fingerprints={s.session_id: s.identity for s in sessions})
    return new_units, new_sessions


def _row_mask_hook(n_old: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_old] = 0
        return grad

    return hook


def ui_parameters(model: POSSM, *, train_latents: bool = False) -> list[torch.nn.Parameter]:
    params = [model.unit_emb.weight, model.session_emb.weight]
    if train_latents:
        params.append(model.latent_emb)
    return params


def finetune(
    model: POSSM,
    train_sessions: list[Session],
    *,
    mode: str = "ui",
    epochs: int = 30,
    ui_epochs: int | None = None,
    valid_sessions: list[Session] | None = None,
    lr: float = 3e-3,
    ft_lr: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    train_latents: bool = False,
    out_dir: str | Path | None = None,
    train_config: TrainConfig | None = None,
) -> dict:
    """Adapt ``model`` in place to ``train_sessions``.

    Args:
        mode: ``ui`` (unit identification) or ``ft`` (UI for ``ui_epochs``, then all parameters).
        epochs: total epochs (for ``ft``: UI epochs + full epochs).
        ui_epochs: UI epochs before unfreezing in ``ft`` mode (default: half of ``epochs``).
        lr: learning rate of UI; ``ft_lr`` of the full stage (default: the training config's lr x
            :data:`~possm_plugin.training.recipe.FT_LR_SCALE`).
        out_dir: write checkpoints and metrics there.

    Raises:
        ConfigError: every training session is already known to the model (nothing would train).
        DataError: a session id the model knows names another recording (see :mod:`possm_plugin.data.identity`).

    Returns:
        metrics: ``valid_r2`` (or accuracy / token error rate), ``trainable_parameters``,
        ``trainable_fraction``, ``new_units``, ``new_sessions``, and the training history.
    """
    if mode not in ("ui", "ft"):
        raise ConfigError(f"finetune mode={mode!r} must be 'ui' or 'ft'")
    if epochs <= 0:
        raise ConfigError(f"epochs must be positive, got {epochs}")
    if model.config.readout != train_sessions[0].task:
        raise ConfigError(f"the model decodes {model.config.readout!r} but the sessions are {train_sessions[0].task!r} tasks")
    ui_epochs = (epochs if mode == "ui" else max(1, epochs // 2)) if ui_epochs is None else ui_epochs
    if mode == "ft" and not 0 < ui_epochs < epochs:
        raise ConfigError(f"ft needs 0 < ui_epochs < epochs, got ui_epochs={ui_epochs}, epochs={epochs}")
    check_sessions(model, train_sessions + list(valid_sessions or []))
    known = [s.session_id for s in train_sessions if s.session_id in model.session_vocab]
    if len(known) == len(train_sessions):
        raise ConfigError(
            f"nothing to fine-tune: the model already knows every session given ({', '.join(known)}), so unit "
            "identification would train no parameter; fine-tune on sessions it has not seen, or continue "
            "training on these with `possm train --resume`"
        )
    n_units_old, n_sessions_old = len(model.unit_vocab), len(model.session_vocab)
    new_units, new_sessions = add_sessions(model, train_sessions + list(valid_sessions or []))
    base = train_config or TrainConfig(progress=progress)
    cfg = dataclasses.replace(base, epochs=ui_epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress, default_session=None)
    params = ui_parameters(model, train_latents=train_latents)
    hooks = [
        model.unit_emb.weight.register_hook(_row_mask_hook(n_units_old)),
        model.session_emb.weight.register_hook(_row_mask_hook(n_sessions_old)),
    ]
    n_trainable = len(new_units) * model.config.dim + len(new_sessions) * model.config.dim + (model.latent_emb.numel() if train_latents else 0)
    out = Path(out_dir) if out_dir is not None else None
    try:
        ui = fit(model, train_sessions, cfg=cfg, params=params, valid_sessions=valid_sessions, out_dir=out / "ui" if out else None)
    finally:
        for h in hooks:
            h.remove()
    result = {
        "mode": mode,
        "new_units": len(new_units),
        "new_sessions": len(new_sessions),
        "trainable_parameters": n_trainable,
        "total_parameters": model.n_parameters(),
        "trainable_fraction": n_trainable / model.n_parameters(),
        "ui": ui["best"],
        "history": ui["history"],
    }
    best = ui["best"]
    if mode == "ft":
        cfg_ft = dataclasses.replace(cfg, epochs=epochs - ui_epochs, lr=ft_lr or base.lr * FT_LR_SCALE)
        ft = fit(model, train_sessions, cfg=cfg_ft, valid_sessions=valid_sessions, out_dir=out / "ft" if out else None)
        result["ft"] = ft["best"]
        result["history"] = ui["history"] + ft["history"]
        best = ft["best"]
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    result["best"] = best
    for key in ("r2", "accuracy", "token_error_rate"):
        if key in best:
            result[f"valid_{key}"] = best[key]
    return result
