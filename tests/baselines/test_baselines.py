"""Baselines on a small simulated session: each beats a zero predictor on held-out trials; POYO's
size, shapes and streaming form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from possm_plugin.baselines import (
    BASELINES,
    POYO,
    GRUDecoder,
    KalmanFilter,
    MLPDecoder,
    POYODecoder,
    WienerFilter,
    make_baseline,
)
from possm_plugin.baselines.binning import TrialSubset, bin_session, lagged, session_grid, split_trials
from possm_plugin.baselines.poyo import window_tokens
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.sim import simulate_motor_session
from possm_plugin.training.metrics import r2_score


@pytest.fixture(scope="module")
def sim():
    """120 s, 48 units; trials split in time: 70% train, 10% valid, 20% test."""
    s = simulate_motor_session(0, seed=0, duration_s=120.0, n_units=48)
    sp = split_trials(len(s.trials), valid_fraction=0.1, test_fraction=0.2)
    return s, TrialSubset(s, sp["train"]), TrialSubset(s, sp["valid"]), TrialSubset(s, sp["test"])


def _zero_r2(test: TrialSubset) -> float:
    b = bin_session(test.session)
    y = b.targets[b.mask(test.trials)]
    return float(r2_score(y, np.zeros_like(y)).mean())


def test_zero_predictor_scores_at_most_zero(sim):
    assert _zero_r2(sim[3]) <= 0.0


def test_wiener_beats_zero_on_held_out_trials(sim):
    s, train, valid, test = sim
    w = WienerFilter(n_lags=5).fit(train, valid)
    r2 = w.r2(test)
    assert r2.shape == (2,)
    assert r2.mean() > 0.5, r2
    assert w.weights.shape == (5 * 48, 2) and w.lam in w.lambdas
    assert len(w.history) == len(w.lambdas)  # validation R2 of every candidate penalty
    assert max(h["valid_r2"] for h in w.history) == pytest.approx(
        next(h["valid_r2"] for h in w.history if h["lambda"] == w.lam))
    pred = w.predict(s)
    assert pred.shape == (len(session_grid(s)), 2) and pred.dtype == np.float32
    # r2() scores exactly predict() on the test chunks
    b = bin_session(s)
    m = b.mask(test.trials)
    np.testing.assert_allclose(r2_score(b.targets[m], pred[m]), r2, atol=1e-5)


def test_wiener_is_least_squares_without_penalty(sim):
    s, train, _, _ = sim
    w = WienerFilter(n_lags=2, lambdas=(0.0,)).fit(train)
    b = bin_session(s)
    m = b.mask(train.trials)
    x = np.c_[lagged(b.counts.astype(np.float64), 2)[m], np.ones(m.sum())]
    coef = np.linalg.lstsq(x, b.targets[m] / s.target_scale, rcond=None)[0]
    np.testing.assert_allclose(w.weights, coef[:-1], atol=1e-6)
    np.testing.assert_allclose(w.bias, coef[-1], atol=1e-6)


def test_wiener_picks_its_penalty_on_held_back_training_trials(sim):
    s, train, _, test = sim
    w = WienerFilter().fit(train)  # no valid: the last 20% of the training trials choose lambda
    assert len(w.history) == len(w.lambdas)
    assert w.r2_mean(test) > 0.5


def test_wiener_refits_on_all_training_trials_after_selection(sim):
    s, train, valid, _ = sim
    w = WienerFilter(n_lags=3).fit(train, valid)  # lambda chosen on valid, then refit on train + valid
    b = bin_session(s)
    m = b.mask(np.concatenate([train.trials, valid.trials]))
    x = lagged(b.counts.astype(np.float64), 3)[m]
    y = b.targets[m].astype(np.float64) / s.target_scale
    xc, yc = x - x.mean(0), y - y.mean(0)
    g = xc.T @ xc / len(x)
    ridge = np.linalg.solve(g + w.lam * np.trace(g) / g.shape[0] * np.eye(len(g)), xc.T @ yc / len(x))
    np.testing.assert_allclose(w.weights, ridge, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(w.bias, y.mean(0) - x.mean(0) @ ridge, rtol=1e-6, atol=1e-9)
    only_train = WienerFilter(n_lags=3, lambdas=(w.lam,)).fit(train)
    assert np.abs(only_train.weights - w.weights).max() > 1e-3 * np.abs(w.weights).max()  # valid did count
    # without valid: the penalty comes from the last 20 % of train, the weights from all of train
    w2 = WienerFilter(n_lags=3).fit(train)
    np.testing.assert_allclose(w2.weights, WienerFilter(n_lags=3, lambdas=(w2.lam,)).fit(train).weights, rtol=1e-9, atol=1e-12)


def test_kalman_beats_zero_and_steady_state_matches_full_filter(sim):
    s, train, valid, test = sim
    k = KalmanFilter().fit(train, valid)
    assert k.r2_mean(test) > 0.5
    assert k.A.shape == (2, 2) and k.H.shape == (48, 2) and k.gain.shape == (2, 48)
    full = KalmanFilter(steady_state=False).fit(train)
    a, b = k.predict(s), full.predict(s)
    assert np.abs(a[100:] - b[100:]).max() < 1e-3 * np.abs(b).max()  # the gain has converged
    kp = KalmanFilter(position=True, n_lags=2).fit(train)
    assert kp.A.shape == (4, 4) and kp.H.shape == (96, 4)
    assert kp.r2_mean(test) > 0.5


def test_mlp_trains_and_beats_zero(sim):
    s, train, valid, test = sim
    m = MLPDecoder(hidden=(64,)).fit(train, valid, epochs=8, seed=0)
    assert m.r2_mean(test) > 0.4
    assert len(m.history) == 8 and m.history[-1]["loss"] < m.history[0]["loss"]
    again = MLPDecoder(hidden=(64,)).fit(train, valid, epochs=8, seed=0)
    np.testing.assert_array_equal(m.predict(s), again.predict(s))  # seeded


def test_gru_trains_on_windows_and_beats_zero(sim):
    s, train, valid, test = sim
    g = GRUDecoder(hidden=48).fit(train, valid, epochs=8, seed=0)
    assert g.r2_mean(test) > 0.4
    assert g.history[-1]["loss"] < g.history[0]["loss"]
    # decoding carries the state over the whole grid: the first chunks equal a fresh run over them
    x = torch.from_numpy(g._inputs(g._parts([TrialSubset.all(s)])[0]))
    with torch.no_grad():
        head, _ = g.net(x[:50].unsqueeze(0))
    np.testing.assert_allclose(g.predict(s)[:50], head[0].numpy() * s.target_scale, atol=1e-5)


def test_baselines_refuse_other_units_and_unfitted_use(sim):
    s, train, _, _ = sim
    with pytest.raises(DataError, match="not fitted"):
        WienerFilter().predict(s)
    w = WienerFilter(n_lags=1, lambdas=(1.0,)).fit(train)
    other = Session(
        session_id="other", spike_times=s.spike_times, spike_units=s.spike_units,
        unit_ids=[f"other/u{i}" for i in range(s.n_units)], target_times=s.target_times, targets=s.targets,
        trials=s.trials,
    )
    with pytest.raises(DataError, match="units they were fit on"):
        w.predict(other)
    # the same units in another order decode the same
    perm = np.arange(s.n_units)[::-1]
    shuffled = Session(
        session_id=s.session_id, spike_times=s.spike_times, spike_units=np.argsort(perm)[s.spike_units],
        unit_ids=[s.unit_ids[i] for i in perm], target_times=s.target_times, targets=s.targets, trials=s.trials,
    )
    np.testing.assert_allclose(w.predict(shuffled), w.predict(s), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown baseline"):
        make_baseline("lstm")
    assert set(BASELINES) == {"wiener", "kalman", "mlp", "gru", "poyo"}
    assert isinstance(make_baseline("kalman", position=True), KalmanFilter)


# -- POYO --------------------------------------------------------------------------------------
def test_poyo_default_size_and_forward_shape():
    torch.manual_seed(0)
    net = POYO(n_units=96).eval()
    n = net.n_parameters()
    assert 0.7 * 1.3e6 <= n <= 1.3 * 1.3e6, n
    assert net.num_latents == 32
    units = torch.randint(1, 97, (3, 40))
    times = -torch.rand(3, 40)
    mask = torch.ones(3, 40, dtype=torch.bool)
    q = -0.05 * torch.arange(19, -1, -1, dtype=torch.float32)
    out = net(units, times, mask, q)
    assert out.shape == (3, 20, 2)
    # queries do not interact: asking for the last one alone gives the same answer
    torch.testing.assert_close(net(units, times, mask, torch.zeros(1))[:, 0], out[:, -1], atol=1e-5, rtol=0)
    # padding is ignored
    pad = net(torch.cat([units, torch.zeros(3, 7, dtype=torch.long)], 1), torch.cat([times, torch.zeros(3, 7)], 1),
              torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool)], 1), q)
    torch.testing.assert_close(pad, out, atol=1e-5, rtol=0)


def test_window_tokens_cut_the_last_second():
    times = np.array([0.1, 0.5, 1.2, 1.9, 2.0, 2.05])
    rows = np.arange(1, 7)
    tok = window_tokens(rows, times, np.array([2.0, 0.05, 2.1]), window_s=1.0)
    assert tok["units"][0][tok["mask"][0]].tolist() == [3, 4]  # [1.0, 2.0)
    assert tok["units"][1].tolist()[:1] == [0] and tok["mask"][1].sum() == 1  # empty: one blank token
    np.testing.assert_allclose(tok["times"][2][tok["mask"][2]].numpy(), [1.2, 1.9, 2.0, 2.05] - np.float64(2.1), atol=1e-6)
    short = window_tokens(rows, times, np.array([2.1]), window_s=1.0, max_tokens=2)
    assert short["units"][0].tolist() == [5, 6]  # the latest spikes are kept


def test_poyo_streaming_equals_windowed_forward():
    s = simulate_motor_session(1, seed=0, duration_s=12.0, n_units=24)
    dec = POYODecoder(dim=32, dim_head=32, depth=1, latents_per_step=2)
    dec.fit(s, epochs=1, batch_size=8, seed=0)
    stream = dec.predict_stream(s)  # re-encodes the last 1 s at every chunk, one chunk at a time
    batch = dec.predict(s)
    assert stream.shape == batch.shape == (len(session_grid(s)), 2)
    np.testing.assert_allclose(stream, batch, atol=1e-5)
    # the windowed forward (20 queries at the chunk ends of a 1 s window): its last output is the stream's
    rows, times = dec._spikes(s)
    np.testing.assert_array_equal(rows, dec.unit_rows(s.unit_ids)[s.spike_units])
    ends = bin_session(s).ends
    for j in (0, 7, 19, 20, 150, len(ends) - 1):
        tok = window_tokens(rows, times, ends[j : j + 1], window_s=1.0)
        with torch.no_grad():
            out = dec.net(tok["units"], tok["times"], tok["mask"], dec._window_queries())
        assert out.shape == (1, 20, 2)
        np.testing.assert_allclose(out[0, -1].numpy() * s.target_scale, stream[j], atol=1e-5)
    # a live stream fed chunk by chunk from unit ids
    st = dec.stream()
    for j in range(30):
        sel = (times >= ends[j] - 0.05) & (times < ends[j])
        st.push(dec.unit_rows([s.unit_ids[u] for u in s.spike_units[sel]]), times[sel])
        last = st.predict(ends[j])
    np.testing.assert_allclose(last, stream[29], atol=1e-5)
    with pytest.raises(ConfigError, match="unknown POYO argument"):
        POYODecoder(dims=3)
    with pytest.raises(DataError, match="not fit on units"):
        dec.unit_rows(["nobody/u1"])


def test_poyo_training_updates_every_part(sim):
    s, train, _, _ = sim
    dec = POYODecoder(dim=32, dim_head=32, depth=1, latents_per_step=2)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in POYO(n_units=48, dim=32, dim_head=32, depth=1, latents_per_step=2).state_dict().items()}
    dec.fit(train, epochs=4, batch_size=16, lr=3e-3, seed=0)
    assert dec.history[-1]["loss"] < dec.history[0]["loss"]
    after = dec.net.state_dict()
    assert init.keys() == after.keys()
    unchanged = [k for k in init if torch.equal(init[k], after[k])]
    assert unchanged == [], unchanged  # gradients reach the unit embeddings, encoder, latents and readout


@pytest.mark.slow
def test_poyo_learns_a_small_session_when_given_enough_steps(sim):
    """POYO sits near R2 0 for its first ~100 steps (its latents must learn to look at spikes near
    their own times) and the accuracy benchmark once stopped it after 30 (5 'epochs' of ~6 steps of
    16 windows): R2 -0.007. Given the steps, a small POYO fits this session well within seconds."""
    s, train, valid, test = sim
    torch.set_num_threads(1)
    dec = POYODecoder(dim=64, dim_head=32, depth=1, latents_per_step=2)
    dec.fit(train, valid, steps=200, eval_every=50, batch_size=16, lr=2e-3, seed=0)
    assert [h["step"] for h in dec.history] == [50, 100, 150, 200]
    assert dec.r2_mean(test) > 0.45, dec.history  # 0.61 when written (6 s)
    with pytest.raises(ConfigError, match="steps"):
        POYODecoder().fit(train, steps=0)
