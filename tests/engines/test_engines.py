"""The inference engines (possm_plugin.engines): one folding, three steps, all equal to model.step."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from possm_plugin.engines import build_engine, choose_engine, fold
from possm_plugin.engines.numpy_step import NumpyEngine
from possm_plugin.errors import ConfigError
from possm_plugin.model.tokenize import chunk_starts, collate, tokenize


def _tokens(n_chunks, n_units, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for b in range(batch):
        n = rng.poisson(30 * n_chunks)
        t = np.sort(rng.uniform(0, n_chunks * 0.05, n))
        r = rng.integers(1, n_units + 1, n)
        keep = ~((t > 0.2 + 0.1 * b) & (t < 0.4 + 0.1 * b))  # silent chunks at different places
        items.append(tokenize(r[keep], t[keep], starts=chunk_starts(0, n_chunks, 0.05), width=0.05))
    return collate(items)


def _a(x) -> np.ndarray:
    """An engine's state array as NumPy (a copy)."""
    return x.cpu().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def _engine(m, name, sessions, **kw):
    if name == "numpy":
        return NumpyEngine(m, fold(m, **kw), sessions=sessions)
    return build_engine(m, engine=name, sessions=sessions, **kw)


def _chunk(t, i, rows=slice(None)):
    return t["units"][rows, i].numpy(), t["times"][rows, i].numpy(), t["mask"][rows, i].numpy()


CONFIGS = [
    ("gru", {}),
    ("gru", {"backbone_kwargs": {"hidden": 24, "layers": 3}}),
    ("s4d", {}),
    ("s4d", {"context_chunks": 5, "chunk_step": 0.025}),
    ("mamba", {}),
    ("gru", {"num_latents": 2, "cross_heads": 2, "dim_head": 16}),
    ("mamba", {"num_latents": 3, "cross_heads": 2, "dim_head": 16}),
    ("s4d", {"readout": "classification", "output_dim": 5, "output_names": []}),
    ("gru", {"readout": "ctc", "output_dim": 4, "output_names": []}),
]


@pytest.mark.parametrize("backbone,extra", CONFIGS)
@pytest.mark.parametrize("engine", ["numba", "torch", "numpy"])
def test_engine_equals_model_step(backbone, extra, engine):
    """Outputs and every state tensor of each engine follow model.step over 25 chunks, for three slots
    with different sessions and silent chunks at different places; from chunk 10 on, only slots 0 and
    2 step (a partial batch: slot 1's state must not move)."""
    m = make_tiny_model(backbone, n_units=20, **extra)
    m.extend_sessions(["other"])
    sess = np.array([1, 2, 1])
    eng = _engine(m, engine, sess)
    assert eng.name == engine and eng.n_slots == 3
    t = _tokens(25, 20)
    s1 = m.initial_state(3)
    worst = 0.0
    with torch.inference_mode():
        for i in range(25):
            rows = [0, 1, 2] if i < 10 else [0, 2]
            a, new = m.step(*(x[rows, i] for x in (t["units"], t["times"], t["mask"])), torch.as_tensor(sess[rows]),
                            tuple(x[rows] for x in s1))
            for x, y in zip(s1, new):
                x[rows] = y
            b = eng.step(*_chunk(t, i, rows), slots=None if i < 10 else rows)
            assert isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape == tuple(a.shape)
            worst = max(worst, float(np.abs(a.numpy() - b).max()))
            for x, y in zip(s1, eng.state):
                assert tuple(x.shape) == tuple(y.shape)
                np.testing.assert_allclose(x.numpy(), _a(y), rtol=1e-5, atol=1e-5)
    assert worst <= 1e-5, worst
    assert np.abs(b).max() > 1e-3  # not a trivially zero output


@pytest.mark.parametrize("engine", ["numba", "torch", "numpy", "reference"])
def test_engine_state_is_its_own_reset_and_warm_touch_one_slot(engine):
    """The engine keeps its state in its own arrays (NumPy for the compiled and NumPy engines, torch
    otherwise), reset(slot) restores one slot, warm(slot) changes nothing, output_scale scales."""
    m = make_tiny_model("mamba", n_units=8)
    eng = _engine(m, engine, [1, 1], output_scale=20.0)
    t = _tokens(3, 8, batch=2)
    with torch.inference_mode():
        ref, _ = m.step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], torch.tensor([1, 1]), m.initial_state(2))
    out = eng.step(*_chunk(t, 0))
    np.testing.assert_allclose(out, 20.0 * ref.numpy(), rtol=0, atol=1e-5 * 20)
    kind = torch.Tensor if engine in ("torch", "reference") else np.ndarray
    assert all(type(x) is kind or isinstance(x, kind) for x in eng.state)
    before = [_a(x) for x in eng.state]
    eng.warm(0)
    assert all(np.array_equal(b, _a(x)) for b, x in zip(before, eng.state))
    eng.reset(0)
    fresh = m.initial_state(1)
    for b, x, f in zip(before, eng.state, fresh):
        x = _a(x)
        assert np.array_equal(x[0], f[0].numpy()) and np.array_equal(x[1], b[1])
    assert np.abs(before[0][0]).max() > 0  # the reset did change something


