"""One folding of a trained POSSM into the tables every inference engine reads.

:func:`fold` rewrites the weight-only parts of :meth:`POSSM.step` once (all exact rewrites, up to
float rounding; tests/engines/test_engines.py checks every engine against ``model.step``):

- Input attention scores. A token's key before rotation depends only on its unit and the latent
  queries are constant, so ``q . R(t) k_u = sum_f cos(w_f t) A[u,f] + sin(w_f t) B[u,f] + C[u]`` with
  per-unit tables A, B, C (scaled by 1/sqrt(d)); one row per unit also holds the unit's value.
- The rotation back by the (constant) latent query time is folded into the output projection.
- Output attention: its keys sit at constant times (0, -step, -2 step), so each slot's rotation is
  folded into a per-slot key/value projection, and the query's rotation into the output projection;
  the session queries (and the session rows added to the output) are precomputed.
- LayerNorm folded forward: a LayerNorm whose output feeds only a linear map (the FFNs', the output
  attention's context norm, Mamba's block norm) becomes a plain standardisation, its weight and bias
  moved into that map: ``(n * w + b_ln) @ W^T + b = n @ (diag(w) W^T) + (b_ln @ W^T + b)``.
- The readout times ``output_scale`` (the decoder passes the model's ``target_scale`` for regression).
- Backbone layers of the built-in GRU, S4D and Mamba (:class:`GRUFold`, :class:`S4DFold`,
  :class:`MambaFold`); a backbone it does not know folds to None, and only the torch engine, which
  then calls the backbone's own ``step``, can run it.

Tables are torch tensors on the model's device, transposed for ``x @ w`` (in, out); they are copies:
fold again after the model's weights change. Shape letters: V unit rows, S session rows, L latents,
D token features, H heads, d head features, r rotated pairs, k context chunks, E backbone output
features, C outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from possm_plugin.model.backbones.gru import GRUBackbone
from possm_plugin.model.backbones.mamba import MambaBackbone
from possm_plugin.model.backbones.s4d import S4DBackbone
from possm_plugin.model.nn.rope import apply_rotary
from possm_plugin.model.possm import POSSM

__all__ = ["FFNFold", "Folded", "GRUFold", "Linear", "MambaFold", "S4DFold", "fold", "fold_supported"]

Linear = tuple[torch.Tensor, torch.Tensor]  # (W^T (in, out), bias (out,)); a zero bias where the layer has none


@dataclass(frozen=True)
class FFNFold:
    """``x + FFN(LayerNorm(x))`` with the LayerNorm standardising only (its affine part is in ``proj_in``)."""

    eps: float
    proj_in: Linear  # (D, 2 m D)
    proj_out: Linear  # (m D, D)
    half: int  # m D


@dataclass(frozen=True)
class GRUFold:
    """Per layer (W_ih^T (in, 3E), b_ih (3E,), W_hh^T (E, 3E), b_hh (3E,)); gates r, z, n in that order."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], ...]
    hidden: int


@dataclass(frozen=True)
class S4DLayerFold:
    """One S4D layer: LayerNorm (affine kept), ``s <- abar s + u``, ``y = sum_n s_re c_re + s_im c_im + D u``,
    GELU, ``out`` (E, 2E), GLU, residual. ``c = 2 C Bbar`` with the sign of its imaginary part flipped."""

    norm_w: torch.Tensor
    norm_b: torch.Tensor
    eps: float
    a_re: torch.Tensor  # (E, N2)
    a_im: torch.Tensor
    c_re: torch.Tensor  # (E, N2)
    c_im: torch.Tensor
    d_skip: torch.Tensor  # (E,)
    out: Linear


@dataclass(frozen=True)
class S4DFold:
    proj: Linear  # (L*D, E)
    layers: tuple[S4DLayerFold, ...]
    norm_w: torch.Tensor
    norm_b: torch.Tensor
    eps: float


@dataclass(frozen=True)
class MambaBlockFold:
    """One Mamba block: its LayerNorm folded into ``in_proj``; ``a = -exp(A_log)``."""

    eps: float
    in_proj: Linear  # (E, 2 di)
    conv_w: torch.Tensor  # (di, d_conv)
    conv_b: torch.Tensor  # (di,)
    x_proj: Linear  # (di, dt_rank + 2 ds)
    dt_proj: Linear  # (dt_rank, di)
    a: torch.Tensor  # (di, ds)
    d_skip: torch.Tensor  # (di,)
    out_proj: Linear  # (di, E)
    d_inner: int
    d_state: int
    dt_rank: int


