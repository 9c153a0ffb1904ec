"""The compiled CPU engine: the folded tables packed into one buffer, one Numba call per chunk.

At batch 1 a POSSM chunk is a few dozen small operations. NumPy pays 1-3 microseconds of interpreter
and dispatch per operation and allocates a temporary for each; the compiled step pays that once per
chunk and fuses the per-token work of the input attention (score, softmax, rotation and weighting of
each spike's value) into two passes over the spikes with no temporaries. Matrix-vector products still
go to the BLAS (``sgemv``), which is what bounds o-POSSM (its ~22-31 MB of weights stream from L3 or
memory each chunk).

- Same mathematics as :meth:`POSSM.step`, over the tables of :func:`~possm_plugin.engines.fold.fold`:
  outputs and states agree to float32 rounding (tests/engines/test_engines.py, every built-in backbone).
- Compiled on first use (the first :class:`NumbaEngine` of a backbone kind in a process; never at
  import) and cached on disk (beside this package when it is writable, else in Numba's per-user cache
  directory): the first use in a fresh install compiles for ~10-30 s, later processes load the cache
  in well under a second. The engine compiles (or loads) before its constructor returns, so a decoder
  never compiles on a live chunk; :func:`warm_up` (``possm compile``) does it for every backbone
  ahead of time.
- BLAS threads: a matrix-vector product of one chunk is fastest on one thread; set the process's BLAS
  threads with :func:`possm_plugin.realtime.threads.set_cpu_threads` (the CLIs do).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from possm_plugin.engines.base import Engine
from possm_plugin.engines.fold import Folded, GRUFold, Linear, S4DFold
from possm_plugin.engines.numba_backbones import STEPS
from possm_plugin.engines.numba_kernels import (
    _E_NORM,
    _I_D,
    _I_DHALF,
    _I_DIM,
    _I_DR,
    _I_DS,
    _I_EHALF,
    _I_HEADS,
    _I_K,
    _I_NI,
    _I_NLAT,
    _I_NS,
    _I_R,
    CACHE,
)
from possm_plugin.model.possm import POSSM

__all__ = ["NumbaEngine", "cache_directory", "warm_up"]

log = logging.getLogger("possm_plugin.engines")

_GRU, _S4D, _MAMBA = 0, 1, 2
_ANNOUNCED = False  # the "compiling" message is logged once per process


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


class _Packer:
    """Collects 2-D float32 tensors into one buffer, each at a 64-byte boundary."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, np.ndarray]] = []
        self.meta: list[tuple[int, int, int]] = []
        self.size = 0

    def add(self, a: torch.Tensor | np.ndarray | None, like: int = 1) -> None:
        a = np.zeros((1, like), np.float32) if a is None else _np(a) if isinstance(a, torch.Tensor) else np.asarray(a, np.float32)
        a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
        self.meta.append((self.size, a.shape[0], a.shape[1]))
        self.parts.append((self.size, a))
        self.size += -(-a.size // 16) * 16

    def lin(self, wb: Linear) -> None:
        self.add(wb[0])
        self.add(wb[1])

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        raw = np.empty(self.size + 16, np.float32)
        shift = (-raw.ctypes.data % 64) // 4  # align the buffer's start to 64 bytes
        buf = raw[shift : shift + self.size]
        buf[:] = 0.0
        for off, a in self.parts:
            buf[off : off + a.size] = a.reshape(-1)
        return buf, np.asarray(self.meta, np.int64)


def _pack(f: Folded) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(backbone kind, P, M, I, E) in the layout of :mod:`~possm_plugin.engines.numba_kernels`."""
    pk = _Packer()
    pk.add(f.unit_table)
    pk.lin(f.enc_out)
    pk.add(f.latent)
    pk.lin(f.enc_ffn.proj_in), pk.lin(f.enc_ffn.proj_out)
    pk.add(f.dec_kv_w.reshape(-1, f.dec_kv_w.shape[-1]))  # (k*E, 2*H*d)
    pk.add(f.dec_kv_b)
    pk.add(f.sess_q.reshape(f.sess_q.shape[0], -1))
    pk.add(f.sess_x)
    pk.lin(f.dec_out)
    pk.lin(f.dec_ffn.proj_in), pk.lin(f.dec_ffn.proj_out)
    pk.lin(f.readout)
    bb = f.backbone
    eps = [f.enc_ffn.eps, f.dec_eps, f.dec_ffn.eps, 1e-5]
    ds = dr = 0
    if isinstance(bb, GRUFold):
        kind = _GRU
        pk.add(None), pk.add(None), pk.add(None), pk.add(None)  # no final norm, no input projection
        for w_ih, b_ih, w_hh, b_hh in bb.layers:
            pk.add(w_ih), pk.add(b_ih), pk.add(w_hh), pk.add(b_hh)
    elif isinstance(bb, S4DFold):
        kind = _S4D
        pk.add(bb.norm_w), pk.add(bb.norm_b), pk.lin(bb.proj)
        eps[_E_NORM] = bb.eps
        for ly in bb.layers:
            pk.add(ly.norm_w), pk.add(ly.norm_b), pk.add(ly.a_re), pk.add(ly.a_im), pk.add(ly.c_re), pk.add(ly.c_im)
            pk.add(ly.d_skip), pk.lin(ly.out)
            eps.append(ly.eps)
    else:
        kind = _MAMBA
        pk.add(bb.norm_w), pk.add(bb.norm_b), pk.lin(bb.proj)
        eps[_E_NORM] = bb.eps
        for blk in bb.blocks:
            pk.lin(blk.in_proj), pk.add(blk.conv_w), pk.add(blk.conv_b), pk.lin(blk.x_proj), pk.lin(blk.dt_proj)
            pk.add(blk.a), pk.add(blk.d_skip), pk.lin(blk.out_proj)
            eps.append(blk.eps)
            ds, dr = blk.d_state, blk.dt_rank
    P, M = pk.build()
    ints = np.zeros(_I_NI, np.int64)
    for pos, v in ((_I_HEADS, f.heads), (_I_D, f.d), (_I_R, f.r), (_I_NLAT, f.n_lat), (_I_K, f.k), (_I_NS, f.n_score),
                   (_I_DIM, f.dim), (_I_DS, ds), (_I_DR, dr), (_I_EHALF, f.enc_ffn.half), (_I_DHALF, f.dec_ffn.half)):
        ints[pos] = v
    return kind, P, M, ints, np.asarray(eps, np.float32)


class NumbaEngine(Engine):
    """The compiled step over ``folded`` (a built-in backbone), state in NumPy arrays; built, it has
    compiled (or loaded from the cache) and run one throwaway step."""

    name = "numba"

    def __init__(self, model: POSSM, folded: Folded, *, sessions: np.ndarray) -> None:
        if folded.backbone is None:
            raise TypeError(f"no compiled step for backbone {type(model.backbone).__name__}; use the torch engine")
        n = len(sessions)
        super().__init__(state=tuple(_state_np(model, n)), fresh=tuple(_state_np(model, 1)),
                         sessions=np.ascontiguousarray(sessions, np.int64))
        kind, self.P, self.M, self.I, self.E = _pack(folded)
        self._fn = STEPS[kind]
        self.slots = np.ascontiguousarray(folded.slot_offsets.cpu().numpy(), np.int64)
        self.omega = _np(folded.omega)  # rotary angles are computed before the compiled call (NumPy's SIMD cos/sin)
        self.prepare()

    def prepare(self) -> float:
        """Compile the step (or load it from Numba's cache) now, with one throwaway step, so that no live
        chunk pays for it; returns seconds."""
        global _ANNOUNCED
        if not _ANNOUNCED and not _is_cached(self._fn):
            _ANNOUNCED = True
            log.info("compiling the inference step (the first run after an install or upgrade; ~10-30 s, then cached)")
        t = time.perf_counter()
        self.warm(0)
        dt = time.perf_counter() - t
        log.debug("compiled inference step ready in %.2f s", dt)
        return dt

    def _run(self, units, times, mask, sessions, state):
        ang = np.multiply(np.asarray(times, np.float32)[..., None], self.omega)
        cos, sin = np.cos(ang), np.sin(ang, out=ang)
        *bb, hist, seen = state
        c = np.ascontiguousarray
        out, *new = self._fn(self.P, self.M, self.I, self.E, c(units, np.int64), cos, sin, c(mask, np.bool_), c(sessions, np.int64),
                             self.slots, *(c(x, np.float32) for x in bb), c(hist, np.float32), c(seen, np.int64))
        return out, (*new, seen + 1)


def _state_np(model: POSSM, n: int) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(x.detach().cpu().numpy()) for x in model.initial_state(n, device="cpu"))


def cache_directory() -> str | None:
    """Where Numba keeps the compiled step (None: no writable cache, compiled in each process)."""
    if not CACHE:
        return None
    try:
        return str(STEPS[0]._cache._cache_path)
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
    from possm_plugin.engines.fold import fold
    from possm_plugin.model.config import ModelConfig

    t = time.perf_counter()
    torch_state = torch.random.get_rng_state()
    try:
        for bb, kw in (("gru", {"hidden": 8, "layers": 1}), ("s4d", {"hidden": 8, "layers": 1, "d_state": 4}),
                       ("mamba", {"hidden": 8, "layers": 1, "d_state": 4})):
            model = POSSM(ModelConfig(dim=8, dim_head=8, backbone=bb, backbone_kwargs=kw), unit_ids=["a", "b"], session_ids=["s"]).eval()
            NumbaEngine(model, fold(model), sessions=np.zeros(1, np.int64))  # compiles (or loads) its backbone's step
    finally:
        torch.random.set_rng_state(torch_state)
    return time.perf_counter() - t