def test_engines_copy_weights_and_are_rebuilt():
    m = make_tiny_model("mamba", n_units=8)
    engs = {e: _engine(m, e, [1]) for e in ("numba", "torch", "numpy")}
    t = _tokens(1, 8, batch=1)
    a = {e: eng.step(*_chunk(t, 0)) for e, eng in engs.items()}
    with torch.no_grad():
        m.unit_emb.weight.mul_(3.0)
    with torch.inference_mode():
        ref, _ = m.step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], torch.tensor([1]), m.initial_state(1))
    for e, eng in engs.items():
        eng.reset()
        stale = eng.step(*_chunk(t, 0))
        fresh = _engine(m, e, [1]).step(*_chunk(t, 0))
        assert np.array_equal(a[e], stale) and np.abs(fresh - ref.numpy()).max() <= 1e-5 and np.abs(fresh - a[e]).max() > 1e-4, e


def test_numba_engine_refuses_rows_outside_its_tables():
    """Compiled code has no bounds checks: a unit or session row outside the tables is an error, not a
    read of whatever memory lies there."""
    m = make_tiny_model("gru", n_units=8)
    n_rows, n_sess = m.unit_emb.weight.shape[0], m.session_emb.weight.shape[0]
    ok = (np.zeros((1, 2), np.float32), np.ones((1, 2), bool))
    build_engine(m, engine="numba", sessions=[0]).step(np.array([[1, 2]]), *ok)
    for units, sess in (([[1, n_rows]], 0), ([[-1, 2]], 0), ([[1, 2]], n_sess)):
        with pytest.raises(IndexError, match="out of the table"):
            build_engine(m, engine="numba", sessions=[sess]).step(np.array(units), *ok)


def test_a_backbone_the_fold_does_not_know_runs_on_the_torch_engine_with_its_own_step():
    m = make_tiny_model("gru", n_units=8)
    m.backbone.__class__ = type("GRUSubclass", (type(m.backbone),), {})  # a subclass may change step(): not trusted
    assert fold(m).backbone is None and choose_engine(m) == "torch"
    with pytest.raises(ConfigError, match="no step for backbone"):
        build_engine(m, engine="numba", sessions=[0])
    with pytest.raises(TypeError, match="no NumPy step"):
        NumpyEngine(m, fold(m), sessions=[0])
    eng = build_engine(m, sessions=[1])
    t = _tokens(4, 8, batch=1)
    s = m.initial_state(1)
    with torch.inference_mode():
        for i in range(4):
            a, s = m.step(t["units"][:, i], t["times"][:, i], t["mask"][:, i], torch.tensor([1]), s)
            np.testing.assert_allclose(eng.step(*_chunk(t, i)), a.numpy(), rtol=0, atol=1e-5)


def test_building_one_engine_builds_no_other(monkeypatch):
    from possm_plugin.engines import numba_step, torch_step

    def refuse(*args, **kwargs):
        raise AssertionError("built the wrong engine")

    m = make_tiny_model("gru", n_units=8)
    with monkeypatch.context() as mp:
        mp.setattr(torch_step.TorchEngine, "__init__", refuse)
        assert build_engine(m, engine="numba", sessions=[0]).name == "numba"
    with monkeypatch.context() as mp:
        mp.setattr(numba_step.NumbaEngine, "__init__", refuse)
        assert build_engine(m, engine="torch", sessions=[0]).name == "torch"
    with pytest.raises(ConfigError, match="engine must be one of"):
        build_engine(m, engine="numpy", sessions=[0])


@pytest.mark.slow
def test_numba_is_imported_only_when_a_compiled_engine_is_built():
    """Importing the package, the decoder and the engines, and building a torch decoder, neither
    imports Numba nor compiles anything."""
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import possm_plugin, possm_plugin.realtime.streaming, possm_plugin.engines\n"
        "from conftest import make_tiny_model\n"
        "possm_plugin.realtime.streaming.StreamingDecoder(make_tiny_model('gru'), engine='torch')\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr[-2000:]


def test_set_cpu_threads_sets_torch_and_blas_and_rejects_nonsense():
    from threadpoolctl import threadpool_info, threadpool_limits

    from possm_plugin.errors import ConfigError
    from possm_plugin.realtime.threads import set_cpu_threads

    before = torch.get_num_threads()
    blas_before = max([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] or [1])
    try:
        got = set_cpu_threads(1)
        assert got["torch"] == torch.get_num_threads() == 1 and got["blas"]
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ConfigError, match="CPU threads"):
                set_cpu_threads(bad)
    finally:
        torch.set_num_threads(before)
        threadpool_limits(limits=blas_before, user_api="blas")
