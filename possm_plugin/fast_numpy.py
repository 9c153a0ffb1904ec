"""The CPU inference step in NumPy: :class:`~possm_plugin.fast.FastStep`'s folded tables, run without
torch's per-operation dispatch.

A POSSM chunk at batch 1 is a few dozen operations on arrays of a few hundred numbers. On a CPU, torch
spends more time dispatching each of them (several microseconds) than computing, and its single-row
matrix-vector products are slower than OpenBLAS's ``sgemv``. This module runs the same mathematics
as ``FastStep.step`` (and so as :meth:`POSSM.step`) with NumPy on float32 arrays: about 3-5x faster
per chunk for the small model, and it keeps o-POSSM within its latency budget.

- Built-in backbones (GRU, S4D, Mamba) are implemented here; a third-party backbone has no NumPy step
  and :func:`numpy_step_supported` says so (the decoder then uses ``FastStep``).
- Exact rewrite, not an approximation: outputs match ``model.step`` to float32 rounding (tests/test_fast.py
  compares them over whole sequences, for every backbone and several shapes).
- Weights are copied when the step is built: rebuild it (``StreamingDecoder.refresh()``) after they change.
- BLAS threads: a matrix-vector product of one chunk is fastest on one thread; set the process's BLAS
  threads with :func:`possm_plugin.runtime.set_cpu_threads` (the CLIs do).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf

from .backbones.gru import GRUBackbone
from .backbones.mamba import MambaBackbone
from .backbones.s4d import S4DBackbone
from .fast import FastStep
from .model import POSSM

__all__ = ["NumpyStep", "numpy_step_supported"]

_SQRT1_2 = np.float32(1.0 / np.sqrt(2.0))
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_add_reduce = np.add.reduce


def numpy_step_supported(model: POSSM) -> bool:
    """Whether ``model``'s backbone has a NumPy step (the built-in GRU, S4D and Mamba)."""
    return type(model.backbone) in (GRUBackbone, S4DBackbone, MambaBackbone)


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if not t.is_complex():
        t = t.float()
    return np.ascontiguousarray(t.numpy()).copy()


def _wt(linear: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray | None]:
    """(W^T contiguous (in, out), bias or None) of a Linear."""
    return _np(linear.weight.t()), (None if linear.bias is None else _np(linear.bias))


def _mm(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """x (B, in) @ wt (in, out): one row goes through sgemv (faster than a 1-row sgemm)."""
    if x.shape[0] == 1:
        return (x[0] @ wt)[None]
    return x @ wt


def _linear(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    y = _mm(x, wb[0])
    if wb[1] is not None:
        y += wb[1]
    return y


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)): no overflow for large |x|
    y = np.tanh(x * _HALF)
    y += _ONE
    y *= _HALF
    return y


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch's default."""
    y = erf(x * _SQRT1_2)
    y += _ONE
    y *= x
    y *= _HALF
    return y


