"""The recurrent backbone interface and its registry.

A backbone maps a sequence of per-chunk latents to a sequence of outputs while carrying a state.
Shapes: B batch (streams), T chunks, I input features, O output features.

Every backbone offers
- ``forward(x, state=None) -> (y, state)``: the sequence form used in training, x (B, T, I);
- ``step(x, state) -> (y, state)``: one chunk, x (B, I), O(1) in the sequence length;
- ``initial_state(batch_size, device=..., dtype=...) -> State``: a tuple of tensors, each with the
  batch as its first dimension, so streams can be batched (``cat``) and reset one by one (``[b] = 0``).

Running ``step`` over T chunks from the initial state equals ``forward`` on the T chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from possm_plugin.errors import ConfigError, PluginError

__all__ = ["Backbone", "State", "register_backbone", "get_backbone", "available_backbones"]

State = tuple[torch.Tensor, ...]


class Backbone(nn.Module):
    """Base class of backbones; subclasses set ``d_input`` and ``d_output``."""

    d_input: int
    d_output: int

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Default sequence form: a loop of ``step`` (exact, O(T))."""
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1), state


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str, factory: Callable[..., Backbone], *, replace: bool = False) -> None:
    """Make ``factory(d_input=..., **kwargs)`` available as backbone ``name``."""
    if not name or not isinstance(name, str):
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not factory and not replace:
        raise PluginError(f"backbone {name!r} is already registered by {_REGISTRY[name]!r}")
    _REGISTRY[name] = factory


def _ensure_loaded() -> None:
    # built-ins, then everything that plugins register
    from possm_plugin.model.backbones import gru, mamba, s4d  # noqa: F401

    try:
        from possm_plugin.plugins.manager import load_backbones
    except ImportError:  # plugin machinery not available: built-ins only
        return
    load_backbones(register_backbone)


def get_backbone(name: str) -> Callable[..., Backbone]:
    if name not in _REGISTRY:
        _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"backbone {name!r} is unknown; available: {sorted(_REGISTRY)} "
            f"(third-party backbones register through the 'possm_plugin' entry-point group)"
        ) from None


def available_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)
