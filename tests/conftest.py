"""Shared fixtures: tiny models and checkpoints, made fresh (no downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from possm_plugin.model.checkpoint import save_checkpoint
from possm_plugin.model.config import ModelConfig, preset
from possm_plugin.model.possm import POSSM

# keep tests deterministic and light on the 2-core machine
torch.set_num_threads(1)
os.environ.setdefault("POSSM_RAISE_IN_THREADS", "1")
# LSL discovery never leaves this machine, whatever the import order of the test modules
_LSL_CFG = Path(tempfile.mkdtemp(prefix="possm-lsl-cfg-")) / "lsl_api.cfg"
_LSL_CFG.write_text("[multicast]\nResolveScope = machine\n")
os.environ.setdefault("LSLAPICFG", str(_LSL_CFG))

TINY = {"dim": 32, "dim_head": 32, "ffn_dropout": 0.0}
TINY_BACKBONE = {
    "gru": {"hidden": 48, "layers": 1},
    "s4d": {"hidden": 48, "layers": 2, "d_state": 16},
    "mamba": {"hidden": 32, "layers": 2, "d_state": 8},
}


def make_tiny_model(backbone: str = "gru", *, n_units: int = 16, session: str = "sess0", seed: int = 0, **overrides) -> POSSM:
    """A small random POSSM with one session of ``n_units`` units named ``session/uNNN``."""
    torch.manual_seed(seed)
    units = [f"{session}/u{i:03d}" for i in range(n_units)]
    d = preset("small", "gru").to_dict()
    d.update(TINY, backbone=backbone, backbone_kwargs=TINY_BACKBONE.get(backbone, {}), target_scale=20.0)
    d.update(overrides)
    cfg = ModelConfig.from_dict(d)
    return POSSM(cfg, unit_ids=units, session_ids=[session], session_units={session: units}).eval()


@pytest.fixture(scope="session", autouse=True)
def compiled_steps():
    """Numba compiles lazily (a decoder's first compiled engine compiles, or loads Numba's disk cache),
    so a test session imports nothing here. Only when that cache is missing or older than the kernels
    (a fresh clone, or just after editing them) is the step compiled once, before any test starts a
    decoder process: the nodes the tests spawn then load it instead of each compiling for seconds."""
    import possm_plugin.engines

    here = Path(possm_plugin.engines.__file__).parent
    src = max((here / f).stat().st_mtime for f in ("numba_kernels.py", "numba_backbones.py"))
    newest: dict[str, float] = {}  # entry point -> its newest cache index (older ones name older line numbers)
    for p in (here / "__pycache__").glob("numba_backbones._step_*.nbi"):
        name = p.name.split("-")[0]
        newest[name] = max(newest.get(name, 0.0), p.stat().st_mtime)
    if len(newest) < 3 or min(newest.values()) < src:
        from possm_plugin.engines.numba_step import warm_up

        warm_up()


@pytest.fixture
def tiny_model() -> POSSM:
    return make_tiny_model("gru")


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model):
    """Path of a saved tiny checkpoint (the .yaml)."""
    return save_checkpoint(tiny_model, tmp_path / "tiny", meta={"note": "test fixture"})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
