"""A lean inference step for POSSM: the same mathematics as :meth:`POSSM.step` with every
weight-only quantity folded into tables once, so a chunk costs a few dozen tensor operations.

What is folded (all exact rewrites, checked against ``POSSM.step`` in tests/test_fast.py):

- Input attention scores. A token's key before rotation depends only on its unit and the latent
  query is constant, so ``q . R(t) k_u = sum_f cos(w_f t) A[u,f] + sin(w_f t) B[u,f] + C[u]`` with
  per-unit tables A, B, C. Values are gathered per unit and rotated by the spike time.
- The rotation back by the (constant) latent query time is folded into the output projection.
- Output attention: its keys sit at constant times (0, -step, -2 step), so each slot's rotation is
  folded into a per-slot key/value projection, and the query's rotation into the output projection.
- The GRU backbone steps with ``torch.gru_cell`` per layer (S4D and Mamba use their own ``step``).

Build it with :meth:`FastStep.from_model` (or let :class:`~possm_plugin.streaming.StreamingDecoder`
do it); rebuild after the model's weights change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.gru import GRUBackbone
from .backbones.base import State
from .model import POSSM
from .nn.rope import apply_rotary

__all__ = ["FastStep"]


def _rotate_rows(w: torch.Tensor, heads: int, d: int, rot, *, inverse: bool = False) -> torch.Tensor:
    """Apply a per-head rotation to each column of ``w`` (heads*d, E) viewed as heads*d vectors."""
    wt = w.t().reshape(-1, heads, d)  # (E, H, d)
    return apply_rotary(wt, rot, inverse=inverse).reshape(-1, heads * d).t().contiguous()


class FastStep(nn.Module):
    """Inference-only step with folded tables; call ``step`` like :meth:`POSSM.step`."""

    def __init__(self) -> None:
        super().__init__()

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: POSSM) -> "FastStep":
        self = cls()
        self.model = model
        c = model.config
        enc, dec = model.enc_atn, model.dec_atn
        h, d = enc.heads, enc.dim_head
        self.heads, self.d, self.k = h, d, c.context_chunks
        self.scale = 1.0 / math.sqrt(d)
        r = model.rotary.rotate_dim // 2
        self.r = r
        self.omega = model.rotary.omega.clone()
        lat_rot = (model._latent_rot_cos, model._latent_rot_sin)
        # --- input attention tables ---------------------------------------------------------
        kv = enc.project_context(model.unit_emb.weight)  # (V, 2*H*d)
        kt, vt = kv.chunk(2, dim=-1)
        kt = kt.reshape(-1, h, d)
        q = enc.project_query(model.latent_emb.unsqueeze(0), lat_rot)[0].transpose(0, 1)  # (L, H, d)
        q1, q2, qr = q[..., :r], q[..., r : 2 * r], q[..., 2 * r :]
        k1, k2, kr = kt[..., :r], kt[..., r : 2 * r], kt[..., 2 * r :]
        # (V, L, H, F) for A and B, (V, L, H, 1) for C
        a = q1.unsqueeze(0) * k1.unsqueeze(1) + q2.unsqueeze(0) * k2.unsqueeze(1)
        b = q2.unsqueeze(0) * k1.unsqueeze(1) - q1.unsqueeze(0) * k2.unsqueeze(1)
        cc = (qr.unsqueeze(0) * kr.unsqueeze(1)).sum(-1, keepdim=True)
        n_lat = q.shape[0]
        self.n_lat = n_lat
        self.score_table = (torch.cat([a, b, cc], dim=-1) * self.scale).reshape(kv.shape[0], n_lat * h, 2 * r + 1).contiguous()
        self.value_table = vt.reshape(-1, h, d).contiguous()
        # rotation back by the latent time folded into to_out: W' = W R(-t)
        w = enc.to_out.weight  # (D, H*d)
        wt = w.reshape(w.shape[0], h, d)  # rows of W act on rotated outputs; W R^-1 == rotate W's rows by +t
        self.enc_out_w = apply_rotary(wt, (lat_rot[0][0, :1], lat_rot[1][0, :1])).reshape(w.shape[0], h * d).contiguous()
        self.enc_out_b = enc.to_out.bias.clone()
        self.latent = model.latent_emb.clone()  # (L, D)
        self.enc_ffn = model.enc_ffn
        # --- backbone ----------------------------------------------------------------------------
        self.backbone = model.backbone
        self.gru = None
        if isinstance(model.backbone, GRUBackbone):
            rnn = model.backbone.rnn
            self.gru = [
                tuple(getattr(rnn, f"{n}_l{i}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                for i in range(rnn.num_layers)
            ]
        # --- output attention ----------------------------------------------------------------
        ctx_cos, ctx_sin = model._ctx_rot_cos[0], model._ctx_rot_sin[0]  # (k, r)
        wkv = dec.to_kv.weight  # (2*H*d, E)
        wk, wv = wkv.chunk(2, dim=0)
        slots = []
        for j in range(self.k):
            rot = (ctx_cos[j], ctx_sin[j])
            # keys/values of slot j rotated by its constant time: R_j W
            rk = apply_rotary(wk.t().reshape(-1, h, d), rot).reshape(-1, h * d).t()
            rv = apply_rotary(wv.t().reshape(-1, h, d), rot).reshape(-1, h * d).t()
            slots.append(torch.cat([rk, rv], 0))
        self.dec_kv_wt = torch.stack(slots, 0).transpose(1, 2).contiguous()  # (k, E, 2*H*d)
        self.slot_offsets = torch.arange(self.k, device=model.task_emb.device) - (self.k - 1)
        self.dec_norm = dec.norm_ctx
        q_rot = (model._query_rot_cos, model._query_rot_sin)
        sess_x = model.session_emb.weight + model.task_emb  # (S, D)
        self.sess_x = sess_x.clone()
        self.sess_q = dec.project_query(sess_x.unsqueeze(1), q_rot)[:, :, 0].contiguous() * self.scale  # (S, H, d)
        wo = dec.to_out.weight
        self.dec_out_w = apply_rotary(wo.reshape(wo.shape[0], h, d), (q_rot[0][0, :1], q_rot[1][0, :1])).reshape(wo.shape[0], h * d).contiguous()
        self.dec_out_b = dec.to_out.bias.clone()
        self.dec_ffn = model.dec_ffn
        self.readout = model.readout
        return self

    def _backbone_step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if self.gru is None:
            return self.backbone.step(z, state)
        hs = state[0]  # (B, layers, H)
        x, new = z, []
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.gru):
            x = torch.gru_cell(x, hs[:, i], w_ih, w_hh, b_ih, b_hh)
            new.append(x)
        return x, (torch.stack(new, 1),)

    @torch.inference_mode()
    def step(self, units: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, session: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Tokens (B, N) of one chunk per stream -> outputs (B, C) and the new state."""
        bsz = units.shape[0]
        *bb_state, hist, seen = state
        # input attention
        ang = times.unsqueeze(-1) * self.omega  # (B, N, F)
        cos, sin = ang.cos(), ang.sin()
        feats = torch.cat([cos, sin, torch.ones_like(cos[..., :1])], -1)  # (B, N, 2F+1)
        scores = (self.score_table[units] * feats.unsqueeze(2)).sum(-1)  # (B, N, L*H)
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        p = scores.softmax(1).view(bsz, -1, self.n_lat, self.heads).permute(0, 3, 2, 1)  # (B, H, L, N)
        v = apply_rotary(self.value_table[units], (cos.unsqueeze(2), sin.unsqueeze(2)))  # (B, N, H, d)
        o = torch.matmul(p, v.transpose(1, 2)).transpose(1, 2).reshape(bsz, self.n_lat, -1)  # (B, L, H*d)
        x = self.latent + F.linear(o, self.enc_out_w, self.enc_out_b)
        x = x + self.enc_ffn(x)
        z = x.reshape(bsz, -1)
        # backbone
        y, bb_new = self._backbone_step(z, tuple(bb_state))
        # output attention over the last k outputs
        ctx = torch.cat([hist, y.unsqueeze(1)], dim=1)  # (B, k, E)
        kv = torch.bmm(self.dec_norm(ctx).transpose(0, 1), self.dec_kv_wt).transpose(0, 1)  # (B, k, 2*H*d)
        kv = kv.reshape(bsz, self.k, 2, self.heads, self.d)
        s = (kv[:, :, 0] * self.sess_q[session].unsqueeze(1)).sum(-1)  # (B, k, H)
        valid = (self.slot_offsets + seen.unsqueeze(1)) >= 0  # (B, k)
        s = s.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        o = (s.softmax(1).unsqueeze(-1) * kv[:, :, 1]).sum(1).reshape(bsz, -1)  # (B, H*d)
        x = self.sess_x[session] + F.linear(o, self.dec_out_w, self.dec_out_b)
        x = x + self.dec_ffn(x)
        return self.readout(x), (*bb_new, ctx[:, 1:], seen + 1)