class _LayerNorm:
    """LayerNorm over the last axis. ``affine=False`` only standardises: its weight and bias are then
    folded into the linear map that follows (see :func:`_fold_ln`)."""

    __slots__ = ("w", "b", "eps", "mean_vec", "affine", "n_inv", "eps_f")

    def __init__(self, ln: torch.nn.LayerNorm, *, affine: bool = True) -> None:
        self.w, self.b, self.eps = _np(ln.weight), _np(ln.bias), np.float32(ln.eps)
        self.mean_vec = np.full(self.w.shape[-1], 1.0 / self.w.shape[-1], np.float32)  # means as dot products
        self.affine = affine
        self.n_inv, self.eps_f = 1.0 / self.w.shape[-1], float(ln.eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 2 and x.shape[0] == 1:  # one row: scalar statistics (fewer array operations)
            v = x[0]
            xc = v - float(v @ self.mean_vec)
            xc *= np.float32(1.0 / math.sqrt(float(xc @ xc) * self.n_inv + self.eps_f))
            if self.affine:
                xc *= self.w
                xc += self.b
            return xc[None]
        xc = x - (x @ self.mean_vec)[..., None]
        var = (xc * xc) @ self.mean_vec
        var += self.eps
        xc /= np.sqrt(var)[..., None]
        if self.affine:
            xc *= self.w
            xc += self.b
        return xc


def _fold_ln(ln: _LayerNorm, wb: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """(W^T, b) of ``Linear(LayerNorm(x))`` with the LayerNorm's affine part (its ``w`` and ``b``, kept
    also when it runs with ``affine=False``) folded in:
    (n * w + b_ln) @ W^T + b = n @ (diag(w) W^T) + (b_ln @ W^T + b)."""
    wt, bias = wb
    new_b = ln.b @ wt + (0.0 if bias is None else bias)
    return np.ascontiguousarray(ln.w[:, None] * wt), np.asarray(new_b, np.float32)


class _PreNormFFN:
    """``Sequential(LayerNorm, FeedForward)``: LN -> Linear(D, 2mD) -> a * gelu(b) -> Linear(mD, D)."""

    def __init__(self, seq: torch.nn.Sequential) -> None:
        ln, ff = seq[0], seq[1]
        self.ln = _LayerNorm(ln, affine=False)
        self.proj_in = _fold_ln(self.ln, _wt(ff.proj_in))
        self.proj_out = _wt(ff.proj_out)
        self.half = ff.proj_out.in_features

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = _linear(self.ln(x), self.proj_in)
        a, b = h[..., : self.half], h[..., self.half :]
        return _linear(a * _gelu(b), self.proj_out)


class _GRU:
    def __init__(self, bb: GRUBackbone) -> None:
        rnn = bb.rnn
        self.hidden = bb.d_output
        self.layers = [
            (_np(getattr(rnn, f"weight_ih_l{i}").t()), _np(getattr(rnn, f"bias_ih_l{i}")),
             _np(getattr(rnn, f"weight_hh_l{i}").t()), _np(getattr(rnn, f"bias_hh_l{i}")))
            for i in range(rnn.num_layers)
        ]

    def __call__(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        hs = state[0]  # (B, layers, H)
        n = self.hidden
        new = np.empty_like(hs)
        for i, (w_ih, b_ih, w_hh, b_hh) in enumerate(self.layers):
            h = hs[:, i]
            gi = _mm(x, w_ih)
            gi += b_ih
            gh = _mm(h, w_hh)
            gh += b_hh
            rz = _sigmoid(gi[:, : 2 * n] + gh[:, : 2 * n])
            r, z = rz[:, :n], rz[:, n:]
            cand = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
            x = cand + z * (h - cand)  # (1 - z) * n + z * h
            new[:, i] = x
        return x, (new,)


class _S4D:
    def __init__(self, bb: S4DBackbone) -> None:
        self.proj = _wt(bb.proj)
        self.norm = _LayerNorm(bb.norm)
        self.layers = []
        with torch.no_grad():
            for layer in bb.layers:
                abar, cb, _ = layer._discrete()
                cb2 = _np(2.0 * cb)
                # y = Re(sum_n cb2_n s_n) = sum over the float view of s (re, im interleaved) of [Re cb2, -Im cb2]
                cvec = np.empty((cb2.shape[0], 2 * cb2.shape[1]), np.float32)
                cvec[:, 0::2], cvec[:, 1::2] = cb2.real, -cb2.imag
                self.layers.append((_LayerNorm(layer.norm), _np(abar), cvec, _np(layer.D), _wt(layer.out), layer.d_model))

    def __call__(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        s_real = state[0]  # (B, L, H, N2, 2) float32: complex states as pairs
        b = s_real.shape[0]
        s_all = np.ascontiguousarray(s_real).view(np.complex64)[..., 0]  # (B, L, H, N2)
        new = np.empty_like(s_all)
        h = _linear(x, self.proj)
        for i, (ln, abar, cvec, d, out, hdim) in enumerate(self.layers):
            u = ln(h)
            s = np.multiply(abar, s_all[:, i], out=new[:, i])
            s.real += u[..., None]
            y = np.einsum("bhn,hn->bh", s.view(np.float32), cvec)
            y += u * d
            g = _linear(_gelu(y), out)
            h = h + g[:, :hdim] * _sigmoid(g[:, hdim:])
        return self.norm(h), (new.view(np.float32).reshape(b, *s_all.shape[1:], 2),)


def _softplus(x: np.ndarray) -> np.ndarray:
    """torch's softplus (beta 1, threshold 20): x itself above 20."""
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, np.float32(20.0)))))


