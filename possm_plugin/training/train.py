"""Training: the one epoch loop (:func:`fit`) for a single process and for each rank of a ``torchrun``
job, and :func:`train`, which runs it as a config says (load the data, build or resume the model).

A run directory holds ``best.{yaml,safetensors}`` (best validation metric), ``last.*`` (the latest
epoch, with ``last.optim.safetensors`` for resuming) and ``metrics.jsonl`` (one JSON line per epoch).
What differs on several processes (which sessions a process samples and validates, its seeds, the
DDP wrap, gathering the losses and metrics, who writes) is asked of a :class:`Runtime`; its defaults
are one process, and :class:`possm_plugin.training.distributed.RankRuntime` is one rank.
The config, the recipe and the model a config builds live in :mod:`possm_plugin.training.train_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from possm_plugin.data.identity import check_sessions
from possm_plugin.data.prepared import PreparedSession, WindowSampler, prepare_sessions
from possm_plugin.data.session import Session, load_sessions
from possm_plugin.errors import CheckpointError, ConfigError
from possm_plugin.model.checkpoint import load_checkpoint, save_checkpoint
from possm_plugin.model.possm import POSSM
from possm_plugin.training.evaluate import evaluate_prepared, loss_fn
from possm_plugin.training.optim import Lamb, WeightAverage, flat_cosine, load_optimizer_state, save_optimizer_state
from possm_plugin.training.train_config import (
    RECIPE,
    TrainConfig,
    build_model,
    check_model_spec,
    load_train_config,
    unit_dropout_for,
)

__all__ = ["RECIPE", "TrainConfig", "WeightAverage", "Runtime", "load_train_config", "build_model", "model_for_run",
           "make_optimizer", "train", "train_model", "fit", "primary_metric"]

log = logging.getLogger("possm_plugin.training.train")


def primary_metric(metrics: dict) -> float:
    """Higher is better: R2, accuracy, or minus the token error rate."""
    if "r2" in metrics:
        return metrics["r2"]
    if "accuracy" in metrics:
        return metrics["accuracy"]
    return -metrics["token_error_rate"]


def make_optimizer(model: POSSM, params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params``: weight decay on matrices, none on biases, norms and embeddings."""
    decay = [p for p in params if p.ndim >= 2 and p is not model.unit_emb.weight and p is not model.session_emb.weight]
    no_decay = [p for p in params if not any(p is q for q in decay)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return Lamb(groups, lr=cfg.lr) if cfg.optimizer == "lamb" else torch.optim.AdamW(groups, lr=cfg.lr)


def best_so_far(out_dir: Path | None, start_epoch: int) -> dict:
    """The best epoch so far: when resuming (``start_epoch > 0``), the one ``out_dir/best.yaml``
    records; otherwise none yet."""
    best = {"epoch": -1, "metric": -np.inf, "metrics": {}}
    prev = None if out_dir is None else Path(out_dir) / "best.yaml"
    if start_epoch and prev is not None and prev.is_file():
        m = (yaml.safe_load(prev.read_text()) or {}).get("meta", {})
        if "valid" in m:
            best = {"epoch": m.get("epoch", -1), "metric": primary_metric(m["valid"]), "metrics": m["valid"]}
    return best


class Runtime:
    """How this process takes part in a run; these defaults: it trains alone. :func:`fit` asks it
    everything that differs on several processes, and :class:`~possm_plugin.training.distributed.RankRuntime`
    answers for one rank of a ``torchrun`` job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  #: where the model trains (None: the config's ``device``)
    resume_hint: str = ""  #: appended to the error when the optimiser state to resume from is missing

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows the progress bar and writes the run directory."""
        return self.rank == 0

    @property
    def meta(self) -> dict:
        """Added to the ``meta`` of every checkpoint written."""
        return {}

    def shard(self, sessions: list[Session]) -> list[int]:
        """Indices of the training sessions this process samples windows from."""
        return list(range(len(sessions)))

    def owned(self, sessions: list[Session]) -> list[int]:
        """Indices of the validation sessions this process evaluates."""
        return list(range(len(sessions)))

    def seed(self, seed: int, start_epoch: int) -> int:
        """Seed this process for a run that starts at ``start_epoch``; returns the window sampler's seed
        (alone: torch's generator stays as building the model left it)."""
        return seed + start_epoch

    def steps_per_epoch(self, sampler: WindowSampler, batch_size: int) -> int:
        """Optimiser steps in one epoch (alone: one pass over the windows; it draws one order, as runs always did)."""
        return len(sampler.epoch(batch_size))

    def batches(self, sampler: WindowSampler, batch_size: int, steps: int) -> list[list[int]]:
        """The window indices of each step of one epoch."""
        return sampler.epoch(batch_size)

    def wrap(self, model: POSSM) -> torch.nn.Module:
        """The module the training step calls (several processes: a DDP wrapper that averages gradients)."""
        return model

    def epoch_losses(self, losses: list[float]) -> dict:
        """The epoch's training loss (``train_loss``, and whatever else the metrics row should show)."""
        return {"train_loss": float(np.mean(losses))}

    def merge_valid(self, local: dict, session_order: list[str]) -> dict:
        """The validation metrics of all sessions, from those of the sessions this process validated (alone: all)."""
        return local


def run_epoch(net: torch.nn.Module, model: POSSM, sampler: WindowSampler, batches, *, device, opt: torch.optim.Optimizer,
              sched, params: list[torch.nn.Parameter], grad_clip: float | None, bar=None, epoch: int = 0,
              average: WeightAverage | None = None) -> list[float]:
    """One optimiser step per batch of window indices in ``batches``; returns the step losses.
    ``net`` is ``model`` itself or its DistributedDataParallel wrapper (which averages the gradients
    over the ranks in ``backward``)."""
    losses = []
    for idx in batches:
        batch = sampler.batch(idx).to(device)
        out, _ = net(batch.units, batch.times, batch.mask, batch.session)
        loss = loss_fn(model, out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        if average is not None:
            average.update()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
    return losses


@contextlib.contextmanager
def progress_bar(*, total: int, initial: int, desc: str):
    """A tqdm progress bar of optimiser steps; while it is open, the records of the console logging
    handlers (the CLI's, on the root and the package logger) go through ``tqdm.write``, on their own
    lines above the bar instead of glued onto it."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    def console(logger: logging.Logger) -> bool:
        return any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logger.handlers)

    # only loggers with a console handler: tqdm adds its handler to every logger it is given
    loggers = [lg for lg in (logging.root, logging.getLogger("possm_plugin")) if console(lg)]
    with logging_redirect_tqdm(loggers=loggers, tqdm_class=tqdm), tqdm(
        total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True
    ) as bar:
        yield bar


def fit(
    model: POSSM,
    train_sessions: list[Session],
    *,
    cfg: TrainConfig,
    params: list[torch.nn.Parameter] | None = None,
    valid_sessions: list[Session] | None = None,
    out_dir: Path | None = None,
    start_epoch: int = 0,
    optim_state: Path | None = None,
    on_epoch=None,
    runtime: Runtime | None = None,
) -> dict:
    """Train ``params`` (default: all) of ``model`` on the sessions; returns the best metrics, the
    history and ``steps_per_epoch``, and leaves the model at the weights of its best validation epoch.

    Validation uses the held-out trials (``cfg.valid_fraction`` at the end of each session) of the
    training sessions, or ``valid_sessions`` if given. With ``out_dir`` checkpoints and metrics are
    written there. ``runtime``: how this process takes part (default: alone; see :class:`Runtime`).
    """
    rt = runtime if runtime is not None else Runtime()
    device = rt.device if rt.device is not None else torch.device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    cache: dict[int, PreparedSession] = {}  # a session that is trained and validated here is prepared once

    def prepared(sessions: list[Session], idx: list[int]) -> list[PreparedSession]:
        todo = [sessions[i] for i in idx if id(sessions[i]) not in cache]
        for s, ps in zip(todo, prepare_sessions(model, todo, valid_fraction=cfg.valid_fraction) if todo else []):
            cache[id(s)] = ps
        return [cache[id(sessions[i])] for i in idx]

    train_prep = prepared(train_sessions, rt.shard(train_sessions))
    valid_list = valid_sessions or train_sessions
    valid_prep = prepared(valid_list, rt.owned(valid_list))
    sampler = WindowSampler(
        train_prep, readout=model.config.readout, window_chunks=cfg.window_chunks, unit_dropout=unit_dropout_for(cfg, model.config.readout),
        phase_weights=cfg.phase_weight_tuple, target_scale=model.config.target_scale, n_units=model.n_units,
        max_tokens=model.config.max_tokens_per_chunk, seed=rt.seed(cfg.seed, start_epoch), bin_jitter=cfg.bin_jitter,
        jitter_s=cfg.jitter_s,
    )
    params = list(params) if params is not None else [p for p in model.parameters()]
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = make_optimizer(model, params, cfg)
    if optim_state is not None:
        load_optimizer_state(opt, optim_state)
    steps_per_epoch = rt.steps_per_epoch(sampler, cfg.batch_size)
    epochs = cfg.epochs_for(steps_per_epoch)
    total = steps_per_epoch * epochs
    offset = start_epoch * steps_per_epoch  # resuming: continue the schedule where it stopped
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: flat_cosine(s + offset, total, flat_fraction=cfg.flat_fraction))
    net = rt.wrap(model)
    best = best_so_far(out_dir, start_epoch)
    write = out_dir is not None and rt.is_main
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
    progress = contextlib.ExitStack()
    desc = "train" if rt.world_size == 1 else f"train x{rt.world_size}"
    show = cfg.progress and rt.is_main
    bar = progress.enter_context(progress_bar(total=total, initial=offset, desc=desc)) if show else None
    history: list[dict] = []
    best_state = None
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None  # a resumed run starts a new average
    ds = cfg.default_session if cfg.default_session in model.session_vocab else None
    session_order = [s.session_id for s in valid_list]
    try:
        for epoch in range(start_epoch, epochs):
            net.train()
            t0 = time.perf_counter()
            losses = run_epoch(net, model, sampler, rt.batches(sampler, cfg.batch_size, steps_per_epoch), device=device, opt=opt,
                               sched=sched, params=params, grad_clip=cfg.grad_clip, bar=bar, epoch=epoch, average=average)
            meta = {"epoch": epoch, "train": {**dataclasses.asdict(cfg), "epochs_run": epochs}, **rt.meta}
            # validation, the best state and best.* use the averaged weights (when averaging)
            with average.swapped() if average is not None else contextlib.nullcontext():
                valid = rt.merge_valid(evaluate_prepared(model, valid_prep, split="valid", device=device) if valid_prep else {},
                                       session_order)
                meta["valid"] = valid
                metric = primary_metric(valid)
                improved = bool(metric > best["metric"])  # every process sees the same metrics: the same decision
                if improved:
                    best = {"epoch": epoch, "metric": metric, "metrics": valid}
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if write:
                        save_checkpoint(model, out_dir / "best", meta=meta, default_session=ds)
            row = {"epoch": epoch, **rt.epoch_losses(losses), "lr": sched.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - t0, 2), "valid": valid}
            history.append(row)
            if rt.is_main:
                log.info("epoch %d loss %.4f valid %s", epoch, row["train_loss"], {k: v for k, v in valid.items() if not isinstance(v, dict)})
            if write:
                with open(out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                save_checkpoint(model, out_dir / "last", meta=meta, default_session=ds)  # the live weights: resume
                save_optimizer_state(opt, out_dir / "last.optim.safetensors", {"epoch": epoch})
            if on_epoch is not None:
                on_epoch(row)
    finally:
        progress.close()
    if best_state is not None:  # leave the model at its best validation epoch
        model.load_state_dict(best_state)
    return {"best_epoch": best["epoch"], "best": best["metrics"], "history": history, "steps_per_epoch": steps_per_epoch}


def model_for_run(
    cfg: TrainConfig, sessions: list[Session], resume: str | Path | None, *, hint: str = ""
) -> tuple[POSSM, int, Path | None]:
    """A fresh model for ``sessions``, or the last checkpoint of the run directory ``resume``;
    returns ``(model, first epoch to run, optimizer state file or None)``."""
    if resume is None:
        return build_model(cfg.model, sessions, seed=cfg.seed), 0, None
    rdir = Path(resume)
    model, doc = load_checkpoint(rdir / "last.yaml" if rdir.is_dir() else rdir)
    check_sessions(model, sessions)  # the run's sessions must be the recordings it started on
    start_epoch = int(doc.get("meta", {}).get("epoch", -1)) + 1
    optim_state = (rdir if rdir.is_dir() else rdir.parent) / "last.optim.safetensors"
    if not optim_state.is_file():
        raise CheckpointError(f"cannot resume: {str(optim_state)!r} is missing{hint}")
    return model, start_epoch, optim_state


def train_model(cfg: TrainConfig, *, resume: str | Path | None = None, runtime: Runtime | None = None) -> tuple[POSSM, dict]:
    """Train a model from scratch (or resume a run directory) as ``cfg`` says; returns the model (at its
    best validation epoch) and :func:`fit`'s result with ``n_parameters`` and ``out``. The ``model:``
    section is checked before any data loads."""
    rt = runtime if runtime is not None else Runtime()
    if cfg.data is None:
        raise ConfigError("no training data: give data: DIR in the config or --data DIR (make some with `possm simulate`)")
    check_model_spec(cfg.model)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    sessions = load_sessions(cfg.data)
    out_dir = Path(cfg.out)
    model, start_epoch, optim_state = model_for_run(cfg, sessions, resume, hint=rt.resume_hint)
    model.train()
    if rt.is_main:
        log.info("model: %s backbone, %d parameters, %d sessions, %d units", model.config.backbone, model.n_parameters(),
                 len(sessions), model.n_units)
    result = fit(model, sessions, cfg=cfg, out_dir=out_dir, start_epoch=start_epoch, optim_state=optim_state, runtime=rt)
    return model, {**result, "n_parameters": model.n_parameters(), "out": str(out_dir)}


def train(cfg: TrainConfig, *, resume: str | Path | None = None) -> dict:
    """Train a model from scratch (or resume a run directory) as ``cfg`` says; returns :func:`train_model`'s result."""
    return train_model(cfg, resume=resume)[1]
