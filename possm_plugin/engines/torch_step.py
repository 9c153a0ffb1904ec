"""The torch engines: the folded step in torch (any device, any backbone), and ``model.step`` itself.

:class:`TorchEngine` runs the mathematics of :meth:`POSSM.step` over the tables of
:func:`~possm_plugin.engines.fold.fold`, on the model's device (the engine for CUDA). Its backbone
step uses the folded GRU, S4D or Mamba layers; a backbone the fold does not know (a third party's) is
stepped with its own ``step``. :class:`ReferenceEngine` calls ``model.step`` (the decoder's
``fast=False``). Both keep the slots' state as torch tensors on the device.

Shape letters: B slots in the step, N tokens, L latents, D token features, H heads, d head features,
r rotated pairs, k context chunks, E backbone output features, C outputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from possm_plugin.engines.base import Engine
from possm_plugin.engines.fold import FFNFold, Folded, GRUFold, Linear, MambaFold, S4DFold
from possm_plugin.model.backbones.base import State
from possm_plugin.model.possm import POSSM

__all__ = ["ReferenceEngine", "TorchEngine"]


def _lin(x: torch.Tensor, wb: Linear) -> torch.Tensor:
    """x (..., in) @ W^T (in, out) + b, one fused call."""
    if x.dim() == 2:
        return torch.addmm(wb[1], x, wb[0])
    return torch.addmm(wb[1], x.reshape(-1, x.shape[-1]), wb[0]).reshape(*x.shape[:-1], -1)


def _ffn(x: torch.Tensor, f: FFNFold) -> torch.Tensor:
    """x + FFN(LayerNorm(x)) with the LayerNorm's affine part folded into ``proj_in``."""
    h = _lin(F.layer_norm(x, x.shape[-1:], eps=f.eps), f.proj_in)
    return x + _lin(h[..., : f.half] * F.gelu(h[..., f.half :]), f.proj_out)


