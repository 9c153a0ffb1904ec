"""Training: YAML config -> model, windows, optimiser, schedule, validation, checkpoints, resume.

A run directory holds ``best.{yaml,safetensors}`` (best validation metric), ``last.*`` (the latest
epoch, with ``last.optim.safetensors`` for resuming) and ``metrics.jsonl`` (one JSON line per epoch).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .checkpoint import load_checkpoint, save_checkpoint, write_safetensors
from .config import ModelConfig, preset
from .data import WindowSampler, prepare_sessions
from .errors import CheckpointError, ConfigError, DataError
from .evaluate import evaluate_prepared, loss_fn
from .identity import check_sessions
from .model import POSSM
from .optim import Lamb, flat_cosine
from .session import Session, load_sessions

__all__ = ["RECIPE", "TrainConfig", "load_train_config", "build_model", "model_for_run", "make_optimizer", "train", "fit", "primary_metric"]

log = logging.getLogger("possm_plugin.train")


@dataclass
class TrainConfig:
    """A training run. YAML files have the sections ``model``, ``data``, ``train`` and ``out``.

    ``model`` is either a full :class:`ModelConfig` mapping or ``{preset: small|opossm, backbone: ...,
    <any ModelConfig field>: override}``.

    These field defaults are the library's; ``possm train`` starts from the recipe instead
    (:data:`RECIPE`, below), under whatever a config file or flag sets. Budget: ``epochs``
    passes over the training windows, and at least ``min_steps`` optimiser steps (small sessions get
    more epochs). ``bin_jitter``: spikes of sessions imported from binned counts are placed anew at
    random inside their bins in every training window (their placement was invented at import).
    ``jitter_s``: the same for sessions with real spike times, inside bins of that many seconds from 0 s
    (0: off; the recipe's 0.05 keeps every spike in its 50 ms chunk and draws its time inside it anew).
    ``ema``: decay per step of an exponential moving average of the weights, which validation and the
    saved checkpoints use (0: off).
    """

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "small", "backbone": "gru"})
    data: str | None = None
    valid_fraction: float = 0.2
    epochs: int = 30
    min_steps: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    flat_fraction: float = 0.5
    window_chunks: int = 20
    unit_dropout: float = 0.6
    phase_weights: dict[str, float] = field(default_factory=lambda: {"other": 1.0, "hold": 0.1, "reach": 5.0})
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    out: str = "runs/possm"
    progress: bool = True
    default_session: str | None = None
    bin_jitter: bool = True
    jitter_s: float = 0.0
    ema: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # YAML can put any type anywhere: check them before any comparison
            v, want = getattr(self, f.name), _FIELD_TYPES[f.name]
            if v is None and "none" in want:
                continue
            ok = (
                ("int" in want and isinstance(v, int) and not isinstance(v, bool))
                or ("float" in want and isinstance(v, (int, float)) and not isinstance(v, bool))
                or ("str" in want and isinstance(v, str))
                or ("bool" in want and isinstance(v, bool))
                or ("dict" in want and isinstance(v, dict))
            )
            if not ok:
                raise ConfigError(f"train config: {f.name}={v!r} has the wrong type; expected {' or '.join(want)}")
        if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in self.phase_weights.items()):
            raise ConfigError(f"train config: phase_weights={self.phase_weights!r} must map phase names to numbers")
        if self.optimizer not in ("adamw", "lamb"):
            raise ConfigError(f"train config: optimizer={self.optimizer!r} must be 'adamw' or 'lamb'")
        for name in ("epochs", "batch_size", "window_chunks"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"train config: {name}={v!r} must be a positive integer")
        if not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise ConfigError(f"train config: min_steps={self.min_steps!r} must be an integer >= 0")
        if not 0 <= self.jitter_s < 1:
            raise ConfigError(f"train config: jitter_s={self.jitter_s!r} is a bin width in seconds, in [0, 1) (0: off)")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train config: ema={self.ema!r} is the weight average's decay per step, in [0, 1) (0: off)")
        if not 0 < self.lr < 1:
            raise ConfigError(f"train config: lr={self.lr!r} must be in (0, 1)")
        if not 0 < self.unit_dropout <= 1:
            raise ConfigError(f"train config: unit_dropout={self.unit_dropout!r} is the minimum kept fraction, in (0, 1]")
        if not 0 < self.valid_fraction < 1:
            raise ConfigError(f"train config: valid_fraction={self.valid_fraction!r} must be in (0, 1)")
        unknown = set(self.phase_weights) - {"other", "hold", "reach"}
        if unknown:
            raise ConfigError(f"train config: phase_weights has unknown phases {sorted(unknown)}")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs to run: ``epochs``, or more when that is fewer than ``min_steps`` optimiser steps."""
        return max(self.epochs, -(-self.min_steps // max(1, steps_per_epoch)))

    @property
    def phase_weight_tuple(self) -> tuple[float, float, float]:
        pw = {"other": 1.0, "hold": 0.1, "reach": 5.0, **self.phase_weights}
        return (float(pw["other"]), float(pw["hold"]), float(pw["reach"]))


#: What ``possm train`` uses where a config file and the flags say nothing: the recipe measured on real
#: binned recordings (``benchmarks/real.py``, docs/real-data.md) and on short simulated sessions. Small
#: batches and at least 600 optimiser steps (a few minutes of data are only 6-13 batches an epoch), spikes
#: re-placed inside their bins in every window (binned data; other sessions inside their 50 ms chunk), and
#: the average of the weights.
RECIPE: dict[str, Any] = {"batch_size": 16, "lr": 2e-3, "unit_dropout": 1.0, "min_steps": 600, "epochs": 30,
                          "bin_jitter": True, "jitter_s": 0.05, "ema": 0.99}

_FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "model": ("dict",), "data": ("str", "none"), "valid_fraction": ("float",), "epochs": ("int",), "min_steps": ("int",), "batch_size": ("int",),
    "lr": ("float",), "weight_decay": ("float",), "optimizer": ("str",), "flat_fraction": ("float",),
    "window_chunks": ("int",), "unit_dropout": ("float",), "phase_weights": ("dict",), "grad_clip": ("float",),
    "seed": ("int",), "device": ("str",), "num_threads": ("int", "none"), "out": ("str",), "progress": ("bool",),
    "default_session": ("str", "none"), "bin_jitter": ("bool",), "jitter_s": ("float",), "ema": ("float",),
}


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML training config (safe loader; unknown keys rejected) over :data:`RECIPE`; ``overrides`` win."""
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"training config {str(p)!r} does not exist")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"training config {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"training config {str(p)!r} must be a mapping with sections model/data/train/out")
    flat: dict[str, Any] = {}
    for key, val in doc.items():
        if key == "train":
            if not isinstance(val, dict):
                raise ConfigError("training config: 'train' must be a mapping")
            flat.update(val)
        elif key == "data":
            if isinstance(val, dict):
                for k, v in val.items():
                    flat["data" if k == "path" else k] = v
            else:
                flat["data"] = val
        else:
            flat[key] = val
    flat.update({k: v for k, v in overrides.items() if v is not None})
    given = set(flat)
    if "min_steps" not in given and "epochs" in given:  # asked for N epochs: exactly N, not the recipe's floor
        flat["min_steps"] = 0
    flat = {**copy.deepcopy(RECIPE), **flat}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(f"training config: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return TrainConfig(**flat)
    except TypeError as exc:
        raise ConfigError(f"training config: {exc}") from None


def model_config_from(spec: dict[str, Any], sessions: list[Session]) -> ModelConfig:
    spec = copy.deepcopy(spec)
    s0 = sessions[0]
    derived: dict[str, Any] = {"readout": s0.task}
    if s0.task == "regression":
        derived.update(output_dim=len(s0.target_names), output_names=list(s0.target_names), target_scale=s0.target_scale)
    else:
        derived.update(output_dim=s0.n_classes, output_names=[f"class{i}" for i in range(s0.n_classes)])
    if "preset" in spec:
        size = spec.pop("preset")
        backbone = spec.pop("backbone", "gru")
        if not isinstance(size, str) or not isinstance(backbone, str):
            raise ConfigError(f"model: preset={size!r} and backbone={backbone!r} must be names (e.g. preset: small, backbone: gru)")
        return preset(size, backbone, **{**derived, **spec})
    return ModelConfig.from_dict({**derived, **spec})


def build_model(spec: dict[str, Any], sessions: list[Session], *, seed: int = 0) -> POSSM:
    """A fresh POSSM whose vocabularies hold every unit and session of ``sessions`` (and their
    fingerprints). Two sessions may not share an id."""
    tasks = {s.task for s in sessions}
    if len(tasks) != 1:
        raise ConfigError(f"all training sessions must share one task, got {sorted(tasks)}")
    ids = [s.session_id for s in sessions]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"two sessions share the id {dup[0]!r} (fingerprints {', '.join(s.fingerprint for s in sessions if s.session_id == dup[0])}); "
                        "give each recording its own session id")
    torch.manual_seed(seed)
    cfg = model_config_from(spec, sessions)
    units = [u for s in sessions for u in s.unit_ids]
    try:
        return POSSM(cfg, unit_ids=units, session_ids=[s.session_id for s in sessions],
                     session_units={s.session_id: list(s.unit_ids) for s in sessions},
                     session_fingerprints={s.session_id: s.identity for s in sessions})
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. backbone_kwargs of the wrong type
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model config {spec!r} does not build a model: {exc}") from None


def primary_metric(metrics: dict) -> float:
    """Higher is better: R2, accuracy, or minus the token error rate."""
    if "r2" in metrics:
        return metrics["r2"]
    if "accuracy" in metrics:
        return metrics["accuracy"]
    return -metrics["token_error_rate"]


def _save_optim(opt: torch.optim.Optimizer, path: Path, extra: dict) -> None:
    tensors, scalars = {}, {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    tmp = path.with_name(path.name + ".tmp")
    write_safetensors(tensors, tmp, metadata={"extra": json.dumps({**extra, "scalars": scalars})})
    os.replace(tmp, path)  # a crash mid-write leaves the previous state whole


def _load_optim(opt: torch.optim.Optimizer, path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            extra = json.loads(f.metadata()["extra"])
    except Exception as exc:  # noqa: BLE001 - any failure means the resume file is unusable
        raise CheckpointError(f"optimizer state {str(path)!r} is unreadable ({exc})") from None
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in [*tensors.items(), *extra.get("scalars", {}).items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    return extra


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


class WeightAverage:
    """Exponential moving average of a model's parameters (``decay`` per optimiser step, with the usual
    warm-up ``min(decay, (1 + n) / (10 + n))`` so that early steps are not swamped by the initial weights).
    :meth:`swapped` puts the averaged weights into the model for validation and checkpoints."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model, self.decay, self.n = model, float(decay), 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        for a, p in zip(self.shadow, self.model.parameters()):
            a.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def swapped(self):
        with torch.no_grad():
            live = [p.detach().clone() for p in self.model.parameters()]
            for a, p in zip(self.shadow, self.model.parameters()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, p in zip(live, self.model.parameters()):
                    p.copy_(v)


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
) -> dict:
    """Train ``params`` (default: all) of ``model`` on the sessions; returns the best metrics and
    leaves the model at the weights of its best validation epoch.

    Validation uses the held-out trials (``cfg.valid_fraction`` at the end of each session) of the
    training sessions, or ``valid_sessions`` if given. With ``out_dir`` checkpoints and metrics are
    written there.
    """
    device = torch.device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    prepared = prepare_sessions(model, train_sessions, valid_fraction=cfg.valid_fraction)
    valid_prep = prepare_sessions(model, valid_sessions, valid_fraction=cfg.valid_fraction) if valid_sessions else prepared
    readout = model.config.readout
    sampler = WindowSampler(
        prepared, readout=readout, window_chunks=cfg.window_chunks, unit_dropout=cfg.unit_dropout,
        phase_weights=cfg.phase_weight_tuple, target_scale=model.config.target_scale, n_units=model.n_units,
        max_tokens=model.config.max_tokens_per_chunk, seed=cfg.seed + start_epoch, bin_jitter=cfg.bin_jitter,
        jitter_s=cfg.jitter_s,
    )
    params = list(params) if params is not None else [p for p in model.parameters()]
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = make_optimizer(model, params, cfg)
    if optim_state is not None:
        _load_optim(opt, optim_state)
    steps_per_epoch = len(sampler.epoch(cfg.batch_size))
    epochs = cfg.epochs_for(steps_per_epoch)
    total = steps_per_epoch * epochs
    offset = start_epoch * steps_per_epoch  # resuming: continue the schedule where it stopped
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: flat_cosine(s + offset, total, flat_fraction=cfg.flat_fraction))
    best = best_so_far(out_dir, start_epoch)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    progress = contextlib.ExitStack()
    bar = progress.enter_context(progress_bar(total=total, initial=offset, desc="train")) if cfg.progress else None
    history: list[dict] = []
    best_state = None
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None  # a resumed run starts a new average
    ds = cfg.default_session if cfg.default_session in model.session_vocab else None
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            t0 = time.perf_counter()
            losses = run_epoch(model, model, sampler, sampler.epoch(cfg.batch_size), device=device, opt=opt, sched=sched,
                               params=params, grad_clip=cfg.grad_clip, bar=bar, epoch=epoch, average=average)
            meta = {"epoch": epoch, "train": {**dataclasses.asdict(cfg), "epochs_run": epochs}}
            # validation, the best state and best.* use the averaged weights (when averaging)
            with average.swapped() if average is not None else contextlib.nullcontext():
                valid = evaluate_prepared(model, valid_prep, split="valid", device=device)
                meta["valid"] = valid
                metric = primary_metric(valid)
                improved = metric > best["metric"]
                if improved:
                    best = {"epoch": epoch, "metric": metric, "metrics": valid}
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if out_dir is not None:
                        save_checkpoint(model, out_dir / "best", meta=meta, default_session=ds)
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - t0, 2), "valid": valid}
            history.append(row)
            log.info("epoch %d loss %.4f valid %s", epoch, row["train_loss"], {k: v for k, v in valid.items() if not isinstance(v, dict)})
            if out_dir is not None:
                with open(out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                save_checkpoint(model, out_dir / "last", meta=meta, default_session=ds)  # the live weights: resume
                _save_optim(opt, out_dir / "last.optim.safetensors", {"epoch": epoch})
            if on_epoch is not None:
                on_epoch(row)
    finally:
        progress.close()
    if best_state is not None:  # leave the model at its best validation epoch
        model.load_state_dict(best_state)
    return {"best_epoch": best["epoch"], "best": best["metrics"], "history": history}


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


def train(cfg: TrainConfig, *, resume: str | Path | None = None) -> dict:
    """Train a model from scratch (or resume a run directory) as ``cfg`` says."""
    if cfg.data is None:
        raise ConfigError("no training data: give data: DIR in the config or --data DIR (make some with `possm simulate`)")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    sessions = load_sessions(cfg.data)
    out_dir = Path(cfg.out)
    model, start_epoch, optim_state = model_for_run(cfg, sessions, resume)
    model.train()
    log.info("model: %s backbone, %d parameters, %d sessions, %d units", model.config.backbone, model.n_parameters(), len(sessions), model.n_units)
    result = fit(model, sessions, cfg=cfg, out_dir=out_dir, start_epoch=start_epoch, optim_state=optim_state)
    result["n_parameters"] = model.n_parameters()
    result["out"] = str(out_dir)
    return result
