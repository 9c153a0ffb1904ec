"""Rotary cross-attention (POYO style, values rotated too).

Shapes: B batch, Q queries, K keys, D query features, E context features, H heads, d head features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from possm_plugin.model.nn.rope import Rotation, apply_rotary

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

    def project_query(self, x: torch.Tensor, q_rot: Rotation) -> torch.Tensor:
        """Queries (B, Q, D) -> rotated per-head queries (B, H, Q, d)."""
        q = self.to_q(self.norm_q(x)).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        return apply_rotary(q, (q_rot[0].unsqueeze(1), q_rot[1].unsqueeze(1)))

    def attend(
        self, q: torch.Tensor, kv: torch.Tensor, q_rot: Rotation, k_rot: Rotation, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotated queries (B, H, Q, d) and projected context (B, K, 2*H*d) -> (B, Q, D)."""
        b, _, nq, _ = q.shape
        kvh = kv.unflatten(-1, (2, self.heads, self.dim_head)).permute(0, 2, 3, 1, 4)  # (B, 2, H, K, d)
        kvh = apply_rotary(kvh, (k_rot[0][:, None, None], k_rot[1][:, None, None]))  # keys and values alike
        attn_mask = None
        if mask is not None:
            attn_mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
        out = F.scaled_dot_product_attention(
            q, kvh[:, 0], kvh[:, 1], attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = apply_rotary(out, (q_rot[0].unsqueeze(1), q_rot[1].unsqueeze(1)), inverse=True)
        return self.to_out(out.transpose(1, 2).reshape(b, nq, self.heads * self.dim_head))

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
            k_rot: rotation of the key times, each (B, K, r) or (1, K, r).
            mask: (B, K) or (B, Q, K) bool, True where a key may be attended. Every query needs at least one.
            kv: projected context (B, K, 2*H*d) from :meth:`project_context`.

        Returns:
            (B, Q, D), not including the residual.
        """
        if kv is None:
            kv = self.project_context(context)
        return self.attend(self.project_query(x, q_rot), kv, q_rot, k_rot, mask)
