"""The compiled step's shared kernels (Numba): elementwise maths, the input and output attention.

All weights live in one 64-byte-aligned float32 buffer ``P``, read through a table ``M`` of (offset,
rows, cols) per tensor (the layout below, filled by :mod:`possm_plugin.engines.numba_step` from the
folded tables); ``I`` holds the integer sizes, ``E`` the LayerNorm epsilons. The compiled call thus
takes a handful of arguments and its dispatch stays ~2 microseconds.

Fast-math without 'nnan'/'ninf' (masked attention scores are -inf) and without 'afn' (no approximate
libm); ``error_model="numpy"``: a float division by zero gives inf/nan instead of raising (the Python
check in every division stops its loop from vectorising); the code guards its own divisions.

Only the entry points (:mod:`possm_plugin.engines.numba_backbones`) are cached on disk; they take
:func:`cache_stamp` so that editing this file also invalidates their cache (Numba itself checks the
entry point's own file only).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["cache_stamp", "jit", "jit_cached"]

_FM = {"nsz", "arcp", "contract", "reassoc"}
_OPTS = {"fastmath": _FM, "nogil": True, "error_model": "numpy"}

# int hyper-parameters (I): positions
(_I_HEADS, _I_D, _I_R, _I_NLAT, _I_K, _I_NS, _I_DIM, _I_DS, _I_DR, _I_EHALF, _I_DHALF, _I_NI) = range(12)
# tensors (M rows) shared by all backbones; the backbone's layers follow from _T_LAYERS
(_T_TABLE, _T_ENC_OUT_W, _T_ENC_OUT_B, _T_LATENT, _T_EFFN_IN_W, _T_EFFN_IN_B, _T_EFFN_OUT_W,
 _T_EFFN_OUT_B, _T_DEC_KV_W, _T_DEC_KV_B, _T_SESS_Q, _T_SESS_X, _T_DEC_OUT_W, _T_DEC_OUT_B, _T_DFFN_IN_W,
 _T_DFFN_IN_B, _T_DFFN_OUT_W, _T_DFFN_OUT_B, _T_READ_W, _T_READ_B, _T_NORM_W, _T_NORM_B, _T_PROJ_W,
 _T_PROJ_B, _T_LAYERS) = range(25)
# tensors per layer of each backbone (its layer i starts at _T_LAYERS + stride * i)
_GRU_STRIDE, _S4D_STRIDE, _MAMBA_STRIDE = 4, 9, 12
# float hyper-parameters (E): LayerNorm epsilons
_E_EFFN, _E_DNORM, _E_DFFN, _E_NORM, _E_LAYERS = range(5)

jit = njit(**_OPTS)  # helpers: compiled into the entry points that call them


def _can_cache() -> bool:
    """Whether Numba finds a writable cache directory (beside this package, or its per-user directory);
    if not, the step is compiled in each process (slower start, same code)."""
    try:
        njit(cache=True)(lambda: 0)  # finds a cache locator; compiles nothing
        return True
    except Exception as exc:  # noqa: BLE001 - e.g. "no locator available" on a read-only install without HOME
        logging.getLogger("possm_plugin.engines").warning(
            "Numba cannot cache the compiled inference step (%s); each process compiles it (~10-30 s at start)", exc)
        return False


CACHE = _can_cache()


def cache_stamp(*files: str) -> tuple:
    """(mtime, size) of every kernel file: an entry point's cache is current only if none changed."""
    return tuple((st.st_mtime, st.st_size) for st in (os.stat(f) for f in (__file__, *files)))


def jit_cached(fn):
    """An entry point: compiled on its first call and cached on disk (when possible), with a cache
    stamp that covers this file and the caller's (see :func:`cache_stamp`)."""
    disp = njit(cache=CACHE, **_OPTS)(fn)
    if CACHE:
        try:  # Numba internals: best effort, the default stamp (the entry point's file) stays otherwise
            disp._cache._cache_file._source_stamp = cache_stamp(fn.__code__.co_filename)
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("possm_plugin.engines").debug("Numba cache stamp not set (%s): edits of %s may not recompile", exc, __file__)
    return disp


@jit
def _t(P, M, i):
    """Tensor ``i`` of the buffer as a (rows, cols) view."""
    o, r, c = M[i, 0], M[i, 1], M[i, 2]
    return P[o : o + r * c].reshape(r, c)

@jit
def _lin(x, w, b):
    """x (B, in) @ w (in, out) + b (1, out); one row goes through sgemv."""
    if x.shape[0] == 1:
        y = np.dot(x[0], w).reshape(1, w.shape[1])
    else:
        y = np.dot(x, w)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] += b[0, j]
    return y

