"""A training run's configuration: the YAML file, the recipe ``possm train`` starts from, and the model
its ``model:`` section builds (checked before any data loads: :func:`check_model_spec`)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.config import ModelConfig, preset
from possm_plugin.model.possm import POSSM

__all__ = ["RECIPE", "TrainConfig", "load_train_config", "check_model_spec", "model_config_from", "build_model"]


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
    saved checkpoints use (0: off). ``unit_dropout``: each window keeps a random fraction in
    [unit_dropout, 1] of its units (1: off; None: the recipe's for the model's task,
    :data:`RECIPE_UNIT_DROPOUT`).
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
    unit_dropout: float | None = 0.6
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
        if self.unit_dropout is not None and not 0 < self.unit_dropout <= 1:
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
RECIPE: dict[str, Any] = {"batch_size": 16, "lr": 2e-3, "unit_dropout": None, "min_steps": 600, "epochs": 30,
                          "bin_jitter": True, "jitter_s": 0.05, "ema": 0.99}

#: Unit dropout of the recipe (``unit_dropout: None``) per task: off for regression (keeping 60-100 % of
#: the units per window cost 0.03-0.05 R2 on both real sessions and on short simulated ones) and CTC
#: (token error rate 0.888 with it, 0.865 without, on the accuracy benchmark's phoneme task), 0.6 for
#: classification (trial-long windows that the model otherwise learns by heart: accuracy 0.57 -> 0.80 on
#: the accuracy benchmark's handwriting task, docs/accuracy.md).
RECIPE_UNIT_DROPOUT: dict[str, float] = {"regression": 1.0, "classification": 0.6, "ctc": 1.0}


def unit_dropout_for(cfg: TrainConfig, readout: str) -> float:
    """The minimum kept fraction of units per window that ``cfg`` asks for on a ``readout`` model."""
    return RECIPE_UNIT_DROPOUT.get(readout, 1.0) if cfg.unit_dropout is None else float(cfg.unit_dropout)

_FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "model": ("dict",), "data": ("str", "none"), "valid_fraction": ("float",), "epochs": ("int",), "min_steps": ("int",), "batch_size": ("int",),
    "lr": ("float",), "weight_decay": ("float",), "optimizer": ("str",), "flat_fraction": ("float",),
    "window_chunks": ("int",), "unit_dropout": ("float", "none"), "phase_weights": ("dict",), "grad_clip": ("float",),
    "seed": ("int",), "device": ("str",), "num_threads": ("int", "none"), "out": ("str",), "progress": ("bool",),
    "default_session": ("str", "none"), "bin_jitter": ("bool",), "jitter_s": ("float",), "ema": ("float",),
}


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML training config (safe loader; unknown keys rejected) over :data:`RECIPE`; ``overrides`` win.
    Its ``model:`` section is checked here too (:func:`check_model_spec`)."""
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
        cfg = TrainConfig(**flat)
    except TypeError as exc:
        raise ConfigError(f"training config: {exc}") from None
    check_model_spec(cfg.model)  # a typo in model: fails now, not after the data has loaded
    return cfg


def model_config_from(spec: dict[str, Any], derived: dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` of a ``model:`` section (a full mapping, or ``preset``/``backbone`` plus
    overrides) over ``derived``, the fields the data decides unless the section sets them."""
    spec = copy.deepcopy(spec)
    if "preset" in spec:
        size = spec.pop("preset")
        backbone = spec.pop("backbone", "gru")
        if not isinstance(size, str) or not isinstance(backbone, str):
            raise ConfigError(f"model: preset={size!r} and backbone={backbone!r} must be names (e.g. preset: small, backbone: gru)")
        return preset(size, backbone, **{**derived, **spec})
    return ModelConfig.from_dict({**derived, **spec})


def _derived(s0: Session) -> dict[str, Any]:
    """The model fields that the first training session decides: readout, outputs, target scale."""
    if s0.task == "regression":
        return {"readout": s0.task, "output_dim": len(s0.target_names), "output_names": list(s0.target_names),
                "target_scale": s0.target_scale}
    return {"readout": s0.task, "output_dim": s0.n_classes, "output_names": [f"class{i}" for i in range(s0.n_classes)]}


def _new_model(cfg: ModelConfig, spec: dict[str, Any], **vocab: Any) -> POSSM:
    try:
        return POSSM(cfg, **vocab)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. backbone_kwargs of the wrong type
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model config {spec!r} does not build a model: {exc}") from None


def check_model_spec(spec: dict[str, Any]) -> ModelConfig:
    """Check a ``model:`` section without any data (unknown keys, bad values, the backbone and its
    arguments) by building it once with stand-ins for the fields the data decides; raises
    :class:`ConfigError`. Takes well under a second, and leaves torch's random generator as it was."""
    names, dim = spec.get("output_names"), spec.get("output_dim")
    if names is None:  # stand-ins that agree with whatever the section sets (a classification readout checks no names)
        names = [f"out{i}" for i in range(dim)] if isinstance(dim, int) and not isinstance(dim, bool) and 0 < dim <= 4096 else ["out0"]
    if dim is None:
        dim = len(names) if isinstance(names, list) and names else 1
    cfg = model_config_from(spec, {"readout": "classification", "output_dim": dim, "output_names": names})
    with torch.random.fork_rng(devices=[]):
        _new_model(cfg, spec)
    return cfg


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
    cfg = model_config_from(spec, _derived(sessions[0]))
    return _new_model(cfg, spec, unit_ids=[u for s in sessions for u in s.unit_ids], session_ids=ids,
                      session_units={s.session_id: list(s.unit_ids) for s in sessions},
                      session_fingerprints={s.session_id: s.identity for s in sessions})
