"""The compiled step's backbone kernels (Numba) and its three entry points, one per built-in backbone:
input attention, backbone, output attention and readout of one chunk in one compiled call.

Entry points are compiled on their first call (never at import) and cached on disk; the state
arrays are the layouts of :meth:`POSSM.initial_state` (S4D's complex states as (re, im) pairs).
"""

from __future__ import annotations

import numpy as np

from possm_plugin.engines.numba_kernels import (
    _E_LAYERS,
    _E_NORM,
    _GRU_STRIDE,
    _I_DR,
    _I_DS,
    _MAMBA_STRIDE,
    _S4D_STRIDE,
    _T_LAYERS,
    _T_NORM_B,
    _T_NORM_W,
    _T_PROJ_B,
    _T_PROJ_W,
    _decode,
    _encode,
    _exp,
    _gelu,
    _layernorm,
    _lin,
    _sigmoid,
    _standardize,
    _t,
    _tanh,
    jit,
    jit_cached,
)

__all__ = ["STEPS"]


@jit
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

@jit
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

@jit
def _softplus(x):
    return x if x > 20.0 else np.log1p(_exp(x))

@jit
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

@jit_cached
def _step_gru(P, M, I, E, units, cos, sin, mask, session, slots, hs, hist, seen):
    z = _encode(P, M, I, E, units, cos, sin, mask)
    y, new = _gru(P, M, I, z, hs)
    out, ctx = _decode(P, M, I, E, y, hist, seen, session, slots)
    return out, new, ctx

@jit_cached
def _step_s4d(P, M, I, E, units, cos, sin, mask, session, slots, st, hist, seen):
    z = _encode(P, M, I, E, units, cos, sin, mask)
    y, new = _s4d(P, M, I, E, z, st)
    out, ctx = _decode(P, M, I, E, y, hist, seen, session, slots)
    return out, new, ctx

@jit_cached
def _step_mamba(P, M, I, E, units, cos, sin, mask, session, slots, conv, ssm, hist, seen):
    z = _encode(P, M, I, E, units, cos, sin, mask)
    y, nc, ns = _mamba(P, M, I, E, z, conv, ssm)
    out, ctx = _decode(P, M, I, E, y, hist, seen, session, slots)
    return out, nc, ns, ctx


#: the entry point of each backbone kind: 0 GRU, 1 S4D, 2 Mamba
STEPS = (_step_gru, _step_s4d, _step_mamba)
