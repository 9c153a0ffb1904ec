"""Model configuration: a dataclass that fully rebuilds a POSSM, with named presets."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from possm_plugin.errors import ConfigError

__all__ = ["ModelConfig", "PRESETS", "preset"]

READOUTS = ("regression", "classification", "ctc")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a POSSM except its vocabularies and weights.

    Attributes:
        dim: token / latent features D.
        dim_head, cross_heads: attention head size and heads, in both cross-attentions.
        num_latents: latent queries per chunk (flattened into the backbone input).
        ffn_mult: GEGLU feed-forward hidden multiple (Linear(D, 2*m*D) -> Linear(m*D, D)).
        ffn_dropout, atn_dropout: dropout rates (training only).
        backbone: registered backbone name (``gru``, ``s4d``, ``mamba`` or a plugin's).
        backbone_kwargs: keyword arguments of the backbone (``hidden``, ``layers``, ...).
        context_chunks: backbone outputs the output attention sees (k=3: chunks j-2..j).
        chunk_width, chunk_step: chunk timing in seconds.
        readout: ``regression`` (MSE), ``classification`` (cross-entropy) or ``ctc``.
        output_dim: regression targets, or classes (CTC adds its blank as class 0 internally).
        output_names: names of the regression outputs (LSL channel labels), e.g. ``["vx", "vy"]``.
        target_scale: the model predicts targets / target_scale; predictions are scaled back.
        t_min, t_max: shortest and longest rotary period in seconds.
        emb_init_scale: std of new embedding rows.
        max_tokens_per_chunk: spikes beyond this in one chunk are dropped (and counted).
    """

    dim: int = 64
    dim_head: int = 64
    cross_heads: int = 1
    num_latents: int = 1
    ffn_mult: int = 4
    ffn_dropout: float = 0.2
    atn_dropout: float = 0.0
    backbone: str = "gru"
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"hidden": 256, "layers": 1})
    context_chunks: int = 3
    chunk_width: float = 0.05
    chunk_step: float = 0.05
    readout: str = "regression"
    output_dim: int = 2
    output_names: list[str] = field(default_factory=lambda: ["vx", "vy"])
    target_scale: float = 1.0
    t_min: float = 1e-4
    t_max: float = 10.0
    emb_init_scale: float = 0.02
    max_tokens_per_chunk: int = 4096

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"model config: {name}={getattr(self, name)!r} {why}")

        for name in ("ffn_dropout", "atn_dropout", "chunk_width", "chunk_step", "target_scale", "t_min", "t_max", "emb_init_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
        for name in ("backbone", "readout"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "must be a string")
        if not isinstance(self.output_names, list) or not all(isinstance(n, str) for n in self.output_names):
            raise bad("output_names", "must be a list of strings")
        for name in ("dim", "dim_head", "cross_heads", "num_latents", "ffn_mult", "context_chunks", "output_dim", "max_tokens_per_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise bad(name, "must be a positive integer")
        if self.dim_head % 4:
            raise bad("dim_head", "must be a multiple of 4 (half of it is rotated in pairs)")
        for name in ("ffn_dropout", "atn_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise bad(name, "must be in [0, 1)")
        if not (self.chunk_width > 0 and 0 < self.chunk_step <= self.chunk_width):
            raise ConfigError(
                f"model config: need 0 < chunk_step <= chunk_width, got chunk_width={self.chunk_width}, "
                f"chunk_step={self.chunk_step}"
            )
        if self.readout not in READOUTS:
            raise bad("readout", f"must be one of {READOUTS}")
        if self.readout == "regression" and len(self.output_names) != self.output_dim:
            raise ConfigError(
                f"model config: output_names {self.output_names} must name each of the output_dim={self.output_dim} outputs"
            )
        if not isinstance(self.backbone_kwargs, dict):
            raise bad("backbone_kwargs", "must be a mapping")
        if not (0 < self.t_min < self.t_max):
            raise ConfigError(f"model config: need 0 < t_min < t_max, got {self.t_min}, {self.t_max}")
        if not self.target_scale > 0:
            raise bad("target_scale", "must be positive")

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config: unknown key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**copy.deepcopy(d))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"model config: {exc}") from None


# Sizes follow the paper and the authors' released code: small (single session) about 0.4-0.7M
# parameters, o-POSSM (multi-session) about 5-9M, for each backbone (see docs/model.md for counts).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "gru": {"dim": 64, "backbone": "gru", "backbone_kwargs": {"hidden": 256, "layers": 1}},
        "s4d": {"dim": 64, "backbone": "s4d", "backbone_kwargs": {"hidden": 256, "layers": 3, "d_state": 64}},
        "mamba": {"dim": 64, "backbone": "mamba", "backbone_kwargs": {"hidden": 160, "layers": 2, "d_state": 16}},
    },
    "opossm": {
        "gru": {"dim": 256, "backbone": "gru", "backbone_kwargs": {"hidden": 512, "layers": 4}},
        "s4d": {"dim": 256, "backbone": "s4d", "backbone_kwargs": {"hidden": 512, "layers": 6, "d_state": 64}},
        "mamba": {"dim": 256, "backbone": "mamba", "backbone_kwargs": {"hidden": 384, "layers": 4, "d_state": 16}},
    },
}


def preset(size: str, backbone: str = "gru", **overrides: Any) -> ModelConfig:
    """A named configuration: ``size`` is ``small`` or ``opossm``; ``overrides`` replace fields."""
    try:
        base = PRESETS[size][backbone]
    except KeyError:
        raise ConfigError(
            f"no preset {size!r}/{backbone!r}; sizes: {sorted(PRESETS)}, backbones: {sorted(PRESETS['small'])}"
        ) from None
    d = copy.deepcopy(base)
    d.update(overrides)
    return ModelConfig.from_dict(d)
