"""Rotary cross-attention (POYO style, values rotated too).

Shapes: B batch, Q queries, K keys, D query features, E context features, H heads, d head features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import Rotation, apply_rotary

__all__ = ["RotaryCrossAttention"]


class RotaryCrossAttention(nn.Module):
    """Queries attend to a context; queries, keys and values are rotated by their times.

    The output of each head is rotated back by the query time, so what a query receives depends only
    on the time differences between it and the keys. LayerNorm is applied to both sides.

    Args:
        dim: query features D.
        context_dim: context features E (defaults to D).
        heads, dim_head: attention heads and features per head.
        dropout: attention dropout (training only).
    """

    def __init__(
        self, *, dim: int, context_dim: int | None = None, heads: int = 1, dim_head: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        context_dim = context_dim or dim
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def project_context(self, context: torch.Tensor) -> torch.Tensor:
        """Keys and values of a context (..., E) -> (..., 2*H*d). Row-wise, so a table of
        per-unit contexts can be projected once and gathered per token."""
        return self.to_kv(self.norm_ctx(context))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        q_rot: Rotation,
        k_rot: Rotation,
        mask: torch.Tensor | None = None,
        *,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: queries (B, Q, D).
            context: keys/values (B, K, E), or None when ``kv`` is given.
            q_rot: rotation of the query times, each (B, Q, r) or (1, Q, r).
            k_rot: rotation of the key times, each (B, K, r).
            mask: (B, K) or (B, Q, K) bool, True where a key may be attended. Every query needs at least one.
            kv: projected context (B, K, 2*H*d) from :meth:`project_context`.

        Returns:
            (B, Q, D), not including the residual.
        """
        b, nq, _ = x.shape
        if kv is None:
            kv = self.project_context(context)
        q = self.to_q(self.norm_q(x))
        k, v = kv.chunk(2, dim=-1)
        # (B, H, N, d)
        q = q.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        k = k.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        v = v.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        qr = (q_rot[0].unsqueeze(1), q_rot[1].unsqueeze(1))
        kr = (k_rot[0].unsqueeze(1), k_rot[1].unsqueeze(1))
        q = apply_rotary(q, qr)
        k = apply_rotary(k, kr)
        v = apply_rotary(v, kr)
        attn_mask = None
        if mask is not None:
            attn_mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = apply_rotary(out, qr, inverse=True)
        out = out.transpose(1, 2).reshape(b, nq, self.heads * self.dim_head)
        return self.to_out(out)