@dataclass(frozen=True)
class MambaFold:
    proj: Linear
    blocks: tuple[MambaBlockFold, ...]
    norm_w: torch.Tensor
    norm_b: torch.Tensor
    eps: float


@dataclass(frozen=True)
class Folded:
    """The folded tables of one POSSM (see the module docstring)."""

    heads: int
    d: int
    r: int
    n_lat: int
    k: int
    dim: int
    omega: torch.Tensor  # (r,) rotary frequencies
    unit_table: torch.Tensor  # (V, L*H*(2r+1) + H*d): score rows [A | B | C] per (latent, head), then the value
    n_score: int  # L*H*(2r+1): where the value starts in a unit row
    enc_out: Linear  # (H*d, D), rotated back by the latent time
    latent: torch.Tensor  # (L, D)
    enc_ffn: FFNFold
    dec_eps: float  # the output attention's context LayerNorm (standardising only)
    dec_kv_w: torch.Tensor  # (k, E, 2*H*d): per slot, its rotation and the LayerNorm's weight folded in
    dec_kv_b: torch.Tensor  # (k, 2*H*d)
    slot_offsets: torch.Tensor  # (k,) int64: slot j holds chunk j - (k-1) relative to the current one
    sess_q: torch.Tensor  # (S, H, d) session queries, scaled by 1/sqrt(d)
    sess_x: torch.Tensor  # (S, D)
    dec_out: Linear  # (H*d, D)
    dec_ffn: FFNFold
    readout: Linear  # (D, C), times the output scale
    backbone: GRUFold | S4DFold | MambaFold | None


def fold_supported(model: POSSM) -> bool:
    """Whether :func:`fold` folds ``model``'s backbone (the built-in GRU, S4D and Mamba; a subclass may
    change ``step`` and is not trusted)."""
    return type(model.backbone) in (GRUBackbone, S4DBackbone, MambaBackbone)


def _c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous()


def _lin(layer: nn.Linear) -> Linear:
    w = layer.weight
    b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if layer.bias is None else layer.bias
    return _c(w.t()), _c(b)


def _fold_ln(ln: nn.LayerNorm, lin: Linear) -> Linear:
    """``Linear(LayerNorm(x))`` as ``Linear'(standardise(x))``."""
    wt, b = lin
    return _c(ln.weight.unsqueeze(1) * wt), _c(ln.bias @ wt + b)


def _ffn(seq: nn.Sequential) -> FFNFold:
    ln, ff = seq[0], seq[1]
    return FFNFold(eps=float(ln.eps), proj_in=_fold_ln(ln, _lin(ff.proj_in)), proj_out=_lin(ff.proj_out), half=ff.proj_out.in_features)


def _fold_backbone(bb: nn.Module) -> GRUFold | S4DFold | MambaFold | None:
    if type(bb) is GRUBackbone:
        rnn = bb.rnn
        layers = tuple(
            (_c(getattr(rnn, f"weight_ih_l{i}").t()), _c(getattr(rnn, f"bias_ih_l{i}")),
             _c(getattr(rnn, f"weight_hh_l{i}").t()), _c(getattr(rnn, f"bias_hh_l{i}")))
            for i in range(rnn.num_layers)
        )
        return GRUFold(layers=layers, hidden=bb.d_output)
    if type(bb) is S4DBackbone:
        layers = []
        for layer in bb.layers:
            abar, cb, _ = layer._discrete()
            c2 = 2.0 * cb
            layers.append(S4DLayerFold(
                norm_w=_c(layer.norm.weight), norm_b=_c(layer.norm.bias), eps=float(layer.norm.eps),
                a_re=_c(abar.real), a_im=_c(abar.imag), c_re=_c(c2.real), c_im=_c(-c2.imag),
                d_skip=_c(layer.D), out=_lin(layer.out),
            ))
        return S4DFold(proj=_lin(bb.proj), layers=tuple(layers), norm_w=_c(bb.norm.weight), norm_b=_c(bb.norm.bias), eps=float(bb.norm.eps))
    if type(bb) is MambaBackbone:
        blocks = tuple(
            MambaBlockFold(
                eps=float(blk.norm.eps), in_proj=_fold_ln(blk.norm, _lin(blk.in_proj)), conv_w=_c(blk.conv_weight),
                conv_b=_c(blk.conv_bias), x_proj=_lin(blk.x_proj), dt_proj=_lin(blk.dt_proj), a=_c(-torch.exp(blk.A_log)),
                d_skip=_c(blk.D), out_proj=_lin(blk.out_proj), d_inner=blk.d_inner, d_state=blk.d_state, dt_rank=blk.dt_rank,
            )
            for blk in bb.blocks
        )
        return MambaFold(proj=_lin(bb.proj), blocks=blocks, norm_w=_c(bb.norm.weight), norm_b=_c(bb.norm.bias), eps=float(bb.norm.eps))
    return None