@jit
def _standardize(x, eps):
    """LayerNorm without its affine part, over the last axis of (B, n); a new array."""
    out = np.empty_like(x)
    n = x.shape[1]
    for i in range(x.shape[0]):
        m = np.float32(0.0)
        for j in range(n):
            m += x[i, j]
        m /= n
        v = np.float32(0.0)
        for j in range(n):
            c = x[i, j] - m
            out[i, j] = c
            v += c * c
        inv = np.float32(1.0) / np.sqrt(v / n + eps)
        for j in range(n):
            out[i, j] *= inv
    return out

@jit
def _layernorm(x, w, b, eps):
    out = _standardize(x, eps)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = out[i, j] * w[0, j] + b[0, j]
    return out

@intrinsic
def _bits_to_double(typingctx, x):
    """The int64 ``x``'s bits read as a float64 (for 2**n in :func:`_exp64`)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen

# Elementwise functions written without libm calls, so that loops over them vectorise (libm's
# expf/tanhf/erff are scalar calls here, ~5-10 ns each: at o-POSSM sizes tens of thousands per
# chunk). They work in float64 inside, so their float32 results are rounded once, as libm's are.
@jit
def _exp64(x):
    """exp of a float64 x in [-708, 709], relative error ~1e-10 (2**n * Taylor(9) on |f| <= ln2/2)."""
    x = min(max(x, -708.0), 709.0)
    n = np.rint(x * 1.4426950408889634)
    f = x - n * 0.6931471803691238 - n * 1.9082149292705877e-10  # ln 2 as hi + lo
    p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6 + f * (1.0 / 24 + f * (1.0 / 120 + f * (
        1.0 / 720 + f * (1.0 / 5040 + f * (1.0 / 40320 + f * (1.0 / 362880)))))))))
    return p * _bits_to_double((np.int64(n) + np.int64(1023)) << np.int64(52))

@jit
def _exp(x):
    """exp of a float32 (0 below -708)."""
    return np.float32(_exp64(np.float64(x))) if x > -708.0 else np.float32(0.0)

@jit
def _sigmoid(x):
    return np.float32(1.0) / np.float32(1.0 + _exp64(-np.float64(x)))

@jit
def _tanh(x):
    """tanh = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); 1 - e in float64: no cancellation near 0."""
    e = _exp64(-2.0 * abs(np.float64(x)))
    t = np.float32(1.0 - e) / np.float32(1.0 + e)
    return t if x >= 0 else -t

@jit
def _gelu(x):
    """Exact (erf) GELU, x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2; erfc by the Chebyshev fit of
    Numerical Recipes (relative error below 1.2e-7 everywhere), in float64."""
    xd = np.float64(x)
    z = abs(xd) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.5 * z)
    r = t * _exp64(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    phi = 0.5 * r if xd < 0 else 1.0 - 0.5 * r
    return np.float32(xd * phi)

@jit
def _add_ffn(x, P, M, t_in_w, eps, half):
    """x + FFN(LayerNorm(x)): LN's affine part is folded into the first map (tensors t_in_w .. +3)."""
    h = _lin(_standardize(x, eps), _t(P, M, t_in_w), _t(P, M, t_in_w + 1))
    a = np.empty((x.shape[0], half), np.float32)
    for i in range(x.shape[0]):
        for j in range(half):
            a[i, j] = h[i, j] * _gelu(h[i, half + j])
    y = _lin(a, _t(P, M, t_in_w + 2), _t(P, M, t_in_w + 3))
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            y[i, j] += x[i, j]
    return y

