"""Tests of the seeded multi-session simulators (possm_plugin.sim)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from possm_plugin.data.session import PHASE_HOLD, PHASE_OTHER, PHASE_REACH, Session
from possm_plugin.errors import DataError
from possm_plugin.sim import (
    make_subject,
    simulate_handwriting_session,
    simulate_handwriting_sessions,
    simulate_motor_session,
    simulate_motor_sessions,
    simulate_phoneme_sessions,
    write_sessions,
)
from possm_plugin.sim.spiking import rates_to_spikes

ARRAY_FIELDS = (
    "spike_times",
    "spike_units",
    "target_times",
    "targets",
    "phase",
    "trials",
    "trial_labels",
    "label_seq",
    "label_offsets",
)


def assert_same_session(a: Session, b: Session) -> None:
    assert a.session_id == b.session_id
    assert a.unit_ids == b.unit_ids
    assert a.target_names == b.target_names
    assert (a.task, a.subject, a.n_classes, a.target_scale) == (b.task, b.subject, b.n_classes, b.target_scale)
    assert a.meta == b.meta
    for f in ARRAY_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        np.testing.assert_array_equal(x, y, err_msg=f)


@pytest.fixture(scope="module")
def motor() -> list[Session]:
    return simulate_motor_sessions(2, seed=0, subject="m0", duration_s=120.0)


@pytest.fixture(scope="module")
def handwriting() -> Session:
    return simulate_handwriting_sessions(1, seed=0, n_classes=10, duration_s=60.0)[0]


@pytest.fixture(scope="module")
def phonemes() -> Session:
    return simulate_phoneme_sessions(1, seed=0, n_phonemes=12, duration_s=90.0)[0]


def complete_segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where ``mask`` is true."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def ridge_r2(s: Session, *, width: float = 0.05, lags: int = 4, lam: float = 1.0) -> np.ndarray:
    """Held-out R2 (per target column) of ridge regression on lagged binned counts.

    Counts in ``width`` bins at lags 0..lags-1 (the past, since neurons lead behaviour), z-scored;
    fit on bins of the first 80% of trials, tested on the last 20%.
    """
    n_bins = int(np.floor(s.target_times[-1] / width))
    b = np.floor(s.spike_times / width).astype(int)
    ok = b < n_bins
    counts = np.zeros((n_bins, s.n_units))
    np.add.at(counts, (b[ok], s.spike_units[ok]), 1.0)
    tb = np.floor(s.target_times / width + 1e-9).astype(int)
    okt = tb < n_bins
    vel = np.zeros((n_bins, s.targets.shape[1]))
    np.add.at(vel, tb[okt], s.targets[okt])
    vel /= np.bincount(tb[okt], minlength=n_bins)[:, None]
    x = np.concatenate([np.roll(counts, k, axis=0) for k in range(lags)], axis=1)
    centres = (np.arange(n_bins) + 0.5) * width
    trial = np.searchsorted(s.trials[:, 0], centres, side="right") - 1
    in_trial = (trial >= 0) & (centres < s.trials[np.clip(trial, 0, None), 1])
    in_trial[:lags] = False
    n_train = int(0.8 * len(s.trials))
    train, test = in_trial & (trial < n_train), in_trial & (trial >= n_train)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(n_bins)]
    reg = np.sqrt(lam * train.sum() / 100.0) * np.eye(z.shape[1])[:-1]  # intercept not penalised
    a = np.r_[z[train], reg]
    y = np.r_[vel[train], np.zeros((len(reg), vel.shape[1]))]
    w = np.linalg.lstsq(a, y, rcond=None)[0]
    pred = z[test] @ w
    return 1.0 - ((pred - vel[test]) ** 2).sum(0) / ((vel[test] - vel[test].mean(0)) ** 2).sum(0)


# -- motor ------------------------------------------------------------------------------------------
def test_motor_session_format(motor):
    for i, s in enumerate(motor):
        assert s.session_id == f"sim-m0-seed0-s{i:03d}"
        assert s.task == "regression" and s.subject == "m0"
        assert s.target_names == ["vx", "vy"] and s.targets.shape == (12000, 2)
        assert s.target_scale == 20.0
        assert s.unit_ids == [f"{s.session_id}/u{j:03d}" for j in range(s.n_units)]
        np.testing.assert_allclose(s.target_times, np.arange(12000) * 0.01)
        assert set(np.unique(s.phase)) == {PHASE_OTHER, PHASE_HOLD, PHASE_REACH}
        # trials back to back from 0, all complete within the session
        assert s.trials[0, 0] == 0.0 and s.trials[-1, 1] <= 120.0
        np.testing.assert_allclose(s.trials[1:, 0], s.trials[:-1, 1])
        assert 40 <= len(s.trials) <= 120
        s.validate()
        json.dumps(s.meta)  # JSON-serialisable


def test_motor_deterministic(motor):
    again = simulate_motor_session(1, seed=0, subject="m0", duration_s=120.0)
    assert_same_session(motor[1], again)  # independent of how many sessions were simulated together
    other = simulate_motor_session(1, seed=1, subject="m0", duration_s=120.0)
    assert other.n_units != again.n_units or not np.array_equal(other.spike_units, again.spike_units)
    assert not np.array_equal(other.targets, again.targets)
    assert not np.array_equal(motor[0].targets, motor[1].targets)


def test_motor_unit_counts_vary():
    counts = [s.n_units for s in simulate_motor_sessions(5, seed=0, duration_s=10.0)]
    assert len(set(counts)) > 1
    assert all(40 <= c <= 200 for c in counts)
    fixed = simulate_motor_session(0, seed=0, duration_s=10.0, n_units=37)
    assert fixed.n_units == 37


def test_spikes_sorted_and_within_duration(motor):
    for s in motor:
        assert len(s.spike_times) > 0
        assert np.all(np.diff(s.spike_times) >= 0)
        assert s.spike_times[0] >= 0.0 and s.spike_times[-1] < 120.0
        assert s.spike_units.dtype == np.int32
        assert s.spike_units.min() >= 0 and s.spike_units.max() < s.n_units


def test_refractory_period(motor):
    for s in motor:
        order = np.lexsort((s.spike_times, s.spike_units))
        t, u = s.spike_times[order], s.spike_units[order]
        same = u[1:] == u[:-1]
        assert np.diff(t)[same].min() >= 0.002 - 1e-12


def test_rates_to_spikes_matches_rate_and_refractory():
    rng = np.random.default_rng(0)
    rates = np.full((10000, 3), [5.0, 40.0, 120.0])  # 100 s at 10 ms
    t, u = rates_to_spikes(rates, rng=rng, duration_s=100.0, refractory_s=0.002)
    measured = np.bincount(u, minlength=3) / 100.0
    np.testing.assert_allclose(measured, [5.0, 40.0, 120.0], rtol=0.06)
    for k in range(3):
        assert np.diff(t[u == k]).min() >= 0.002 - 1e-12


def test_firing_rates_plausible(motor):
    for s in motor:
        rates = np.bincount(s.spike_units, minlength=s.n_units) / 120.0
        assert rates.min() > 0.5 and rates.max() < 100.0
        assert 5.0 < rates.mean() < 40.0


def test_velocity_statistics(motor):
    for s in motor:
        speed = np.linalg.norm(s.targets, axis=1)
        # peak speed of every complete reach (the last, possibly cut, reach is excluded)
        runs = [(a, b) for a, b in complete_segments(s.phase == PHASE_REACH) if b < len(speed)]
        peaks = np.array([speed[a:b].max() for a, b in runs[:-1]])
        assert len(peaks) >= 40
        assert peaks.min() > 15.0 and peaks.max() < 45.0
        assert 22.0 < np.median(peaks) < 36.0
        durations = np.array([b - a for a, b in runs[:-1]]) * 0.01
        assert durations.min() >= 0.45 and durations.max() <= 0.95
        hold = speed[s.phase == PHASE_HOLD]
        assert np.median(hold) < 1.0 and hold.max() < 3.0
        holds = np.array([b - a for a, b in complete_segments(s.phase == PHASE_HOLD)[:-1]]) * 0.01
        assert holds.min() >= 0.28 and holds.max() <= 0.62


def test_linear_decoder_reaches_r2(motor):
    r2 = ridge_r2(motor[0])
    assert r2.mean() > 0.5, r2
    assert r2.mean() < 0.95, r2  # not trivially decodable


def test_sessions_share_subject_structure(motor):
    a, b = (set(s.meta["pool_units"]) for s in motor)
    assert len(a & b) >= 0.3 * min(len(a), len(b))
    assert motor[0].meta["subject_profile"] == motor[1].meta["subject_profile"]


def test_other_subject_differs():
    p0, p1 = make_subject(0, "m0").profile, make_subject(0, "m1").profile
    assert p0 != p1
    assert p0.n_units_range != p1.n_units_range
    assert p0.mod_depth != p1.mod_depth and p0.base_rate_hz != p1.base_rate_hz
    assert make_subject(0, "m0").profile == p0  # deterministic
    s0 = simulate_motor_session(0, seed=0, subject="m0", duration_s=10.0)
    s1 = simulate_motor_session(0, seed=0, subject="m1", duration_s=10.0)
    assert s1.session_id == "sim-m1-seed0-s000" and s1.unit_ids[0] == "sim-m1-seed0-s000/u000"
    lo, hi = p1.n_units_range
    assert lo <= s1.n_units <= hi
    assert s0.meta["subject_profile"] != s1.meta["subject_profile"]


def test_save_load_round_trip(motor, handwriting, phonemes, tmp_path):
    sessions = [*motor, handwriting, phonemes]
    paths = write_sessions(sessions, tmp_path / "out")
    assert [p.name for p in paths] == [f"{s.session_id}.npz" for s in sessions]
    for s, p in zip(sessions, paths):
        assert_same_session(s, Session.load(p))
    with pytest.raises(DataError):
        write_sessions([motor[0], motor[0]], tmp_path / "dup")


# -- handwriting -----------------------------------------------------------------------------------
def test_handwriting(handwriting):
    s = handwriting
    assert s.task == "classification" and s.n_classes == 10
    assert s.session_id == "sim-h0-seed0-hw-s000"
    assert s.targets.shape == (len(s.target_times), 2) and s.target_names == ["vx", "vy"]
    assert set(s.trial_labels.tolist()) == set(range(10))
    assert len(s.trial_labels) == len(s.trials)
    assert np.all(np.diff(s.trials[:, 0]) > 0) and np.all(s.trials[1:, 0] >= s.trials[:-1, 1] - 1e-9)
    lengths = s.trials[:, 1] - s.trials[:, 0]
    assert lengths.min() >= 1.0 and lengths.max() <= 1.9  # pause + ~1 s of writing
    speed = np.linalg.norm(s.targets, axis=1)
    assert np.median(speed[s.phase == PHASE_REACH]) > 5.0
    assert np.median(speed[s.phase == PHASE_HOLD]) < 1.5
    again = simulate_handwriting_session(0, seed=0, n_classes=10, duration_s=60.0)
    assert_same_session(s, again)


def test_handwriting_templates_differ_per_class():
    s = simulate_handwriting_session(0, seed=0, n_classes=4, duration_s=30.0, writing_s=(1.0, 1.0))
    # the mean velocity of the writing period differs between characters
    means = {}
    for (t0, t1), c in zip(s.trials, s.trial_labels):
        m = (s.target_times >= t0) & (s.target_times < t1) & (s.phase == PHASE_REACH)
        means.setdefault(int(c), []).append(s.targets[m][:95].ravel())
    centroids = [np.mean(v, axis=0) for v in means.values()]
    d = [np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1 :]]
    assert min(d) > 20.0


# -- phonemes --------------------------------------------------------------------------------------
def test_phonemes(phonemes):
    s = phonemes
    assert s.task == "ctc" and s.n_classes == 12
    assert s.targets.shape == (len(s.target_times), 0) and s.target_names == []
    assert len(s.phase) == len(s.target_times) and np.all(np.diff(s.target_times) > 0)
    off = s.label_offsets
    assert off[0] == 0 and off[-1] == len(s.label_seq) and len(off) == len(s.trials) + 1
    n = np.diff(off)
    assert n.min() >= 3 and n.max() <= 6
    assert s.label_seq.min() >= 0 and s.label_seq.max() < 12
    assert set(s.label_seq.tolist()) == set(range(12))
    lengths = s.trials[:, 1] - s.trials[:, 0]
    assert lengths.min() > 1.4 and lengths.max() < 3.6
    # one REACH run (phoneme event) per label, all inside trials
    runs = complete_segments(s.phase == PHASE_REACH)
    assert len(runs) == len(s.label_seq)
    for k in range(len(s.trials)):
        assert len(s.trial_labels_seq(k)) == n[k]


# -- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: simulate_motor_sessions(0),
        lambda: simulate_motor_session(-1),
        lambda: simulate_motor_session(0, seed=-1),
        lambda: simulate_motor_session(0, subject="a/b"),
        lambda: simulate_motor_session(0, paradigm="zigzag"),
        lambda: simulate_motor_session(0, duration_s=1.0),
        lambda: simulate_motor_session(0, n_units=0),
        lambda: simulate_motor_session(0, hold_s=(0.6, 0.3)),
        lambda: simulate_handwriting_sessions(1, n_classes=1),
        lambda: simulate_phoneme_sessions(1, n_phonemes=0),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("paradigm", ["center_out", "random_target"])
def test_paradigms(paradigm):
    s = simulate_motor_session(0, seed=0, duration_s=30.0, paradigm=paradigm)
    assert set(s.meta["trial_kinds"]) == {paradigm}
    if paradigm == "center_out":  # 8 target directions
        runs = [(a, b) for a, b in complete_segments(s.phase == PHASE_REACH) if b < len(s.targets)]
        ang = [np.arctan2(*s.targets[a:b].sum(0)[::-1]) for a, b in runs]
        k = np.round(np.mod(ang, 2 * np.pi) / (np.pi / 4)) % 8
        assert len(set(k.tolist())) >= 6
