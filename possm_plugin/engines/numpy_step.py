"""The folded step in plain NumPy: a readable reference of what the compiled kernels compute.

Not a decoder engine (Numba is a dependency; the compiled engine is faster): tests run it beside the
compiled and torch engines, on the same tables of :func:`~possm_plugin.engines.fold.fold`, to check
each against :meth:`POSSM.step`. Built-in backbones only (GRU, S4D, Mamba).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import erf

from possm_plugin.engines.base import Engine
from possm_plugin.engines.fold import FFNFold, Folded, GRUFold, MambaFold, S4DFold
from possm_plugin.model.possm import POSSM

__all__ = ["NumpyEngine"]


def _np(x):
    """Every tensor of a (nested) fold as a float32 NumPy array; numbers stay as they are."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.numpy())
    if isinstance(x, tuple):
        return tuple(_np(v) for v in x)
    if hasattr(x, "__dataclass_fields__"):
        return type(x)(**{k: _np(getattr(x, k)) for k in x.__dataclass_fields__})
    return x


def _lin(x: np.ndarray, wb) -> np.ndarray:
    return x @ wb[0] + wb[1]


def _std(x: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis without its affine part."""
    xc = x - x.mean(-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + np.float32(eps))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + erf(x * np.float32(1.0 / np.sqrt(2.0))))


def _softplus(x: np.ndarray) -> np.ndarray:
    """torch's softplus (beta 1, threshold 20): x itself above 20."""
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, np.float32(20.0)))))


def _ffn(x: np.ndarray, f: FFNFold) -> np.ndarray:
    h = _lin(_std(x, f.eps), f.proj_in)
    return x + _lin(h[..., : f.half] * _gelu(h[..., f.half :]), f.proj_out)


def _softmax(s: np.ndarray, axis: int) -> np.ndarray:
    p = np.exp(s - s.max(axis, keepdims=True))
    return p / p.sum(axis, keepdims=True)


