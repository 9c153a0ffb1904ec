"""Inference engines: one folding of a trained POSSM (:func:`fold`), and the steps that read it.

- ``"numba"``: :class:`~possm_plugin.engines.numba_step.NumbaEngine`, compiled, the CPU default for
  the built-in backbones.
- ``"torch"``: :class:`~possm_plugin.engines.torch_step.TorchEngine`, any device (CUDA) and any
  backbone (a third party's steps with its own ``step``).
- ``"reference"``: :class:`~possm_plugin.engines.torch_step.ReferenceEngine`, ``model.step`` itself.
- :class:`~possm_plugin.engines.numpy_step.NumpyEngine` is a NumPy reference for tests.

Each engine owns its slots' state (:class:`~possm_plugin.engines.base.Engine`); :func:`build_engine`
folds the model once and builds only the engine asked for. The Numba kernels are imported, and
compiled or loaded from their disk cache, only when a compiled engine is built.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from possm_plugin.engines.base import Engine
from possm_plugin.engines.fold import Folded, fold, fold_supported
from possm_plugin.errors import ConfigError
from possm_plugin.model.possm import POSSM

__all__ = ["ENGINES", "Engine", "Folded", "build_engine", "choose_engine", "fold", "fold_supported", "numba_available", "numba_error"]

#: the names ``StreamingDecoder(engine=...)`` takes
ENGINES = ("auto", "numba", "torch", "reference")


@functools.cache
def numba_error() -> str | None:
    """Why the compiled engine cannot load here (None: it can); imports Numba on the first call."""
    try:
        from possm_plugin.engines import numba_step  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import means "not available"
        return f"{type(exc).__name__}: {exc}"
    return None


def numba_available() -> bool:
    """Whether the compiled engine can run here (Numba imports)."""
    return numba_error() is None


def choose_engine(model: POSSM, *, engine: str = "auto", device: str | torch.device = "cpu") -> str:
    """The engine ``engine`` names for ``model`` on ``device`` (``"auto"``: ``"numba"`` on the CPU for
    the built-in backbones, else ``"torch"``); a clear :class:`ConfigError` if it cannot run there."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    dev = torch.device(device)
    if engine == "auto":
        return "numba" if dev.type == "cpu" and fold_supported(model) and numba_available() else "torch"
    if engine == "numba":
        if dev.type != "cpu":
            raise ConfigError(f"engine='numba' runs on the CPU only, not on {dev}; use engine='torch'")
        if not fold_supported(model):
            raise ConfigError(f"engine='numba' has no step for backbone {model.config.backbone!r}; use engine='torch'")
        if not numba_available():
            raise ConfigError(f"engine='numba' needs Numba ({numba_error()}); engine='torch' runs without it")
    return engine


def build_engine(model: POSSM, *, engine: str = "auto", sessions, device: str | torch.device = "cpu",
                 output_scale: float = 1.0) -> Engine:
    """Fold ``model`` and build the engine ``engine`` names (see :func:`choose_engine`) for
    ``len(sessions)`` slots, slot i decoding session row ``sessions[i]``; outputs come out times
    ``output_scale``. Rebuild after the model's weights change."""
    name = choose_engine(model, engine=engine, device=device)
    sessions = np.asarray(sessions, np.int64).reshape(-1)
    dev = torch.device(device)
    if name == "reference":
        from possm_plugin.engines.torch_step import ReferenceEngine

        return ReferenceEngine(model, sessions=sessions, device=dev, output_scale=output_scale)
    folded = fold(model, output_scale=output_scale)
    if name == "numba":
        from possm_plugin.engines.numba_step import NumbaEngine

        return NumbaEngine(model, folded, sessions=sessions)
    from possm_plugin.engines.torch_step import TorchEngine

    return TorchEngine(model, folded, sessions=sessions, device=dev)