@torch.no_grad()
def fold(model: POSSM, *, output_scale: float = 1.0) -> Folded:
    """Fold ``model``'s weights into the engines' tables; outputs come out times ``output_scale``."""
    enc, dec = model.enc_atn, model.dec_atn
    h, d, k = enc.heads, enc.dim_head, model.config.context_chunks
    scale = 1.0 / math.sqrt(d)
    r = model.rotary.rotate_dim // 2
    lat_rot = (model._latent_rot_cos, model._latent_rot_sin)
    # input attention: per-unit score tables and values
    kv = enc.project_context(model.unit_emb.weight)  # (V, 2*H*d)
    kt, vt = kv.chunk(2, dim=-1)
    kt = kt.reshape(-1, h, d)
    q = enc.project_query(model.latent_emb.unsqueeze(0), lat_rot)[0].transpose(0, 1)  # (L, H, d)
    q1, q2, qr = q[..., :r], q[..., r : 2 * r], q[..., 2 * r :]
    k1, k2, kr = kt[..., :r].unsqueeze(1), kt[..., r : 2 * r].unsqueeze(1), kt[..., 2 * r :].unsqueeze(1)
    a = q1 * k1 + q2 * k2  # (V, L, H, r)
    b = q2 * k1 - q1 * k2
    cc = (qr * kr).sum(-1, keepdim=True)
    n_rows, n_lat = kv.shape[0], q.shape[0]
    scores = (torch.cat([a, b, cc], dim=-1) * scale).reshape(n_rows, -1)
    unit_table = torch.cat([scores, vt.reshape(n_rows, -1)], dim=1)
    # rotation back by the latent time folded into to_out: W R(-t) == W's rows rotated by +t
    w = enc.to_out.weight
    enc_w = apply_rotary(w.reshape(w.shape[0], h, d), (lat_rot[0][0, :1], lat_rot[1][0, :1])).reshape(w.shape[0], h * d)
    # output attention: slot j's keys/values rotated by its constant time, R_j W, then the context norm folded in
    ctx_cos, ctx_sin = model._ctx_rot_cos[0], model._ctx_rot_sin[0]  # (k, r)
    wk, wv = dec.to_kv.weight.chunk(2, dim=0)  # (H*d, E) each
    kv_w, kv_b = [], []
    for j in range(k):
        rot = (ctx_cos[j], ctx_sin[j])
        rk = apply_rotary(wk.t().reshape(-1, h, d), rot).reshape(-1, h * d)  # (E, H*d)
        rv = apply_rotary(wv.t().reshape(-1, h, d), rot).reshape(-1, h * d)
        wj, bj = _fold_ln(dec.norm_ctx, (torch.cat([rk, rv], 1), torch.zeros(2 * h * d, dtype=rk.dtype, device=rk.device)))
        kv_w.append(wj)
        kv_b.append(bj)
    q_rot = (model._query_rot_cos, model._query_rot_sin)
    sess_x = model.session_emb.weight + model.task_emb  # (S, D)
    sess_q = dec.project_query(sess_x.unsqueeze(1), q_rot)[:, :, 0] * scale  # (S, H, d)
    wo = dec.to_out.weight
    dec_w = apply_rotary(wo.reshape(wo.shape[0], h, d), (q_rot[0][0, :1], q_rot[1][0, :1])).reshape(wo.shape[0], h * d)
    rw, rb = _lin(model.readout)
    if output_scale != 1.0:
        rw, rb = rw * output_scale, rb * output_scale
    return Folded(
        heads=h, d=d, r=r, n_lat=n_lat, k=k, dim=model.latent_emb.shape[1], omega=_c(model.rotary.omega),
        unit_table=_c(unit_table), n_score=scores.shape[1],
        enc_out=(_c(enc_w.t()), _c(enc.to_out.bias)), latent=_c(model.latent_emb), enc_ffn=_ffn(model.enc_ffn),
        dec_eps=float(dec.norm_ctx.eps), dec_kv_w=_c(torch.stack(kv_w)), dec_kv_b=_c(torch.stack(kv_b)),
        slot_offsets=torch.arange(k, device=unit_table.device) - (k - 1),
        sess_q=_c(sess_q), sess_x=_c(sess_x), dec_out=(_c(dec_w.t()), _c(dec.to_out.bias)), dec_ffn=_ffn(model.dec_ffn),
        readout=(_c(rw), _c(rb)), backbone=_fold_backbone(model.backbone),
    )