class _Mamba:
    def __init__(self, bb: MambaBackbone) -> None:
        self.proj = _wt(bb.proj)
        self.norm = _LayerNorm(bb.norm)
        self.blocks = []
        with torch.no_grad():
            for blk in bb.blocks:
                ln = _LayerNorm(blk.norm, affine=False)
                self.blocks.append((
                    ln, _fold_ln(ln, _wt(blk.in_proj)), _np(blk.conv_weight), _np(blk.conv_bias), _wt(blk.x_proj),
                    _wt(blk.dt_proj), _np(-torch.exp(blk.A_log)), _np(blk.D), _wt(blk.out_proj), blk.d_inner, blk.d_state, blk.dt_rank,
                ))

    def __call__(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        conv_all, ssm_all = state
        new_conv, new_ssm = np.empty_like(conv_all), np.empty_like(ssm_all)
        h = _linear(x, self.proj)
        for i, (ln, in_proj, conv_w, conv_b, x_proj, dt_proj, a, d, out_proj, di, ds, dr) in enumerate(self.blocks):
            xz = _linear(ln(h), in_proj)
            u, z = xz[:, :di], xz[:, di:]
            window = np.concatenate([conv_all[:, i], u[..., None]], axis=-1)  # (B, di, d_conv)
            new_conv[:, i] = window[..., 1:]
            c = np.einsum("bik,ik->bi", window, conv_w)
            c += conv_b
            u = c * _sigmoid(c)  # SiLU
            dbc = _linear(u, x_proj)
            dt = _softplus(_linear(np.ascontiguousarray(dbc[:, :dr]), dt_proj))
            bm, cm = dbc[:, dr : dr + ds], dbc[:, dr + ds :]
            ssm = np.exp(dt[..., None] * a, out=new_ssm[:, i])
            ssm *= ssm_all[:, i]
            ssm += (dt * u)[..., None] * bm[:, None, :]
            y = np.matmul(ssm, cm[..., None])[..., 0]
            y += d * u
            y *= z * _sigmoid(z)
            h = h + _linear(y, out_proj)
        return self.norm(h), (new_conv, new_ssm)


class NumpyStep:
    """Inference-only step on NumPy arrays; ``step`` mirrors :meth:`FastStep.step`.

    ``step(units, times, mask, session, state)`` takes numpy arrays: tokens (B, N) (int64 rows,
    float32 times, bool mask), session rows (B,) and the state as :meth:`POSSM.initial_state` lays it
    out (as numpy arrays); it returns outputs (B, C) float32 and the new state (new arrays).
    """

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: POSSM, fast: FastStep | None = None) -> "NumpyStep":
        if not numpy_step_supported(model):
            raise TypeError(f"no NumPy step for backbone {type(model.backbone).__name__}; use FastStep")
        f = fast or FastStep.from_model(model)
        self = cls()
        self.heads, self.d, self.k, self.r, self.n_lat = f.heads, f.d, f.k, f.r, f.n_lat
        self.omega = _np(f.omega)
        st = _np(f.score_table)  # (V, L*H, 2F+1)
        vt = _np(f.value_table)  # (V, H, d)
        n_rows = st.shape[0]
        self.n_score = st.shape[1] * st.shape[2]
        self.unit_table = np.ascontiguousarray(np.concatenate([st.reshape(n_rows, -1), vt.reshape(n_rows, -1)], axis=1))
        self.enc_out = (_np(f.enc_out_w.t()), _np(f.enc_out_b))
        self.latent = _np(f.latent)  # (L, D)
        self.enc_ffn = _PreNormFFN(f.enc_ffn)
        bb = model.backbone
        self.backbone = _GRU(bb) if isinstance(bb, GRUBackbone) else _S4D(bb) if isinstance(bb, S4DBackbone) else _Mamba(bb)
        self.dec_norm = _LayerNorm(f.dec_norm, affine=False)
        folded = [_fold_ln(self.dec_norm, (w, None)) for w in _np(f.dec_kv_wt)]  # per slot: (E, 2*H*d), (2*H*d,)
        self.dec_kv_wt = np.ascontiguousarray(np.stack([w for w, _ in folded]))  # (k, E, 2*H*d)
        self.dec_kv_b = np.stack([b for _, b in folded])[:, None, :]  # (k, 1, 2*H*d)
        self.slot_offsets = f.slot_offsets.cpu().numpy().astype(np.int64)
        self.sess_q = _np(f.sess_q)  # (S, H, d), scaled
        self.sess_x = _np(f.sess_x)  # (S, D)
        self.dec_out = (_np(f.dec_out_w.t()), _np(f.dec_out_b))
        self.dec_ffn = _PreNormFFN(f.dec_ffn)
        self.readout = _wt(f.readout)
        return self

    def step(self, units: np.ndarray, times: np.ndarray, mask: np.ndarray, session: np.ndarray,
             state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        *bb_state, hist, seen = state
        z = self.encode(units, times, mask)
        y, bb_new = self.backbone(z, tuple(bb_state))
        out, ctx = self.decode(y, hist, seen, session)
        return out, (*bb_new, ctx, seen + 1)

    def encode(self, units: np.ndarray, times: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Input attention and its FFN: tokens (B, N) -> backbone input (B, L*D)."""
        bsz, n = units.shape
        h, d, r, nl = self.heads, self.d, self.r, self.n_lat
        g = self.unit_table[units]  # (B, N, L*H*(2F+1) + H*d): one gather for scores and values
        feats = np.empty((bsz, n, 2 * r + 1), np.float32)  # [cos(w t), sin(w t), 1]
        ang = np.multiply(times[..., None], self.omega)
        cos = np.cos(ang, out=feats[..., :r])
        sin = np.sin(ang, out=feats[..., r : 2 * r])
        feats[..., 2 * r] = 1.0
        # attention scores from the per-unit tables: sum_f A cos + B sin, + C
        ns = self.n_score
        scores = np.einsum("bnkf,bnf->bnk", g[..., :ns].reshape(bsz, n, nl * h, 2 * r + 1), feats)
        if not mask.all():
            scores[~mask] = -np.inf
        scores -= scores.max(1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(1, keepdims=True)  # softmax over the tokens
        # values rotated by their spike times, then weighted: (B, H, L, N) @ (B, H, N, d)
        v = g[..., ns:].reshape(bsz, n, h, d)
        c4, s4 = cos[:, :, None, :], sin[:, :, None, :]
        v1, v2 = v[..., :r], v[..., r : 2 * r]
        vr = np.concatenate([v1 * c4 - v2 * s4, v1 * s4 + v2 * c4, v[..., 2 * r :]], axis=-1)
        o = np.matmul(p.reshape(bsz, n, nl, h).transpose(0, 3, 2, 1), vr.transpose(0, 2, 1, 3))  # (B, H, L, d)
        o = o.transpose(0, 2, 1, 3).reshape(bsz * nl, h * d)
        x = self.latent + _linear(o, self.enc_out).reshape(bsz, nl, -1)
        x = x + self.enc_ffn(x.reshape(bsz * nl, -1)).reshape(bsz, nl, -1)
        return x.reshape(bsz, -1)

    def decode(self, y: np.ndarray, hist: np.ndarray, seen: np.ndarray, session: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output attention over the last k backbone outputs, FFN, readout -> (outputs (B, C), new history)."""
        bsz = y.shape[0]
        h, d = self.heads, self.d
        ctx = np.concatenate([hist, y[:, None]], axis=1)  # (B, k, E)
        cn = self.dec_norm(ctx)
        kv = np.matmul(cn.transpose(1, 0, 2), self.dec_kv_wt)
        kv += self.dec_kv_b
        kv = kv.transpose(1, 0, 2).reshape(bsz, self.k, 2, h, d)
        s = np.einsum("bkhd,bhd->bkh", kv[:, :, 0], self.sess_q[session])  # (B, k, H)
        valid = (self.slot_offsets + seen[:, None]) >= 0  # (B, k)
        if not valid.all():
            s[~valid] = -np.inf
        s -= s.max(1, keepdims=True)
        ps = np.exp(s)
        ps /= ps.sum(1, keepdims=True)
        o = np.einsum("bkh,bkhd->bhd", ps, kv[:, :, 1]).reshape(bsz, h * d)
        x = self.sess_x[session] + _linear(o, self.dec_out)
        x = x + self.dec_ffn(x)
        return _linear(x, self.readout), ctx[:, 1:].copy()