@jit
def _encode(P, M, I, E, units, cos, sin, mask):
    """Input cross-attention of each row's spikes onto the latents, and its FFN -> (B, L*D).
    ``cos``, ``sin``: (B, N, r) of the spike times times the rotary frequencies (NumPy's SIMD
    cos and sin compute them several times faster than scalar calls here)."""
    bsz, n = units.shape
    heads, d, r, nl, ns, dim = I[_I_HEADS], I[_I_D], I[_I_R], I[_I_NLAT], I[_I_NS], I[_I_DIM]
    f = 2 * r + 1
    nk = nl * heads
    table = _t(P, M, _T_TABLE)
    scores = np.empty((n, nk), np.float32)
    m = np.empty(nk, np.float32)
    den = np.empty(nk, np.float32)
    acc = np.empty((nk, d), np.float32)
    pc = np.empty(r, np.float32)
    ps = np.empty(r, np.float32)
    o = np.empty((bsz * nl, heads * d), np.float32)
    for b in range(bsz):
        m[:] = -np.inf
        for t in range(n):  # pass 1: scores from the unit's table row and the rotary features
            if not mask[b, t]:
                continue
            u = units[b, t]
            if u < 0 or u >= table.shape[0]:  # no bounds checks in compiled code: refuse, do not read astray
                raise IndexError("unit row out of the table")
            for k in range(nk):
                base = k * f
                s = table[u, base + 2 * r]
                for q in range(r):
                    s += table[u, base + q] * cos[b, t, q] + table[u, base + r + q] * sin[b, t, q]
                scores[t, k] = s
                m[k] = max(m[k], s)
        den[:] = 0.0
        acc[:] = 0.0
        for t in range(n):  # pass 2: softmax weight times the value rotated by the spike's time
            if not mask[b, t]:
                continue
            u = units[b, t]
            for k in range(nk):  # k = latent * heads + head
                v0 = ns + (k % heads) * d
                p = _exp(scores[t, k] - m[k])
                den[k] += p
                for q in range(r):
                    pc[q] = p * cos[b, t, q]
                    ps[q] = p * sin[b, t, q]
                for q in range(r):
                    v1, v2 = table[u, v0 + q], table[u, v0 + r + q]
                    acc[k, q] += pc[q] * v1 - ps[q] * v2
                    acc[k, r + q] += ps[q] * v1 + pc[q] * v2
                for q in range(2 * r, d):
                    acc[k, q] += p * table[u, v0 + q]
        for l in range(nl):
            for hh in range(heads):
                k = l * heads + hh
                inv = np.float32(1.0) / den[k] if den[k] > 0 else np.float32(0.0)
                for q in range(d):
                    o[b * nl + l, hh * d + q] = acc[k, q] * inv
    x = _lin(o, _t(P, M, _T_ENC_OUT_W), _t(P, M, _T_ENC_OUT_B))
    latent = _t(P, M, _T_LATENT)
    for i in range(bsz * nl):
        for j in range(dim):
            x[i, j] += latent[i % nl, j]
    x = _add_ffn(x, P, M, _T_EFFN_IN_W, E[_E_EFFN], I[_I_EHALF])
    return x.reshape(bsz, nl * dim)

@jit
def _decode(P, M, I, E, y, hist, seen, session, slot_offsets):
    """Output attention over the last k backbone outputs, FFN and readout -> (outputs, new history)."""
    bsz, e = y.shape
    heads, d, kk = I[_I_HEADS], I[_I_D], I[_I_K]
    hd = heads * d
    ctx = np.empty((bsz, kk, e), np.float32)
    for b in range(bsz):
        for s in range(kk - 1):
            ctx[b, s] = hist[b, s]
        ctx[b, kk - 1] = y[b]
    cn = _standardize(ctx.reshape(bsz * kk, e), E[_E_DNORM]).reshape(bsz, kk, e)
    kvw = _t(P, M, _T_DEC_KV_W)
    kvb = _t(P, M, _T_DEC_KV_B)
    sq = _t(P, M, _T_SESS_Q)
    sx = _t(P, M, _T_SESS_X)
    o = np.zeros((bsz, hd), np.float32)
    x0 = np.empty((bsz, sx.shape[1]), np.float32)
    kv = np.empty((kk, 2 * hd), np.float32)
    sc = np.empty((kk, heads), np.float32)
    for b in range(bsz):
        for s in range(kk):
            kv[s] = np.dot(np.ascontiguousarray(cn[b, s]), kvw[s * e : (s + 1) * e])
            for j in range(2 * hd):
                kv[s, j] += kvb[s, j]
        sess = session[b]
        if sess < 0 or sess >= sq.shape[0]:
            raise IndexError("session row out of the table")
        for hh in range(heads):
            mx = -np.inf
            for s in range(kk):
                if slot_offsets[s] + seen[b] >= 0:
                    v = np.float32(0.0)
                    for q in range(d):
                        v += kv[s, hh * d + q] * sq[sess, hh * d + q]
                else:
                    v = -np.inf
                sc[s, hh] = v
                mx = max(mx, v)
            tot = np.float32(0.0)
            for s in range(kk):
                p = _exp(sc[s, hh] - mx) if sc[s, hh] > -np.inf else np.float32(0.0)
                sc[s, hh] = p
                tot += p
            for s in range(kk):
                p = sc[s, hh] / tot
                for q in range(d):
                    o[b, hh * d + q] += p * kv[s, hd + hh * d + q]
        x0[b] = sx[sess]
    x = _lin(o, _t(P, M, _T_DEC_OUT_W), _t(P, M, _T_DEC_OUT_B))
    x += x0
    x = _add_ffn(x, P, M, _T_DFFN_IN_W, E[_E_DFFN], I[_I_DHALF])
    out = _lin(x, _t(P, M, _T_READ_W), _t(P, M, _T_READ_B))
    new_hist = np.empty((bsz, kk - 1, e), np.float32)
    for b in range(bsz):
        for s in range(kk - 1):
            new_hist[b, s] = ctx[b, s + 1]
    return out, new_hist
