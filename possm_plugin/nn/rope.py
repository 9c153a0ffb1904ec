"""Rotary position embedding of continuous time (as in POYO).

A head of ``head_dim`` features has its first ``rotate_dim`` features rotated pairwise by angles
``2*pi*t/period_f``, with ``rotate_dim/2`` periods log-spaced from ``t_min`` to ``t_max`` seconds; the
remaining features are left as they are. Attention between a query at time ``tq`` and a key at time
``tk`` then depends only on ``tq - tk``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RotaryTimeEmbedding", "apply_rotary"]


class RotaryTimeEmbedding(nn.Module):
    """Angles for rotary embedding of timestamps.

    Args:
        head_dim: features per attention head (64 in POSSM).
        rotate_dim: features rotated (half the head in POSSM); must be even and <= head_dim.
        t_min, t_max: shortest and longest period, in seconds.
    """

    def __init__(self, *, head_dim: int, rotate_dim: int, t_min: float = 1e-4, t_max: float = 10.0) -> None:
        super().__init__()
        if rotate_dim % 2 or rotate_dim > head_dim or rotate_dim <= 0:
            raise ValueError(f"rotate_dim must be even and in (0, head_dim={head_dim}], got {rotate_dim}")
        if not 0 < t_min < t_max:
            raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
        self.head_dim = head_dim
        self.rotate_dim = rotate_dim
        n = rotate_dim // 2
        periods = torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=torch.float64)
        omega = (2 * math.pi / periods).to(torch.float32)
        self.register_buffer("omega", omega, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Angles for times ``t`` of shape (...) -> (..., head_dim); unrotated features get angle 0."""
        ang = t.to(torch.float32).unsqueeze(-1) * self.omega  # (..., n)
        ang = ang.repeat_interleave(2, dim=-1)  # (..., rotate_dim)
        pad = self.head_dim - self.rotate_dim
        if pad:
            ang = torch.nn.functional.pad(ang, (0, pad))
        return ang


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x = x.unflatten(-1, (-1, 2))
    x0, x1 = x.unbind(-1)
    return torch.stack((-x1, x0), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """Rotate features of ``x`` (..., head_dim) by ``angles`` (broadcastable), or back if ``inverse``."""
    cos, sin = angles.cos(), angles.sin()
    if inverse:
        sin = -sin
    return x * cos + _rotate_pairs(x) * sin
