"""Rotary position embedding of continuous time (as in POYO).

A head of ``head_dim`` features has its first ``rotate_dim`` features rotated by angles
``2*pi*t/period_f``, with ``rotate_dim/2`` periods log-spaced from ``t_min`` to ``t_max`` seconds
(feature f is paired with feature f + rotate_dim/2); the remaining features are left as they are.
Attention between a query at time ``tq`` and a key at time ``tk`` then depends only on ``tq - tk``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RotaryTimeEmbedding", "apply_rotary", "Rotation"]

Rotation = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (..., rotate_dim/2)


class RotaryTimeEmbedding(nn.Module):
    """Rotations for timestamps.

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

    def forward(self, t: torch.Tensor) -> Rotation:
        """Rotation (cos, sin) of times ``t`` (...) -> each (..., rotate_dim/2)."""
        ang = t.to(torch.float32).unsqueeze(-1) * self.omega
        return ang.cos(), ang.sin()


def apply_rotary(x: torch.Tensor, rot: Rotation, *, inverse: bool = False) -> torch.Tensor:
    """Rotate the first ``2 * r`` features of ``x`` (..., d) by ``rot`` (each broadcastable to
    (..., r)), or rotate them back if ``inverse``."""
    cos, sin = rot
    r = cos.shape[-1]
    x1, x2, rest = x[..., :r], x[..., r : 2 * r], x[..., 2 * r :]
    if inverse:
        sin = -sin
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1)
