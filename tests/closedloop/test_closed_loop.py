"""The closed loop: the simulated cortex driven chunk by chunk, the task's state machine, decoders in the
loop (references, causality), the metrics and the streaming baselines."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import make_tiny_model

from possm_plugin.baselines.stream import stream_baseline
from possm_plugin.closedloop.calibration import calibration_session, fit_kalman, fit_wiener
from possm_plugin.closedloop.decoders import BaselineLoopDecoder, OracleDecoder, PossmLoopDecoder, RotatedDecoder, ZeroDecoder
from possm_plugin.closedloop.metrics import summarize, trial_metrics
from possm_plugin.closedloop.runner import run_loop
from possm_plugin.closedloop.task import CursorTask, TaskConfig
from possm_plugin.closedloop.user import UserConfig
from possm_plugin.errors import ConfigError
from possm_plugin.sim import simulate_motor_session
from possm_plugin.sim.motor_stream import MotorSpikeStream

SESSION = 10
TASK = TaskConfig(timeout_s=3.0)


@pytest.fixture(scope="module")
def calibrated():
    """A stream after a 40 s calibration block, and Wiener and Kalman filters fit on the block."""
    stream = MotorSpikeStream(SESSION, noise_seed=0)
    cal = calibration_session(stream, duration_s=40.0)
    return stream, cal, fit_wiener(cal), fit_kalman(cal)


def _run(decoder, stream, n_trials=8, **kw):
    return run_loop(decoder, copy.deepcopy(stream), n_trials=n_trials, seed=3, task=kw.pop("task", TASK), **kw)


def _summary(res, task=TASK):
    return summarize(trial_metrics(res.trials, target_radius_cm=task.target_radius_cm))


# -- the simulated cortex ---------------------------------------------------------------------
def test_stream_records_the_units_of_possm_simulate():
    stream = MotorSpikeStream(3)
    sess = simulate_motor_session(3, duration_s=5.0)
    assert [u.split("/")[1] for u in stream.unit_ids] == [u.split("/")[1] for u in sess.unit_ids]
    assert all(u.startswith(stream.session_id + "/") for u in stream.unit_ids)
    assert stream.units.pool_index.tolist() == sess.meta["pool_units"]


def test_stream_is_deterministic_and_tuned():
    a, b = MotorSpikeStream(SESSION, noise_seed=1), MotorSpikeStream(SESSION, noise_seed=1)
    v = np.tile([20.0, 0.0], (5, 1))
    ta, ua = a.step(v)
    tb, ub = b.step(v)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(ua, ub)
    assert np.all((ta >= 0) & (ta < 0.05)) and a.t == pytest.approx(0.05)
    # units fire more when the intent points along their preferred direction (20 s each way)
    counts = {}
    for sign in (1.0, -1.0):
        s = MotorSpikeStream(SESSION, noise_seed=2)
        _, u = s.step(np.tile([sign * 20.0, 0.0], (2000, 1)))
        counts[sign] = np.bincount(u, minlength=s.n_units)
    pref_right = np.cos(s.units.pd_rad) > 0.5
    assert counts[1.0][pref_right].sum() > 1.3 * counts[-1.0][pref_right].sum()


def test_calibration_block_decodes(calibrated):
    stream, cal, wiener, kalman = calibrated
    assert cal.session_id == stream.session_id and len(cal.trials) >= 20
    test = calibration_session(MotorSpikeStream(SESSION, noise_seed=9), duration_s=20.0, seed=9)
    assert wiener.r2_mean(test) > 0.4
    assert kalman.r2_mean(test) > 0.3


# -- baselines chunk by chunk -----------------------------------------------------------------
@pytest.mark.parametrize("which", ["wiener", "kalman"])
def test_baseline_stream_equals_predict(calibrated, which):
    _, cal, wiener, kalman = calibrated
    dec = wiener if which == "wiener" else kalman
    from possm_plugin.baselines.binning import bin_session

    b = bin_session(cal)
    st = stream_baseline(dec)
    online = np.stack([st.step(c) for c in b.counts])
    np.testing.assert_allclose(online, dec.predict(cal), rtol=1e-4, atol=1e-4)


def test_kalman_full_filter_stream_equals_predict(calibrated):
    _, cal, _, _ = calibrated
    from possm_plugin.baselines import KalmanFilter
    from possm_plugin.baselines.binning import bin_session

    dec = KalmanFilter(steady_state=False).fit(cal)
    st = stream_baseline(dec)
    online = np.stack([st.step(c) for c in bin_session(cal).counts[:200]])
    np.testing.assert_allclose(online, dec.predict(cal)[:200], rtol=1e-4, atol=1e-4)


# -- the task's state machine -----------------------------------------------------------------
def test_state_machine_counts_holds_breaks_reentries_and_timeouts():
    cfg = TaskConfig(target_radius_cm=2.0, hold_s=0.2, timeout_s=1.0)
    task = CursorTask(cfg, n_trials=3, rng=np.random.default_rng(0))
    tgt = task.target
    assert np.linalg.norm(tgt) == pytest.approx(10.0)
    out = np.zeros(2)
    # trial 0: enter at 0.1, leave at 0.2 (hold broken), re-enter at 0.3, hold 0.3..0.5 -> success at 0.5
    path = [(0.05, out), (0.1, tgt), (0.15, tgt), (0.2, out), (0.25, out), (0.3, tgt), (0.35, tgt), (0.4, tgt), (0.45, tgt)]
    for t, p in path:
        assert task.update(t, p) is None
    assert task.update(0.5, tgt) == "success"
    t0 = task.trials[0]
    assert (t0.entries, t0.reentries, t0.breaks) == (2, 1, 1)
    assert t0.first_entry_s == pytest.approx(0.1) and t0.hold_start_s == pytest.approx(0.3)
    # trial 1: the centre (the cursor is outside it); never reached -> timeout 1.0 s after onset
    assert np.allclose(task.target, 0.0) and task.current.onset_s == pytest.approx(0.5)
    for t in np.arange(0.55, 1.5, 0.05):
        assert task.update(t, tgt) is None
    assert task.update(1.5, tgt) == "timeout"
    assert task.trials[1].entries == 0 and task.trials[1].outcome == "timeout"
    # trial 2: still outside the centre, so the centre again; entered once, leaves, times out
    assert np.allclose(task.target, 0.0)
    task.update(1.55, np.zeros(2))
    task.update(1.6, tgt)
    assert task.update(2.5, tgt) == "timeout" and task.done
    assert (task.trials[2].entries, task.trials[2].breaks, task.trials[2].hold_start_s) == (1, 1, None)
    kinds = [e[2] for e in task.events]
    assert kinds == ["onset", "enter", "leave", "enter", "success", "onset", "timeout", "onset", "enter", "leave", "timeout"]
    m = trial_metrics(task.trials, target_radius_cm=2.0)
    assert [r["success"] for r in m] == [True, False, False]
    assert m[0]["time_to_target_s"] == pytest.approx(0.3) and m[0]["dial_in_s"] == pytest.approx(0.2)
    s = summarize(m)
    assert s["success_rate"] == pytest.approx(1 / 3)
    assert s["itr_bps"] == pytest.approx(np.log2(1 + 10 / 4) / 2.5)


def test_task_rejects_bad_config():
    with pytest.raises(ConfigError, match="hold_s"):
        TaskConfig(hold_s=7.0, timeout_s=6.0)
    with pytest.raises(ConfigError, match="layout"):
        TaskConfig(layout="spiral")


# -- reference decoders in the loop ------------------------------------------------------------
def test_oracle_reaches_every_target(calibrated):
    stream = calibrated[0]
    for layout in ("center_out", "random"):
        task = TaskConfig(layout=layout, timeout_s=3.0)
        res = _run(OracleDecoder(), stream, n_trials=10, task=task)
        assert [t.outcome for t in res.trials] == ["success"] * 10
        assert _summary(res, task)["path_efficiency"] > 0.9


def test_zero_decoder_reaches_none(calibrated):
    res = _run(ZeroDecoder(), calibrated[0], n_trials=4)
    assert [t.outcome for t in res.trials] == ["timeout"] * 4
    assert np.all(res.pos == 0)
    assert _summary(res)["success_rate"] == 0.0


def test_rotated_oracle_does_worse(calibrated):
    stream = calibrated[0]
    ok = _summary(_run(OracleDecoder(), stream))
    rot = _summary(_run(RotatedDecoder(OracleDecoder(), 90.0), stream))
    assert rot["success_rate"] < ok["success_rate"] == 1.0
    assert rot["itr_bps"] < ok["itr_bps"]


def test_loop_is_deterministic(calibrated):
    stream, _, wiener, _ = calibrated
    dec = BaselineLoopDecoder(wiener, unit_ids=stream.unit_ids, chunk_s=0.05)
    a, b = _run(dec, stream, n_trials=3), _run(dec, stream, n_trials=3)
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_array_equal(a.decoded, b.decoded)


def test_user_sees_the_cursor_late(calibrated):
    stream = calibrated[0]
    fast = _summary(_run(OracleDecoder(), stream, user=UserConfig(feedback_delay_s=0.0)))
    slow = _summary(_run(OracleDecoder(), stream, user=UserConfig(feedback_delay_s=0.3)))
    assert slow["time_to_target_s"]["median"] > fast["time_to_target_s"]["median"]


# -- causality ---------------------------------------------------------------------------------
def _decoders(calibrated):
    stream, _, wiener, kalman = calibrated
    model = make_tiny_model(n_units=stream.n_units, session=stream.session_id)
    return {
        "possm": PossmLoopDecoder(model, session=stream.session_id, unit_ids=stream.unit_ids),
        "wiener": BaselineLoopDecoder(wiener, unit_ids=stream.unit_ids, chunk_s=0.05),
        "kalman": BaselineLoopDecoder(kalman, unit_ids=stream.unit_ids, chunk_s=0.05),
    }


@pytest.mark.parametrize("name", ["possm", "wiener", "kalman"])
def test_perturbing_chunk_k_changes_nothing_before_it(calibrated, name):
    stream = calibrated[0]
    dec = _decoders(calibrated)[name]
    k0 = int(round(stream.t / 0.05))
    k = k0 + 30

    def shift(kk, times, units):
        if kk != k:
            return times, units
        start = kk * 0.05
        if name == "possm":  # move every spike of the chunk towards its start: counts are unchanged
            return start + (times - start) * 0.25, units
        return times[: len(times) // 2], units[: len(units) // 2]  # binned decoders see counts: drop half

    base = _run(dec, stream, n_trials=2)
    pert = _run(dec, stream, n_trials=2, spike_hook=shift)
    i = k - k0
    assert len(base.decoded) > i + 1
    np.testing.assert_array_equal(base.decoded[:i], pert.decoded[:i])
    np.testing.assert_array_equal(base.pos[:i], pert.pos[:i])
    assert not np.array_equal(base.decoded[i], pert.decoded[i])


def test_open_loop_r2_through_the_loop_decoder_equals_predict(calibrated):
    from possm_plugin.baselines.binning import bin_session
    from possm_plugin.closedloop.experiment import open_loop_r2
    from possm_plugin.training.metrics import r2_score

    stream, _, wiener, _ = calibrated
    test = calibration_session(MotorSpikeStream(SESSION, noise_seed=9), duration_s=20.0, seed=9)
    dec = BaselineLoopDecoder(wiener, unit_ids=stream.unit_ids, chunk_s=0.05)
    want = float(np.mean(r2_score(bin_session(test).targets, wiener.predict(test))))
    assert open_loop_r2(dec, test) == pytest.approx(want, abs=1e-4)


def test_closed_loop_r2_of_the_oracle_is_one_at_zero_delay(calibrated):
    from possm_plugin.closedloop.experiment import closed_loop_r2

    res = _run(OracleDecoder(), calibrated[0], n_trials=4)
    assert closed_loop_r2(res, 0.0) == pytest.approx(1.0)
    assert closed_loop_r2(res, 0.15) < 0.99


def test_closed_loop_gain_of_a_halving_decoder(calibrated):
    from possm_plugin.closedloop.decoders import LoopDecoder
    from possm_plugin.closedloop.experiment import closed_loop_gain

    class Half(LoopDecoder):
        name = "half"

        def step(self, times, units, t_end, intent):
            return 0.5 * np.asarray(intent, np.float32)

    res = _run(Half(), calibrated[0], n_trials=3)
    assert closed_loop_gain(res, 0.0) == pytest.approx(0.5, rel=1e-5)
    assert closed_loop_gain(res, 0.0, max_speed=10.0) == pytest.approx(0.5, rel=1e-5)


def test_stream_keeps_the_refractory_period_across_chunks():
    s = MotorSpikeStream(SESSION, noise_seed=4)
    times, units = [], []
    for _ in range(400):  # fast movement: high rates, 10 ms chunks
        t, u = s.step(np.array([[40.0, 0.0]]))
        times.append(t)
        units.append(u)
    t, u = np.concatenate(times), np.concatenate(units)
    order = np.lexsort((t, u))
    t, u = t[order], u[order]
    same = u[1:] == u[:-1]
    assert np.all(np.diff(t)[same] >= s.refractory_s - 1e-12)


def test_runner_rejects_a_chunk_off_the_rows(calibrated):
    with pytest.raises(ConfigError, match="chunk_s"):
        run_loop(ZeroDecoder(), calibrated[0], n_trials=1, chunk_s=0.055)
