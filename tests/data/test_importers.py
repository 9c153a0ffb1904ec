"""Importers: binned counts -> events -> Session (and the real Chewie session), NWB files via pynwb."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from possm_plugin.baselines import WienerFilter
from possm_plugin.baselines.binning import TrialSubset, bin_session, bin_spikes, split_trials
from possm_plugin.data.importers import (
    CHEWIE_FILE,
    bundled_files,
    bundled_sessions,
    counts_to_events,
    load_binned,
    load_chewie,
    nice_scale,
    session_from_counts,
)
from possm_plugin.data.session import PHASE_REACH, Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.tokenize import chunk_starts

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The folder of the recordings bundled with the package (``possm_plugin/assets/data``)."""
    folder = bundled_files()[0].parent
    assert (folder / CHEWIE_FILE).is_file()
    return folder


@pytest.fixture(scope="module")
def chewie_raw():
    with np.load(shared_data_dir() / CHEWIE_FILE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def chewie() -> Session:
    return load_chewie(shared_data_dir())


# -- counts -> events ----------------------------------------------------------------------------
@pytest.mark.parametrize("placement", ["uniform", "even"])
def test_events_stay_in_their_bins(placement):
    counts = np.array([[0, 3], [2, 0], [1, 1]])
    times, units = counts_to_events(counts, bin_s=0.1, t0=5.0, placement=placement, seed=1)
    assert len(times) == 7 and np.all(np.diff(times) >= 0)
    starts = chunk_starts(5.0, 3, 0.1)
    np.testing.assert_array_equal(bin_spikes(times, units, n_units=2, starts=starts, width=0.1), counts)
    if placement == "even":
        np.testing.assert_allclose(np.sort(times[units == 1][:3]), 5.0 + 0.1 * np.array([1, 3, 5]) / 6, atol=1e-6)
        np.testing.assert_allclose(times[units == 0][:2], [5.1 + 0.025, 5.1 + 0.075], atol=1e-6)


def test_uniform_placement_is_seeded():
    counts = np.random.default_rng(0).poisson(2.0, size=(50, 4))
    a = counts_to_events(counts, bin_s=0.05, placement="uniform", seed=3)
    b = counts_to_events(counts, bin_s=0.05, placement="uniform", seed=3)
    c = counts_to_events(counts, bin_s=0.05, placement="uniform", seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_binned_importer_rejects_bad_input():
    with pytest.raises(DataError, match="whole numbers"):
        counts_to_events(np.array([[0.5]]), bin_s=0.1)
    with pytest.raises(ConfigError, match="placement"):
        counts_to_events(np.array([[1]]), bin_s=0.1, placement="poisson")
    with pytest.raises(DataError, match="sum to the 3 bins"):
        session_from_counts(np.ones((3, 2)), bin_s=0.1, targets=np.zeros((3, 2)), session_id="x", trial_lengths=[2, 2])


def test_session_from_counts_labels_at_bin_ends_or_centres():
    counts = np.array([[1, 0], [0, 2], [3, 1], [0, 0]])
    y = np.arange(8.0).reshape(4, 2)
    s = session_from_counts(counts, bin_s=0.1, targets=y, session_id="b", trial_lengths=[1, 3], target_scale=2.0)
    np.testing.assert_allclose(s.target_times, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(s.trials, [[0.0, 0.1], [0.1, 0.4]])
    assert s.unit_ids == ["b/u000", "b/u001"] and s.target_names == ["vx", "vy"] and s.target_scale == 2.0
    assert s.meta["import"] == {"source": "binned", "bin_s": 0.1, "placement": "even", "seed": 0, "label_at": "end"}
    c = session_from_counts(counts, bin_s=0.1, targets=y, session_id="b", label_at="center")
    np.testing.assert_allclose(c.target_times, [0.05, 0.15, 0.25, 0.35])
    b = bin_session(s, width=0.1, step=0.1)
    np.testing.assert_array_equal(b.counts, counts)
    np.testing.assert_allclose(b.targets, y)  # bin k's label read at bin k's end
    assert b.trial.tolist() == [0, 1, 1, 1]


# -- the real session ----------------------------------------------------------------------------
def test_chewie_shape(chewie, chewie_raw):
    s = chewie
    assert s.n_units == 174 and len(s.unit_ids) == len(set(s.unit_ids))
    assert len(s.trials) == 159 and len(s.target_times) == 1640
    assert s.trials[0, 0] == 0.0 and s.trials[-1, 1] == pytest.approx(164.0)  # 1640 bins of 100 ms
    np.testing.assert_allclose(np.diff(s.trials[:, 0])[:5], chewie_raw["trial_lengths"][:5] * 0.1)
    assert np.all(s.trials[1:, 0] == s.trials[:-1, 1])  # back to back on one clock
    assert np.all(s.phase == PHASE_REACH)
    assert len(s.spike_times) == int(np.round(chewie_raw["rates_hz"] * 0.1).sum())
    assert s.target_scale == 10.0 and 0.5 < (s.targets / s.target_scale).std() < 1.5  # about unit size
    assert s.meta["reach_target"][:3] == chewie_raw["target"][np.r_[0, np.cumsum(chewie_raw["trial_lengths"])[:2]]].tolist()


@pytest.mark.parametrize("placement", ["uniform", "even"])
def test_chewie_counts_round_trip_exactly(chewie_raw, placement):
    s = load_chewie(shared_data_dir(), placement=placement, seed=7)
    b = bin_session(s, width=0.1, step=0.1)
    assert len(b) == 1640
    np.testing.assert_array_equal(b.counts, np.round(chewie_raw["rates_hz"].astype(np.float64) * 0.1))
    np.testing.assert_allclose(b.targets, chewie_raw["velocity"], atol=1e-3)
    assert np.bincount(b.trial).tolist() == chewie_raw["trial_lengths"].tolist()
    # on POSSM's 50 ms grid, each 100 ms bin splits into two chunks
    half = bin_session(s)
    assert len(half) == 3280
    np.testing.assert_array_equal(half.counts[0::2] + half.counts[1::2], b.counts)


def test_chewie_wiener_reproduces_the_reference(chewie):
    # README: ridge on 3 lagged 100 ms bins, 80/20 by trials -> R2 about 0.73 (x), 0.46 (y)
    scores = []
    for seed in (0, 1):
        sp = split_trials(len(chewie.trials), valid_fraction=0.0, test_fraction=0.2, seed=seed)
        w = WienerFilter(n_lags=3, width=0.1, step=0.1).fit(TrialSubset(chewie, sp["train"]))
        scores.append(w.r2(chewie, trials=sp["test"]))
    r2 = np.mean(scores, axis=0)
    assert r2.mean() > 0.5, scores
    assert r2[0] > 0.6 and r2[1] > 0.35, scores


def test_load_chewie_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_chewie(tmp_path)
    with pytest.raises(ConfigError, match="target must be one of"):
        load_chewie(shared_data_dir(), target="torque")


def test_load_chewie_names_each_file_after_its_date():
    files = bundled_files()
    assert [f.name for f in files] == [CHEWIE_FILE, "chewie_m1_center_out_2013-12-19_100ms.npz"]
    a, b = bundled_sessions()
    assert (a.session_id, b.session_id) == ("chewie-20131003", "chewie-20131219")
    assert (a.subject, b.subject) == ("chewie", "chewie") and (a.n_units, b.n_units) == (174, 155)
    assert "2013-10-03" in a.meta["dataset"] and "2013-12-19" in b.meta["dataset"] and "myow-neuro" in b.meta["dataset"]
    assert a.unit_ids[0] == "chewie-20131003/u000" and not set(a.unit_ids) & set(b.unit_ids)
    assert a.target_scale == b.target_scale == 10.0 and a.fingerprint != b.fingerprint
    assert load_chewie(files[1], session_id="c2").session_id == "c2"  # the old keyword still names it


def test_load_binned_reads_the_layout_and_says_what_is_missing(tmp_path, chewie_raw):
    counts = np.round(chewie_raw["rates_hz"][:100] * 0.1).astype(np.int16)
    vel = chewie_raw["velocity"][:100]
    np.savez(tmp_path / "c.npz", counts=counts, position=vel * 3)
    s = load_binned(tmp_path / "c.npz", session_id="x", target="position", bin_s=0.1, subject="m")
    assert s.session_id == "x" and s.subject == "m" and s.target_names == ["px", "py"] and len(s.trials) == 1
    assert s.target_scale == nice_scale(vel * 3) == 20.0  # std about 25 per axis -> 20
    assert len(s.spike_times) == int(counts.sum())
    with pytest.raises(DataError, match="has no 'bin_s'; give the bin width"):
        load_binned(tmp_path / "c.npz", session_id="x", target="position")
    with pytest.raises(DataError, match="no 'velocity' array to decode"):
        load_binned(tmp_path / "c.npz", session_id="x", bin_s=0.1)
    np.savez(tmp_path / "d.npz", velocity=vel, bin_s=0.1)
    with pytest.raises(DataError, match="neither 'counts' nor 'rates_hz'"):
        load_binned(tmp_path / "d.npz", session_id="x")
    with pytest.raises(DataError, match="disagrees with the file's bin_s=0.1"):
        load_binned(shared_data_dir() / CHEWIE_FILE, session_id="x", bin_s=0.05)
    assert nice_scale(np.array([[0.3], [-0.3]])) == 0.2 and nice_scale(np.zeros((3, 2))) == 1.0


def test_import_binned_cli_round_trip(tmp_path, capsys):
    from possm_plugin.cli.main import main

    src = bundled_files()[1]
    argv = ["import", "binned", str(src), "--out", str(tmp_path), "--session-id", "day2", "--subject", "chewie"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(str(tmp_path / "day2.npz")) and "155 units" in out
    s = Session.load(tmp_path / "day2.npz")
    ref = load_binned(src, session_id="day2", subject="chewie")
    assert s.fingerprint == ref.fingerprint and f"fingerprint {ref.fingerprint}" in out
    np.testing.assert_array_equal(s.targets, ref.targets)
    assert s.subject == "chewie" and s.target_scale == 10.0 and s.meta["file"] == src.name
    assert main(argv) == 0  # the same recording again: replaced
    capsys.readouterr()
    assert main([*argv, "--placement", "uniform"]) == 1  # other spikes under the same id: refused
    err = capsys.readouterr().err.strip()
    assert err.startswith("possm import: error:") and "already holds another recording" in err and "--overwrite" in err
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert main(["import", "binned", str(src), "--out", str(tmp_path), "--session-id", "d", "--target", "torque"]) == 1
    assert "no 'torque' array" in capsys.readouterr().err


# -- NWB -----------------------------------------------------------------------------------------
def _write_nwb(path: Path, rng: np.random.Generator) -> dict:
    """A small NWB file made with pynwb: 3 units on electrodes, hand position and velocity, 5 trials."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import Position, SpatialSeries
    from pynwb.file import Subject

    nwb = NWBFile(
        session_description="possm test", identifier="test/001",
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
        subject=Subject(subject_id="monkeyT", species="Macaca mulatta"),
    )
    dev = nwb.create_device(name="array")
    grp = nwb.create_electrode_group(name="g0", description="utah", location="M1", device=dev)
    for _ in range(4):
        nwb.add_electrode(group=grp, location="M1")
    nwb.add_unit_column(name="heldout", description="held out in NLB")
    spikes = {}
    for u, (elec, held) in enumerate([(2, False), (0, False), (3, True)]):
        t = np.sort(rng.uniform(0.0, 10.0, size=40 + 15 * u))
        spikes[100 + u] = t
        nwb.add_unit(spike_times=t, electrodes=[elec], heldout=held, id=100 + u)
    tt = np.arange(0.0, 10.0, 0.01)
    pos = np.stack([3 * np.sin(tt), 3 * np.cos(tt), tt], 1)
    vel = np.stack([3 * np.cos(tt), -3 * np.sin(tt)], 1)
    vel[[5, 6]] = np.nan
    beh = nwb.create_processing_module(name="behavior", description="kinematics")
    beh.add(Position(spatial_series=SpatialSeries(name="hand_pos", data=pos, timestamps=tt, reference_frame="centre", unit="cm")))
    beh.add(TimeSeries(name="hand_vel", data=vel, starting_time=0.0, rate=100.0, unit="cm/s"))
    nwb.add_trial_column(name="split", description="NLB split")
    nwb.add_trial_column(name="move_onset_time", description="movement onset")
    for k in range(5):
        nwb.add_trial(start_time=2.0 * k, stop_time=2.0 * k + 1.5, split="train" if k < 4 else "test",
                      move_onset_time=2.0 * k + 0.5)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return {"spikes": spikes, "tt": tt, "vel": vel}


@pytest.fixture(scope="module")
def nwb_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nwb") / "sub-T_ses-1.nwb"
    truth = _write_nwb(path, np.random.default_rng(5))
    return path, truth


def test_nwb_units_target_trials(nwb_file):
    from possm_plugin.data.importers.nwb import load_nwb

    path, truth = nwb_file
    s = load_nwb(path, target="hand_vel", reach=("move_onset_time", "stop_time"), trial_where={"split": ["train"]})
    assert s.session_id == "sub-T_ses-1" and s.subject == "monkeyT"
    assert s.unit_ids == ["sub-T_ses-1/100", "sub-T_ses-1/101", "sub-T_ses-1/102"]
    for j, uid in enumerate((100, 101, 102)):
        np.testing.assert_array_equal(s.spike_times[s.spike_units == j], truth["spikes"][uid])
    assert np.all(np.diff(s.spike_times) >= 0)
    np.testing.assert_allclose(s.trials, [[0.0, 1.5], [2.0, 3.5], [4.0, 5.5], [6.0, 7.5]])
    assert s.target_names == ["vx", "vy"] and s.targets.shape == (998, 2)  # two NaN samples dropped
    good = np.all(np.isfinite(truth["vel"]), 1)
    np.testing.assert_allclose(s.target_times, truth["tt"][good], atol=1e-9)
    np.testing.assert_allclose(s.targets, truth["vel"][good], atol=1e-6)
    assert s.meta["nwb"]["dropped"] == {"nan_target_samples": 2, "duplicate_timestamps": 0, "nonfinite_spikes": 0, "trials": 1}
    assert s.meta["nwb"]["electrodes"] == [2, 0, 3]
    reach = s.phase == PHASE_REACH  # from move onset to trial end, in the kept trials only
    assert reach[(s.target_times > 0.6) & (s.target_times < 1.4)].all()
    assert not reach[(s.target_times > 0.1) & (s.target_times < 0.4)].any()
    assert not reach[(s.target_times > 8.6) & (s.target_times < 9.4)].any()  # the test trial
    assert s.target_scale == pytest.approx(float(f"{np.sqrt(np.mean(truth['vel'][good] ** 2)):.2g}"))
    # the session saves and loads like any other
    assert Session.load(s.save(path.parent / "out")).unit_ids == s.unit_ids


def test_nwb_position_to_velocity_and_unit_options(nwb_file):
    from possm_plugin.data.importers.nwb import load_nwb, nwb_series

    path, truth = nwb_file
    listed = {d["path"]: d["shape"] for d in nwb_series(path)}
    assert listed == {"processing/behavior/Position/hand_pos": (1000, 3), "processing/behavior/hand_vel": (1000, 2)}
    s = load_nwb(path, target="processing/behavior/Position/hand_pos", columns=[0, 1], derive_velocity=True,
                 intervals=None, unit_where={"heldout": [False]}, unit_label="electrode", session_id="t1", target_scale=3.0)
    assert s.unit_ids == ["t1/e2-100", "t1/e0-101"] and s.target_names == ["vx", "vy"]
    assert len(s.trials) == 1 and s.trials[0, 0] <= truth["tt"][0] and s.trials[0, 1] >= truth["tt"][-1]
    inner = slice(1, -1)  # central differences of 3 sin(t): within O(dt^2) of 3 cos(t)
    np.testing.assert_allclose(s.targets[inner, 0], 3 * np.cos(s.target_times[inner]), atol=1e-3)
    assert s.target_scale == 3.0
    with pytest.raises(DataError, match="no time series named 'eye_pos'"):
        load_nwb(path, target="eye_pos")
    with pytest.raises(DataError, match="no column 'result'"):
        load_nwb(path, target="hand_vel", trial_where={"result": ["R"]})
    with pytest.raises(DataError, match="does not exist"):
        load_nwb(path.parent / "missing.nwb", target="hand_vel")


def test_nwb_session_decodes(nwb_file):
    """Imported sessions go through the same binning as simulated ones."""
    from possm_plugin.data.importers.nwb import load_nwb

    path, _ = nwb_file
    s = load_nwb(path, target="hand_vel")
    b = bin_session(s)
    assert b.counts.shape[1] == 3 and b.counts.sum() == np.sum((s.spike_times >= b.starts[0]) & (s.spike_times < b.ends[-1]))
    assert set(np.unique(b.trial)) == {-1, 0, 1, 2, 3, 4}


def test_import_nwb_cli_writes_the_session_load_nwb_reads(nwb_file, tmp_path, capsys):
    from possm_plugin.cli.main import main
    from possm_plugin.data.importers.nwb import load_nwb

    path, _ = nwb_file
    assert main(["import", "nwb", str(path), "--out", str(tmp_path), "--session-id", "t1", "--target", "hand_vel"]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "t1.npz"))
    s = Session.load(tmp_path / "t1.npz")
    ref = load_nwb(path, target="hand_vel", session_id="t1")
    assert s.session_id == "t1" and s.subject == "monkeyT" and s.fingerprint == ref.fingerprint
    assert s.unit_ids == ["t1/100", "t1/101", "t1/102"]
    assert main(["import", "nwb", str(path), "--out", str(tmp_path), "--session-id", "t2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("possm import: error: say which behaviour series to decode: --target NAME") and "hand_vel" in err