def _gru(bb: GRUFold, x: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
    hs, n = state[0], bb.hidden
    new = np.empty_like(hs)
    for i, (w_ih, b_ih, w_hh, b_hh) in enumerate(bb.layers):
        h = hs[:, i]
        gi, gh = _lin(x, (w_ih, b_ih)), _lin(h, (w_hh, b_hh))
        r, z = _sigmoid(gi[:, :n] + gh[:, :n]), _sigmoid(gi[:, n : 2 * n] + gh[:, n : 2 * n])
        cand = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
        x = new[:, i] = cand + z * (h - cand)
    return x, (new,)


def _s4d(bb: S4DFold, x: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
    st = state[0]  # (B, layers, E, N2, 2)
    new = np.empty_like(st)
    h = _lin(x, bb.proj)
    for i, ly in enumerate(bb.layers):
        u = _std(h, ly.eps) * ly.norm_w + ly.norm_b
        s_re, s_im = st[:, i, ..., 0], st[:, i, ..., 1]
        n_re = new[:, i, ..., 0] = ly.a_re * s_re - ly.a_im * s_im + u[..., None]
        n_im = new[:, i, ..., 1] = ly.a_re * s_im + ly.a_im * s_re
        g = _lin(_gelu((n_re * ly.c_re + n_im * ly.c_im).sum(-1) + u * ly.d_skip), ly.out)
        e = g.shape[1] // 2
        h = h + g[:, :e] * _sigmoid(g[:, e:])
    return _std(h, bb.eps) * bb.norm_w + bb.norm_b, (new,)


def _mamba(bb: MambaFold, x: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
    conv_all, ssm_all = state
    new_conv, new_ssm = np.empty_like(conv_all), np.empty_like(ssm_all)
    h = _lin(x, bb.proj)
    for i, blk in enumerate(bb.blocks):
        di, dr, ds = blk.d_inner, blk.dt_rank, blk.d_state
        xz = _lin(_std(h, blk.eps), blk.in_proj)
        u, z = xz[:, :di], xz[:, di:]
        window = np.concatenate([conv_all[:, i], u[..., None]], axis=-1)  # (B, di, d_conv)
        new_conv[:, i] = window[..., 1:]
        c = (window * blk.conv_w).sum(-1) + blk.conv_b
        u = c * _sigmoid(c)
        dbc = _lin(u, blk.x_proj)
        dt = _softplus(_lin(dbc[:, :dr], blk.dt_proj))
        ssm = new_ssm[:, i] = np.exp(dt[..., None] * blk.a) * ssm_all[:, i] + (dt * u)[..., None] * dbc[:, None, dr : dr + ds]
        y = (ssm * dbc[:, None, dr + ds :]).sum(-1) + blk.d_skip * u
        h = h + _lin(y * z * _sigmoid(z), blk.out_proj)
    return _std(h, bb.eps) * bb.norm_w + bb.norm_b, (new_conv, new_ssm)


class NumpyEngine(Engine):
    """The folded step in NumPy, state in NumPy arrays (a test oracle)."""

    name = "numpy"

    def __init__(self, model: POSSM, folded: Folded, *, sessions: np.ndarray) -> None:
        if folded.backbone is None:
            raise TypeError(f"no NumPy step for backbone {type(model.backbone).__name__}")
        st = tuple(x.numpy() for x in model.initial_state(len(sessions), device="cpu"))
        super().__init__(state=st, fresh=tuple(x.numpy() for x in model.initial_state(1, device="cpu")),
                         sessions=np.asarray(sessions, np.int64))
        self.f = _np(folded)
        self.slot_offsets = folded.slot_offsets.cpu().numpy()

    def _run(self, units, times, mask, sessions, state):
        f = self.f
        *bb_state, hist, seen = state
        bsz, n = units.shape
        h, d, r = f.heads, f.d, f.r
        # input attention: scores from the unit rows and the rotary features, values rotated by spike time
        ang = np.asarray(times, np.float32)[..., None] * f.omega
        cos, sin = np.cos(ang), np.sin(ang)
        feats = np.concatenate([cos, sin, np.ones_like(cos[..., :1])], -1)  # (B, N, 2r+1)
        g = f.unit_table[units]
        scores = np.einsum("bnkf,bnf->bnk", g[..., : f.n_score].reshape(bsz, n, -1, 2 * r + 1), feats)
        scores[~mask] = -np.inf
        p = _softmax(scores, 1).reshape(bsz, n, f.n_lat, h).transpose(0, 3, 2, 1)  # (B, H, L, N)
        v = g[..., f.n_score :].reshape(bsz, n, h, d)
        c4, s4 = cos[:, :, None], sin[:, :, None]
        v = np.concatenate([v[..., :r] * c4 - v[..., r : 2 * r] * s4, v[..., :r] * s4 + v[..., r : 2 * r] * c4, v[..., 2 * r :]], -1)
        o = np.matmul(p, v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3).reshape(bsz, f.n_lat, h * d)
        z = _ffn(f.latent + _lin(o, f.enc_out), f.enc_ffn).reshape(bsz, -1)
        # backbone
        bb = f.backbone
        step = _gru if isinstance(bb, GRUFold) else _s4d if isinstance(bb, S4DFold) else _mamba
        y, bb_new = step(bb, z, tuple(bb_state))
        # output attention over the last k outputs
        ctx = np.concatenate([hist, y[:, None]], axis=1)  # (B, k, E)
        kv = (np.matmul(_std(ctx, f.dec_eps).transpose(1, 0, 2), f.dec_kv_w) + f.dec_kv_b[:, None]).transpose(1, 0, 2)
        kv = kv.reshape(bsz, f.k, 2, h, d)
        s = np.einsum("bkhd,bhd->bkh", kv[:, :, 0], f.sess_q[sessions])
        s[(self.slot_offsets + seen[:, None]) < 0] = -np.inf
        o = np.einsum("bkh,bkhd->bhd", _softmax(s, 1), kv[:, :, 1]).reshape(bsz, h * d)
        x = _ffn(f.sess_x[sessions] + _lin(o, f.dec_out), f.dec_ffn)
        return _lin(x, f.readout).astype(np.float32), (*bb_new, ctx[:, 1:].copy(), seen + 1)
