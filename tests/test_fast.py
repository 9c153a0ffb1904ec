import numpy as np
import pytest
import torch

from possm_plugin.fast import FastStep
from possm_plugin.tokenize import chunk_starts, collate, tokenize

from conftest import make_tiny_model


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


@pytest.mark.parametrize(
    "backbone,extra",
    [
        ("gru", {}),
        ("gru", {"backbone_kwargs": {"hidden": 24, "layers": 3}}),
        ("s4d", {}),
        ("mamba", {}),
        ("gru", {"num_latents": 2, "cross_heads": 2, "dim_head": 16}),
        ("s4d", {"context_chunks": 5, "chunk_step": 0.025}),
    ],
)
def test_fast_step_equals_model_step(backbone, extra):
    m = make_tiny_model(backbone, n_units=20, **extra)
    m.extend_sessions(["other"])
    fast = FastStep.from_model(m)
    t = _tokens(25, 20)
    sess = torch.tensor([1, 2, 1])
    s1, s2 = m.initial_state(3), m.initial_state(3)
    worst = 0.0
    with torch.inference_mode():
        for i in range(25):
            a, s1 = m.step(t["units"][:, i], t["times"][:, i], t["mask"][:, i], sess, s1)
            b, s2 = fast.step(t["units"][:, i], t["times"][:, i], t["mask"][:, i], sess, s2)
            worst = max(worst, (a - b).abs().max().item())
            for x, y in zip(s1, s2):
                assert torch.allclose(x.float(), y.float(), atol=1e-5)
    assert worst <= 1e-5, worst


def test_fast_step_is_rebuilt_after_weights_change():
    m = make_tiny_model("gru", n_units=8)
    fast = FastStep.from_model(m)
    t = _tokens(1, 8, batch=1)
    s = torch.tensor([1])
    a, _ = fast.step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], s, m.initial_state(1))
    with torch.no_grad():
        m.unit_emb.weight.mul_(3.0)
    stale, _ = fast.step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], s, m.initial_state(1))
    fresh, _ = FastStep.from_model(m).step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], s, m.initial_state(1))
    with torch.inference_mode():
        ref, _ = m.step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], s, m.initial_state(1))
    assert torch.equal(a, stale) and (fresh - ref).abs().max() <= 1e-5 and (fresh - a).abs().max() > 1e-4


# -- the NumPy engine --------------------------------------------------------------------------------
from possm_plugin.fast_numba import NumbaStep  # noqa: E402
from possm_plugin.fast_numpy import NumpyStep, numpy_step_supported  # noqa: E402


@pytest.mark.parametrize(
    "backbone,extra",
    [
        ("gru", {}),
        ("gru", {"backbone_kwargs": {"hidden": 24, "layers": 3}}),
        ("s4d", {}),
        ("s4d", {"context_chunks": 5, "chunk_step": 0.025}),
        ("mamba", {}),
        ("gru", {"num_latents": 2, "cross_heads": 2, "dim_head": 16}),
        ("mamba", {"num_latents": 3, "cross_heads": 2, "dim_head": 16}),
        ("s4d", {"readout": "classification", "output_dim": 5, "output_names": []}),
        ("gru", {"readout": "ctc", "output_dim": 4, "output_names": []}),
    ],
)
@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_numpy_step_equals_model_step(backbone, extra, engine):
    """Outputs and every state tensor of the NumPy and the compiled engines follow model.step over 25
    chunks, for three streams with different sessions and silent chunks at different places."""
    m = make_tiny_model(backbone, n_units=20, **extra)
    m.extend_sessions(["other"])
    eng = NumpyStep.from_model(m) if engine == "numpy" else NumbaStep.from_model(m)
    t = _tokens(25, 20)
    sess = torch.tensor([1, 2, 1])
    s1 = m.initial_state(3)
    s2 = tuple(x.numpy().copy() for x in m.initial_state(3))
    worst = 0.0
    with torch.inference_mode():
        for i in range(25):
            a, s1 = m.step(t["units"][:, i], t["times"][:, i], t["mask"][:, i], sess, s1)
            b, s2 = eng.step(t["units"][:, i].numpy(), t["times"][:, i].numpy(), t["mask"][:, i].numpy(), sess.numpy(), s2)
            assert b.dtype == np.float32 and b.shape == tuple(a.shape)
            worst = max(worst, float(np.abs(a.numpy() - b).max()))
            for x, y in zip(s1, s2):
                assert x.shape == y.shape
                np.testing.assert_allclose(x.numpy(), y, rtol=1e-5, atol=1e-5)  # S4D states reach ~20: float32 rounding
    assert worst <= 1e-5, worst
    assert np.abs(b).max() > 1e-3  # not a trivially zero output


def test_numba_step_refuses_rows_outside_its_tables():
    """Compiled code has no bounds checks: a unit or session row outside the tables is an error, not a
    read of whatever memory lies there."""
    m = make_tiny_model("gru", n_units=8)
    eng = NumbaStep.from_model(m)
    n_rows = m.unit_emb.weight.shape[0]
    state = tuple(x.numpy() for x in m.initial_state(1))
    ok = (np.array([[1, 2]]), np.zeros((1, 2), np.float32), np.ones((1, 2), bool))
    eng.step(*ok, np.array([0]), state)
    for units, sess in (([[1, n_rows]], [0]), ([[-1, 2]], [0]), ([[1, 2]], [m.session_emb.weight.shape[0]])):
        with pytest.raises(IndexError, match="out of the table"):
            eng.step(np.array(units), ok[1], ok[2], np.array(sess), state)


def test_numpy_step_copies_weights_and_is_rebuilt():
    m = make_tiny_model("mamba", n_units=8)
    eng = NumpyStep.from_model(m)
    t = _tokens(1, 8, batch=1)
    args = (t["units"][:, 0].numpy(), t["times"][:, 0].numpy(), t["mask"][:, 0].numpy(), np.array([1]))
    a, _ = eng.step(*args, tuple(x.numpy() for x in m.initial_state(1)))
    with torch.no_grad():
        m.unit_emb.weight.mul_(3.0)
    stale, _ = eng.step(*args, tuple(x.numpy() for x in m.initial_state(1)))
    fresh, _ = NumpyStep.from_model(m).step(*args, tuple(x.numpy() for x in m.initial_state(1)))
    with torch.inference_mode():
        ref, _ = m.step(t["units"][:, 0], t["times"][:, 0], t["mask"][:, 0], torch.tensor([1]), m.initial_state(1))
    assert np.array_equal(a, stale) and np.abs(fresh - ref.numpy()).max() <= 1e-5 and np.abs(fresh - a).max() > 1e-4


def test_numpy_step_refuses_a_backbone_it_does_not_implement():
    m = make_tiny_model("gru", n_units=8)
    m.backbone.__class__ = type("GRUSubclass", (type(m.backbone),), {})  # a subclass may change step(): not trusted
    assert not numpy_step_supported(m)
    with pytest.raises(TypeError, match="no NumPy step"):
        NumpyStep.from_model(m)


def test_set_cpu_threads_sets_torch_and_blas_and_rejects_nonsense():
    from threadpoolctl import threadpool_info, threadpool_limits

    from possm_plugin.errors import ConfigError
    from possm_plugin.runtime import set_cpu_threads

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
