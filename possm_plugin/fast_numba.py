"""The CPU inference step compiled with Numba: :class:`~possm_plugin.fast_numpy.NumpyStep`'s folded
tables, run as one compiled call per chunk.

At batch 1 a POSSM chunk is a few dozen small operations. NumPy pays 1-3 microseconds of interpreter
and dispatch per operation and allocates a temporary for each; the compiled step pays that once per
chunk and fuses the per-token work of the input attention (score, softmax, rotation and weighting of
each spike's value) into two passes over the spikes with no temporaries. Matrix-vector products still
go to the BLAS (``sgemv``), which is what bounds o-POSSM (its ~22-31 MB of weights stream from L3 or
memory each chunk).

- Same mathematics as ``NumpyStep.step`` (so as :meth:`POSSM.step`): outputs and states agree to
  float32 rounding; tests/test_fast.py checks it over whole sequences for every built-in backbone.
- All weights live in one 64-byte-aligned float32 buffer, read through a table of (offset, rows, cols):
  the compiled call takes a handful of arguments, so its dispatch stays ~2 microseconds.
- Compiled on first use and cached on disk (Numba's ``cache=True``: beside this file when it is
  writable, else in Numba's per-user cache directory); the first use in a fresh install compiles for
  ~10-30 s, later processes load the cache in well under a second. :meth:`NumbaStep.from_model`
  compiles (or loads) before it returns, so a decoder never compiles on a live chunk;
  :func:`warm_up` (``possm compile``) does it for every backbone ahead of time.
- Without Numba (an unusual install) :func:`numba_available` is False and the decoder uses NumPy.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .fast_numpy import NumpyStep, numpy_step_supported

__all__ = ["NumbaStep", "numba_available", "warm_up", "cache_directory"]

log = logging.getLogger("possm_plugin.fast_numba")

try:  # pragma: no cover - exercised by whichever branch the install has
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    _NUMBA_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any failure to import means "not available"
    njit = ir = types = intrinsic = None
    _NUMBA_ERROR = f"{type(exc).__name__}: {exc}"

# fast-math without 'nnan'/'ninf' (masked attention scores are -inf) and without 'afn' (no approximate libm)
_FM = {"nsz", "arcp", "contract", "reassoc"}

_GRU, _S4D, _MAMBA = 0, 1, 2
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


def numba_available() -> bool:
    """Whether Numba imports here (the compiled step needs it)."""
    return njit is not None


def _can_cache() -> bool:
    """Whether Numba finds a writable cache directory (beside this file, or its per-user directory); if
    not, the step is compiled in each process (slower start, same code)."""
    try:
        njit(cache=True)(lambda: 0)
        return True
    except Exception as exc:  # noqa: BLE001 - e.g. "no locator available" on a read-only install without HOME
        log.warning("Numba cannot cache the compiled inference step (%s); each process compiles it (~10-30 s at start)", exc)
        return False


if njit is not None:
    # error_model="numpy": a float division by zero gives inf/nan instead of raising (the Python check
    # in every division stops its loop from vectorising); the code guards its own divisions
    _CACHE = _can_cache()
    _jit = njit(cache=_CACHE, fastmath=_FM, nogil=True, error_model="numpy")

    @_jit
    def _t(P, M, i):
        """Tensor ``i`` of the buffer as a (rows, cols) view."""
        o, r, c = M[i, 0], M[i, 1], M[i, 2]
        return P[o : o + r * c].reshape(r, c)

    @_jit
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

    @_jit
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

    @_jit
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
    @_jit
    def _exp64(x):
        """exp of a float64 x in [-708, 709], relative error ~1e-10 (2**n * Taylor(9) on |f| <= ln2/2)."""
        x = min(max(x, -708.0), 709.0)
        n = np.rint(x * 1.4426950408889634)
        f = x - n * 0.6931471803691238 - n * 1.9082149292705877e-10  # ln 2 as hi + lo
        p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6 + f * (1.0 / 24 + f * (1.0 / 120 + f * (
            1.0 / 720 + f * (1.0 / 5040 + f * (1.0 / 40320 + f * (1.0 / 362880)))))))))
        return p * _bits_to_double((np.int64(n) + np.int64(1023)) << np.int64(52))

    @_jit
    def _exp(x):
        """exp of a float32 (0 below -708)."""
        return np.float32(_exp64(np.float64(x))) if x > -708.0 else np.float32(0.0)

    @_jit
    def _sigmoid(x):
        return np.float32(1.0) / np.float32(1.0 + _exp64(-np.float64(x)))

    @_jit
    def _tanh(x):
        """tanh = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); 1 - e in float64: no cancellation near 0."""
        e = _exp64(-2.0 * abs(np.float64(x)))
        t = np.float32(1.0 - e) / np.float32(1.0 + e)
        return t if x >= 0 else -t

    @_jit
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

    @_jit
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

    @_jit
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

    @_jit
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
                    if v > mx:
                        mx = v
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

    @_jit
    def _gru(P, M, I, x, hs):
        bsz, layers, n = hs.shape
        new = np.empty_like(hs)
        for i in range(layers):
            t0 = _T_LAYERS + _GRU_STRIDE * i
            h = np.ascontiguousarray(hs[:, i])
            gi = _lin(x, _t(P, M, t0), _t(P, M, t0 + 1))
            gh = _lin(h, _t(P, M, t0 + 2), _t(P, M, t0 + 3))
            x = np.empty((bsz, n), np.float32)
            for b in range(bsz):
                for j in range(n):
                    r = _sigmoid(gi[b, j] + gh[b, j])
                    z = _sigmoid(gi[b, n + j] + gh[b, n + j])
                    c = _tanh(gi[b, 2 * n + j] + r * gh[b, 2 * n + j])
                    v = c + z * (h[b, j] - c)
                    x[b, j] = v
                    new[b, i, j] = v
        return x, new

    @_jit
    def _s4d(P, M, I, E, x, st):
        """st: (B, L, H, N2, 2) float32 complex states as (re, im) pairs."""
        bsz, layers, hid, n2, _ = st.shape
        new = np.empty_like(st)
        h = _lin(x, _t(P, M, _T_PROJ_W), _t(P, M, _T_PROJ_B))
        g_in = np.empty((bsz, hid), np.float32)
        for i in range(layers):
            t0 = _T_LAYERS + _S4D_STRIDE * i
            u = _layernorm(h, _t(P, M, t0), _t(P, M, t0 + 1), E[_E_LAYERS + i])
            a_re, a_im = _t(P, M, t0 + 2), _t(P, M, t0 + 3)
            c_re, c_im = _t(P, M, t0 + 4), _t(P, M, t0 + 5)
            dv = _t(P, M, t0 + 6)[0]
            for b in range(bsz):
                for hh in range(hid):
                    uu = u[b, hh]
                    yv = np.float32(0.0)
                    for q in range(n2):
                        sr, si = st[b, i, hh, q, 0], st[b, i, hh, q, 1]
                        ar, ai = a_re[hh, q], a_im[hh, q]
                        nr = ar * sr - ai * si + uu
                        ni = ar * si + ai * sr
                        new[b, i, hh, q, 0] = nr
                        new[b, i, hh, q, 1] = ni
                        yv += nr * c_re[hh, q] + ni * c_im[hh, q]
                    g_in[b, hh] = yv + uu * dv[hh]
                for hh in range(hid):  # a loop of its own: it vectorises
                    g_in[b, hh] = _gelu(g_in[b, hh])
            g = _lin(g_in, _t(P, M, t0 + 7), _t(P, M, t0 + 8))
            for b in range(bsz):
                for hh in range(hid):
                    h[b, hh] += g[b, hh] * _sigmoid(g[b, hid + hh])
        return _layernorm(h, _t(P, M, _T_NORM_W), _t(P, M, _T_NORM_B), E[_E_NORM]), new

    @_jit
    def _softplus(x):
        return x if x > 20.0 else np.log1p(_exp(x))

    @_jit
    def _mamba(P, M, I, E, x, conv, ssm):
        """conv: (B, L, di, d_conv - 1), ssm: (B, L, di, ds)."""
        bsz, layers, di, kc = conv.shape
        ds, dr = I[_I_DS], I[_I_DR]
        new_conv, new_ssm = np.empty_like(conv), np.empty_like(ssm)
        h = _lin(x, _t(P, M, _T_PROJ_W), _t(P, M, _T_PROJ_B))
        u = np.empty((bsz, di), np.float32)
        yv = np.empty((bsz, di), np.float32)
        for i in range(layers):
            t0 = _T_LAYERS + _MAMBA_STRIDE * i
            xz = _lin(_standardize(h, E[_E_LAYERS + i]), _t(P, M, t0), _t(P, M, t0 + 1))
            cw, cb = _t(P, M, t0 + 2), _t(P, M, t0 + 3)
            for b in range(bsz):
                for j in range(di):
                    xin = xz[b, j]
                    c = cb[0, j] + cw[j, kc] * xin
                    for q in range(kc):
                        w = conv[b, i, j, q]
                        c += cw[j, q] * w
                        if q > 0:
                            new_conv[b, i, j, q - 1] = w
                    if kc > 0:
                        new_conv[b, i, j, kc - 1] = xin
                    u[b, j] = c
                for j in range(di):  # SiLU, in a loop of its own: it vectorises
                    u[b, j] = u[b, j] * _sigmoid(u[b, j])
            dbc = _lin(u, _t(P, M, t0 + 4), _t(P, M, t0 + 5))
            dtin = np.ascontiguousarray(dbc[:, :dr])
            dt = _lin(dtin, _t(P, M, t0 + 6), _t(P, M, t0 + 7))
            a = _t(P, M, t0 + 8)
            dv = _t(P, M, t0 + 9)[0]
            for b in range(bsz):
                for j in range(di):
                    dt[b, j] = _softplus(dt[b, j])
                for j in range(di):
                    dtj = dt[b, j]
                    du = dtj * u[b, j]
                    acc = np.float32(0.0)
                    for q in range(ds):
                        s = _exp(dtj * a[j, q]) * ssm[b, i, j, q] + du * dbc[b, dr + q]
                        new_ssm[b, i, j, q] = s
                        acc += s * dbc[b, dr + ds + q]
                    yv[b, j] = acc + dv[j] * u[b, j]
                for j in range(di):  # the SiLU gate, vectorised
                    z = xz[b, di + j]
                    yv[b, j] *= z * _sigmoid(z)
            g = _lin(yv, _t(P, M, t0 + 10), _t(P, M, t0 + 11))
            h += g
        return _layernorm(h, _t(P, M, _T_NORM_W), _t(P, M, _T_NORM_B), E[_E_NORM]), new_conv, new_ssm

    @_jit
    def _step_gru(P, M, I, E, units, cos, sin, mask, session, slots, hs, hist, seen):
        z = _encode(P, M, I, E, units, cos, sin, mask)
        y, new = _gru(P, M, I, z, hs)
        out, ctx = _decode(P, M, I, E, y, hist, seen, session, slots)
        return out, new, ctx

    @_jit
    def _step_s4d(P, M, I, E, units, cos, sin, mask, session, slots, st, hist, seen):
        z = _encode(P, M, I, E, units, cos, sin, mask)
        y, new = _s4d(P, M, I, E, z, st)
        out, ctx = _decode(P, M, I, E, y, hist, seen, session, slots)
        return out, new, ctx

    @_jit
    def _step_mamba(P, M, I, E, units, cos, sin, mask, session, slots, conv, ssm, hist, seen):
        z = _encode(P, M, I, E, units, cos, sin, mask)
        y, nc, ns = _mamba(P, M, I, E, z, conv, ssm)
        out, ctx = _decode(P, M, I, E, y, hist, seen, session, slots)
        return out, nc, ns, ctx


class _Packer:
    """Collects 2-D float32 tensors into one buffer, each at a 64-byte boundary."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.meta: list[tuple[int, int, int]] = []
        self.size = 0

    def add(self, a: np.ndarray | None, like: int = 1) -> None:
        a = np.zeros((1, like), np.float32) if a is None else np.asarray(a, np.float32)
        a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
        self.meta.append((self.size, a.shape[0], a.shape[1]))
        self.parts.append((self.size, a))
        self.size += -(-a.size // 16) * 16

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        raw = np.empty(self.size + 16, np.float32)
        shift = (-raw.ctypes.data % 64) // 4  # align the buffer's start to 64 bytes
        buf = raw[shift : shift + self.size]
        buf[:] = 0.0
        for off, a in self.parts:
            buf[off : off + a.size] = a.reshape(-1)
        return buf, np.asarray(self.meta, np.int64)


class NumbaStep:
    """Compiled inference step; ``step`` has :meth:`NumpyStep.step`'s signature and results."""

    @classmethod
    def from_model(cls, model, numpy_step: NumpyStep | None = None) -> "NumbaStep":
        if not numba_available():
            raise RuntimeError(f"Numba is not available ({_NUMBA_ERROR}); use NumpyStep")
        if not numpy_step_supported(model):
            raise TypeError(f"no compiled step for backbone {type(model.backbone).__name__}; use FastStep")
        ns = numpy_step or NumpyStep.from_model(model)
        self = cls(ns)
        self.prepare(tuple(np.ascontiguousarray(x.detach().cpu().numpy()) for x in model.initial_state(1)))
        return self

    def prepare(self, state: tuple[np.ndarray, ...]) -> float:
        """Compile this step (or load it from Numba's cache) now, with one throwaway step on a blank chunk
        from ``state`` (one stream's initial state), so that no live chunk pays for it; returns seconds."""
        global _ANNOUNCED
        fn = (_step_gru, _step_s4d, _step_mamba)[self.kind]
        if not _ANNOUNCED and not _is_cached(fn):
            _ANNOUNCED = True
            log.info("compiling the inference step (the first run after an install or upgrade; ~10-30 s, then cached)")
        t = time.perf_counter()
        self.step(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.float32), np.ones((1, 1), bool), np.zeros(1, np.int64), state)
        dt = time.perf_counter() - t
        log.debug("compiled inference step ready in %.2f s", dt)
        return dt

    def __init__(self, ns: NumpyStep) -> None:
        from .fast_numpy import _GRU as NpGRU
        from .fast_numpy import _S4D as NpS4D

        pk = _Packer()
        dim = ns.latent.shape[1]
        pk.add(ns.unit_table)
        pk.add(ns.enc_out[0]), pk.add(ns.enc_out[1])
        pk.add(ns.latent)
        ef = ns.enc_ffn
        pk.add(ef.proj_in[0]), pk.add(ef.proj_in[1]), pk.add(ef.proj_out[0]), pk.add(ef.proj_out[1], dim)
        k = ns.k
        pk.add(ns.dec_kv_wt.reshape(-1, ns.dec_kv_wt.shape[-1]))
        pk.add(ns.dec_kv_b.reshape(k, -1))
        pk.add(ns.sess_q.reshape(ns.sess_q.shape[0], -1))
        pk.add(ns.sess_x)
        pk.add(ns.dec_out[0]), pk.add(ns.dec_out[1])
        df = ns.dec_ffn
        pk.add(df.proj_in[0]), pk.add(df.proj_in[1]), pk.add(df.proj_out[0]), pk.add(df.proj_out[1], dim)
        n_out = ns.readout[0].shape[1]
        pk.add(ns.readout[0]), pk.add(ns.readout[1], n_out)
        bb = ns.backbone
        eps = [ef.ln.eps_f, ns.dec_norm.eps_f, df.ln.eps_f, 1e-5]
        ds = dr = 0
        if isinstance(bb, NpGRU):
            self.kind = _GRU
            pk.add(None), pk.add(None), pk.add(None), pk.add(None)  # no final norm, no input projection
            for w_ih, b_ih, w_hh, b_hh in bb.layers:
                pk.add(w_ih), pk.add(b_ih), pk.add(w_hh), pk.add(b_hh)
        elif isinstance(bb, NpS4D):
            self.kind = _S4D
            pk.add(bb.norm.w), pk.add(bb.norm.b), pk.add(bb.proj[0]), pk.add(bb.proj[1], bb.proj[0].shape[1])
            eps[_E_NORM] = bb.norm.eps_f
            for ln, abar, cvec, d_skip, out, _ in bb.layers:
                pk.add(ln.w), pk.add(ln.b)
                pk.add(np.ascontiguousarray(abar.real)), pk.add(np.ascontiguousarray(abar.imag))
                pk.add(np.ascontiguousarray(cvec[:, 0::2])), pk.add(np.ascontiguousarray(cvec[:, 1::2]))
                pk.add(d_skip), pk.add(out[0]), pk.add(out[1], out[0].shape[1])
                eps.append(ln.eps_f)
        else:
            self.kind = _MAMBA
            pk.add(bb.norm.w), pk.add(bb.norm.b), pk.add(bb.proj[0]), pk.add(bb.proj[1], bb.proj[0].shape[1])
            eps[_E_NORM] = bb.norm.eps_f
            for ln, in_proj, conv_w, conv_b, x_proj, dt_proj, a, d_skip, out_proj, _, ds, dr in bb.blocks:
                pk.add(in_proj[0]), pk.add(in_proj[1])
                pk.add(conv_w), pk.add(conv_b)
                pk.add(x_proj[0]), pk.add(x_proj[1], x_proj[0].shape[1])
                pk.add(dt_proj[0]), pk.add(dt_proj[1], dt_proj[0].shape[1])
                pk.add(a), pk.add(d_skip)
                pk.add(out_proj[0]), pk.add(out_proj[1], out_proj[0].shape[1])
                eps.append(ln.eps_f)
        self.P, self.M = pk.build()
        ints_arr = np.zeros(_I_NI, np.int64)
        for pos, v in ((_I_HEADS, ns.heads), (_I_D, ns.d), (_I_R, ns.r), (_I_NLAT, ns.n_lat), (_I_K, k),
                       (_I_NS, ns.n_score), (_I_DIM, dim), (_I_DS, ds), (_I_DR, dr), (_I_EHALF, ef.half), (_I_DHALF, df.half)):
            ints_arr[pos] = v
        self.I = ints_arr
        self.E = np.asarray(eps, np.float32)
        self.slots = np.ascontiguousarray(ns.slot_offsets, np.int64)
        self.omega = ns.omega  # the rotary angles are computed before the compiled call (NumPy's SIMD cos/sin)

    def step(self, units: np.ndarray, times: np.ndarray, mask: np.ndarray, session: np.ndarray,
             state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        units = np.ascontiguousarray(units, np.int64)
        ang = np.multiply(np.asarray(times, np.float32)[..., None], self.omega)
        cos, sin = np.cos(ang), np.sin(ang, out=ang)
        mask = np.ascontiguousarray(mask, np.bool_)
        session = np.ascontiguousarray(session, np.int64)
        *bb, hist, seen = state
        hist = np.ascontiguousarray(hist, np.float32)
        seen_i = np.ascontiguousarray(seen, np.int64)
        if self.kind == _GRU:
            out, hs, ctx = _step_gru(self.P, self.M, self.I, self.E, units, cos, sin, mask, session, self.slots,
                                     np.ascontiguousarray(bb[0], np.float32), hist, seen_i)
            new_bb = (hs,)
        elif self.kind == _S4D:
            out, st, ctx = _step_s4d(self.P, self.M, self.I, self.E, units, cos, sin, mask, session, self.slots,
                                     np.ascontiguousarray(bb[0], np.float32), hist, seen_i)
            new_bb = (st,)
        else:
            out, conv, ssm, ctx = _step_mamba(self.P, self.M, self.I, self.E, units, cos, sin, mask, session, self.slots,
                                              np.ascontiguousarray(bb[0], np.float32), np.ascontiguousarray(bb[1], np.float32),
                                              hist, seen_i)
            new_bb = (conv, ssm)
        return out, (*new_bb, ctx, seen + 1)


_ANNOUNCED = False  # the "compiling" message is logged once per process


def cache_directory() -> str | None:
    """Where Numba keeps the compiled step (None: no writable cache, compiled in each process)."""
    if njit is None or not _CACHE:
        return None
    try:
        return str(_step_gru._cache._cache_path)
    except Exception:  # noqa: BLE001 - Numba internals
        return None


def _is_cached(dispatcher) -> bool:
    """Whether Numba's disk cache holds a current compilation of ``dispatcher`` (best effort)."""
    try:
        return bool(dispatcher._cache._cache_file._load_index())
    except Exception:  # noqa: BLE001 - Numba internals; unknown means "say that it may compile"
        return False


def warm_up() -> float:
    """Compile (or load from the cache) the step of every built-in backbone; returns the seconds taken."""
    if not numba_available():
        return 0.0
    import torch

    from .config import ModelConfig
    from .model import POSSM

    t = time.perf_counter()
    torch_state = torch.random.get_rng_state()
    try:
        for bb, kw in (("gru", {"hidden": 8, "layers": 1}), ("s4d", {"hidden": 8, "layers": 1, "d_state": 4}),
                       ("mamba", {"hidden": 8, "layers": 1, "d_state": 4})):
            model = POSSM(ModelConfig(dim=8, dim_head=8, backbone=bb, backbone_kwargs=kw), unit_ids=["a", "b"], session_ids=["s"]).eval()
            NumbaStep.from_model(model)  # compiles (or loads) its backbone's step
    finally:
        torch.random.set_rng_state(torch_state)
    return time.perf_counter() - t
