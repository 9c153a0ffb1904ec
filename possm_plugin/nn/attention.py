"""Rotary cross-attention (POYO style, values rotated too).

Shapes: B batch, Q queries, K keys, D query features, E context features, H heads, d head features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rotary

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

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        q_angles: torch.Tensor,
        k_angles: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: queries (B, Q, D).
            context: keys/values (B, K, E).
            q_angles: rotary angles of the query times (B, Q, d) or (1, Q, d).
            k_angles: rotary angles of the key times (B, K, d).
            mask: (B, K) or (B, Q, K) bool, True where a key may be attended. Every query needs at least one.

        Returns:
            (B, Q, D), not including the residual.
        """
        b, nq, _ = x.shape
        q = self.to_q(self.norm_q(x))
        k, v = self.to_kv(self.norm_ctx(context)).chunk(2, dim=-1)
        # (B, H, N, d)
        q = q.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        k = k.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        v = v.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        qa, ka = q_angles.unsqueeze(1), k_angles.unsqueeze(1)
        q = apply_rotary(q, qa)
        k = apply_rotary(k, ka)
        v = apply_rotary(v, ka)
        attn_mask = None
        if mask is not None:
            attn_mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = apply_rotary(out, qa, inverse=True)
        out = out.transpose(1, 2).reshape(b, nq, self.heads * self.dim_head)
        return self.to_out(out)