def _gru(cells: list, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """Stacked GRU cells; ``cells``: per layer (W_ih (3E, in), W_hh (3E, E), b_ih, b_hh)."""
    hs = state[0]  # (B, layers, E)
    new = []
    for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(cells):
        x = torch.gru_cell(x, hs[:, i], w_ih, w_hh, b_ih, b_hh)
        new.append(x)
    return x, (torch.stack(new, 1),)


def _s4d(bb: S4DFold, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    st = state[0]  # (B, layers, E, N2, 2): complex states as (re, im)
    h = _lin(x, bb.proj)
    new = []
    for i, ly in enumerate(bb.layers):
        u = F.layer_norm(h, h.shape[-1:], ly.norm_w, ly.norm_b, ly.eps)
        s_re, s_im = st[:, i, ..., 0], st[:, i, ..., 1]
        n_re = ly.a_re * s_re - ly.a_im * s_im + u.unsqueeze(-1)
        n_im = ly.a_re * s_im + ly.a_im * s_re
        new.append(torch.stack([n_re, n_im], -1))
        y = (n_re * ly.c_re + n_im * ly.c_im).sum(-1) + u * ly.d_skip
        h = h + F.glu(_lin(F.gelu(y), ly.out), dim=-1)
    return F.layer_norm(h, h.shape[-1:], bb.norm_w, bb.norm_b, bb.eps), (torch.stack(new, 1),)


def _mamba(bb: MambaFold, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    conv_all, ssm_all = state  # (B, layers, di, d_conv-1), (B, layers, di, ds)
    h = _lin(x, bb.proj)
    convs, ssms = [], []
    for i, blk in enumerate(bb.blocks):
        xz = _lin(F.layer_norm(h, h.shape[-1:], eps=blk.eps), blk.in_proj)
        u, z = xz[:, : blk.d_inner], xz[:, blk.d_inner :]
        window = torch.cat([conv_all[:, i], u.unsqueeze(-1)], dim=-1)  # (B, di, d_conv)
        convs.append(window[..., 1:])
        u = F.silu((window * blk.conv_w).sum(-1) + blk.conv_b)
        dbc = _lin(u, blk.x_proj)
        dr, ds = blk.dt_rank, blk.d_state
        dt = F.softplus(_lin(dbc[:, :dr], blk.dt_proj))
        ssm = torch.exp(dt.unsqueeze(-1) * blk.a) * ssm_all[:, i] + (dt * u).unsqueeze(-1) * dbc[:, None, dr : dr + ds]
        ssms.append(ssm)
        y = (ssm * dbc[:, None, dr + ds :]).sum(-1) + blk.d_skip * u
        h = h + _lin(y * F.silu(z), blk.out_proj)
    return F.layer_norm(h, h.shape[-1:], bb.norm_w, bb.norm_b, bb.eps), (torch.stack(convs, 1), torch.stack(ssms, 1))


class _TorchState(Engine):
    """State as torch tensors on ``device``; every call runs in inference mode."""

    def __init__(self, model: POSSM, *, sessions: np.ndarray, device: torch.device) -> None:
        self.device = device
        with torch.inference_mode():
            super().__init__(state=model.initial_state(len(sessions), device=device), fresh=model.initial_state(1, device=device),
                             sessions=torch.as_tensor(np.asarray(sessions, np.int64), device=device))

    def reset(self, slot: int | None = None) -> None:
        with torch.inference_mode():
            super().reset(slot)

    def load_state(self, state: tuple) -> None:
        with torch.inference_mode():
            for x, y in zip(self._state, state):
                x.copy_(torch.as_tensor(y, device=self.device))

    def step(self, units, times, mask, slots=None) -> np.ndarray:
        with torch.inference_mode():
            return super().step(units, times, mask, slots)

    def warm(self, slot: int) -> None:
        with torch.inference_mode():
            super().warm(slot)

    def _run(self, units, times, mask, sessions, state):
        dev = self.device
        out, new = self._step(torch.as_tensor(units).to(dev), torch.as_tensor(times).to(dev), torch.as_tensor(mask).to(dev), sessions, state)
        return out.float().cpu().numpy(), new

    def _step(self, units, times, mask, sessions, state):
        raise NotImplementedError


class TorchEngine(_TorchState):
    """The folded step in torch; outputs come out times the fold's output scale."""

    name = "torch"

    def __init__(self, model: POSSM, folded: Folded, *, sessions: np.ndarray, device: torch.device) -> None:
        super().__init__(model, sessions=sessions, device=device)
        self.f = folded
        self.backbone = model.backbone
        bb = folded.backbone
        # torch.gru_cell takes (3E, in) weights: the folded tables' transposes, made contiguous once
        self._cells = [(wi.t().contiguous(), wh.t().contiguous(), bi, bh) for wi, bi, wh, bh in bb.layers] if isinstance(bb, GRUFold) else None

    def _backbone(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        bb = self.f.backbone
        if isinstance(bb, GRUFold):
            return _gru(self._cells, z, state)
        if isinstance(bb, S4DFold):
            return _s4d(bb, z, state)
        if isinstance(bb, MambaFold):
            return _mamba(bb, z, state)
        return self.backbone.step(z, state)  # a backbone the fold does not know

    def encode(self, units: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Input attention and its FFN: tokens (B, N) -> backbone input (B, L*D)."""
        f = self.f
        bsz, n = units.shape
        h, d, r = f.heads, f.d, f.r
        ang = times.to(f.omega.dtype).unsqueeze(-1) * f.omega  # (B, N, r)
        cos, sin = ang.cos(), ang.sin()
        feats = torch.cat([cos, sin, torch.ones_like(cos[..., :1])], -1)  # (B, N, 2r+1)
        g = f.unit_table[units]  # (B, N, L*H*(2r+1) + H*d)
        scores = (g[..., : f.n_score].reshape(bsz, n, -1, 2 * r + 1) * feats.unsqueeze(2)).sum(-1)  # (B, N, L*H)
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        p = scores.softmax(1).reshape(bsz, n, f.n_lat, h).permute(0, 3, 2, 1)  # (B, H, L, N)
        v = g[..., f.n_score :].reshape(bsz, n, h, d)
        c4, s4 = cos.unsqueeze(2), sin.unsqueeze(2)
        v1, v2 = v[..., :r], v[..., r : 2 * r]
        v = torch.cat([v1 * c4 - v2 * s4, v1 * s4 + v2 * c4, v[..., 2 * r :]], -1)  # rotated by the spike times
        o = torch.matmul(p, v.transpose(1, 2)).transpose(1, 2).reshape(bsz, f.n_lat, h * d)  # (B, L, H*d)
        x = f.latent + _lin(o, f.enc_out)
        return _ffn(x, f.enc_ffn).reshape(bsz, -1)

    def decode(self, y: torch.Tensor, hist: torch.Tensor, seen: torch.Tensor, sessions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output attention over the last k backbone outputs, FFN, readout -> outputs (B, C), context (B, k, E)."""
        f = self.f
        bsz = y.shape[0]
        ctx = torch.cat([hist, y.unsqueeze(1)], dim=1)  # (B, k, E)
        cn = F.layer_norm(ctx, ctx.shape[-1:], eps=f.dec_eps)
        kv = (torch.bmm(cn.transpose(0, 1), f.dec_kv_w) + f.dec_kv_b.unsqueeze(1)).transpose(0, 1)  # (B, k, 2*H*d)
        kv = kv.reshape(bsz, f.k, 2, f.heads, f.d)
        s = (kv[:, :, 0] * f.sess_q[sessions].unsqueeze(1)).sum(-1)  # (B, k, H)
        valid = (f.slot_offsets + seen.unsqueeze(1)) >= 0  # (B, k)
        s = s.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        o = (s.softmax(1).unsqueeze(-1) * kv[:, :, 1]).sum(1).reshape(bsz, -1)  # (B, H*d)
        x = _ffn(f.sess_x[sessions] + _lin(o, f.dec_out), f.dec_ffn)
        return _lin(x, f.readout), ctx

    def _step(self, units, times, mask, sessions, state):
        *bb_state, hist, seen = state
        y, bb_new = self._backbone(self.encode(units, times, mask), tuple(bb_state))
        out, ctx = self.decode(y, hist, seen, sessions)
        return out, (*bb_new, ctx[:, 1:], seen + 1)


class ReferenceEngine(_TorchState):
    """:meth:`POSSM.step` itself (the training graph, one chunk at a time), outputs times ``output_scale``."""

    name = "reference"

    def __init__(self, model: POSSM, *, sessions: np.ndarray, device: torch.device, output_scale: float = 1.0) -> None:
        super().__init__(model, sessions=sessions, device=device)
        self.model, self.output_scale = model, float(output_scale)

    def _step(self, units, times, mask, sessions, state):
        out, new = self.model.step(units, times, mask, sessions, state)
        return (out * self.output_scale if self.output_scale != 1.0 else out), new
