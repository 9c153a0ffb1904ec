"""Session identity: fingerprints in session files and checkpoints, and the refusal of a known session
id whose recording differs (training, resuming, fine-tuning, evaluation, calibration)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from possm_plugin.cli.main import main
from possm_plugin.data.identity import check_sessions
from possm_plugin.data.importers import load_binned
from possm_plugin.data.prepared import prepare_sessions
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.checkpoint import load_checkpoint, save_checkpoint
from possm_plugin.training.finetune import finetune
from possm_plugin.training.train import TrainConfig, build_model, fit, model_for_run

TINY_SPEC = {"preset": "small", "backbone": "gru", "dim": 32, "dim_head": 32, "ffn_dropout": 0.0,
             "backbone_kwargs": {"hidden": 32, "layers": 1}}


@pytest.fixture(scope="module")
def binned_file(tmp_path_factory):
    """A small NPZ of binned counts: 20 units, 24 trials of 10 bins of 100 ms, velocity driven by the rates."""
    rng = np.random.default_rng(5)
    n_bins, n_units = 240, 20
    vel = np.cumsum(rng.normal(size=(n_bins, 2)), 0).astype(np.float32)
    vel -= vel.mean(0)
    rates = np.exp(1.0 + 0.3 * vel @ rng.normal(size=(2, n_units)) / (np.abs(vel).max() + 1e-9))
    counts = rng.poisson(rates * 0.1 * 10).astype(np.float32)
    path = tmp_path_factory.mktemp("binned") / "rec.npz"
    np.savez(path, counts=counts, velocity=vel, trial_lengths=np.full(24, 10, np.int32), bin_s=np.float32(0.1))
    return path


def _cfg(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(model=TINY_SPEC, epochs=1, batch_size=8, progress=False, seed=0), **kw)


def test_one_file_imported_twice_trains_side_by_side_with_separate_embeddings(binned_file):
    a = load_binned(binned_file, session_id="rec-a")
    b = load_binned(binned_file, session_id="rec-b")
    assert a.fingerprint == b.fingerprint  # the same recording: the ids, not the content, keep them apart
    model = build_model(TINY_SPEC, [a, b], seed=0)
    rows = [model.session_vocab.index(s.session_id) for s in (a, b)]
    assert rows[0] != rows[1] and len(model.session_vocab) == 3  # padding + two sessions
    units_a, units_b = (set(model.unit_vocab.lookup(s.unit_ids).tolist()) for s in (a, b))
    assert len(units_a) == len(units_b) == 20 and not units_a & units_b
    assert model.session_fingerprints == {"rec-a": a.fingerprint, "rec-b": b.fingerprint}
    before = model.session_emb.weight.detach().clone()
    fit(model, [a, b], cfg=_cfg())
    after = model.session_emb.weight.detach()
    assert not torch.equal(after[rows[0]], before[rows[0]]) and not torch.equal(after[rows[1]], before[rows[1]])
    assert not torch.equal(after[rows[0]], after[rows[1]])


def test_two_sessions_under_one_id_cannot_build_a_model(binned_file):
    a = load_binned(binned_file, session_id="rec")
    b = load_binned(binned_file, session_id="rec", seed=1)
    with pytest.raises(DataError, match="two sessions share the id 'rec'"):
        build_model(TINY_SPEC, [a, b])


def test_known_id_with_other_content_is_refused_everywhere(binned_file, tmp_path, capsys):
    """Same id, same units, other spikes (another seed of the bin placement): only the fingerprint tells."""
    known = load_binned(binned_file, session_id="rec")
    other = load_binned(binned_file, session_id="rec", placement="uniform")
    assert other.unit_ids == known.unit_ids and other.fingerprint != known.fingerprint
    model = build_model(TINY_SPEC, [known], seed=0)
    check_sessions(model, [known])  # the recording it knows passes
    want = rf"session 'rec'.*fingerprint is {other.fingerprint}, the model's is {known.fingerprint}"
    with pytest.raises(DataError, match=want):
        prepare_sessions(model, [other])  # training (fit) and evaluation
    with pytest.raises(DataError, match=want):
        finetune(model, [other], epochs=1)
    from possm_plugin.realtime.calibration import calibrate

    with pytest.raises(DataError, match=want):
        calibrate(model, other, epochs=1)

    # through a checkpoint: the fingerprints are saved next to session_units and read back
    ck = save_checkpoint(model, tmp_path / "ck" / "last")
    loaded, doc = load_checkpoint(ck)
    assert doc["session_fingerprints"] == {"rec": known.fingerprint} and loaded.session_fingerprints == doc["session_fingerprints"]
    assert main(["info", str(ck)]) == 0 and f"rec: 20 units, fingerprint {known.fingerprint}" in capsys.readouterr().out
    (tmp_path / "ck" / "last.optim.safetensors").write_bytes(b"")  # resume refuses before reading it
    with pytest.raises(DataError, match=want):
        model_for_run(_cfg(), [other], tmp_path / "ck")
    data = tmp_path / "data"
    other.save(data)
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(data)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("possm evaluate: error: session 'rec'") and known.fingerprint in err and other.fingerprint in err


def test_checkpoint_without_fingerprints_still_loads_and_checks_unit_lists(binned_file):
    model, doc = load_checkpoint(None)  # the bundled default predates fingerprints
    assert "session_fingerprints" not in doc and model.session_fingerprints == {}
    sid = model.session_vocab.ids[0]
    s = load_binned(binned_file, session_id=sid)  # its id, but 20 units instead of the model's
    with pytest.raises(DataError, match=rf"session '{sid}'.*20 units.*no fingerprint recorded"):
        check_sessions(model, [s])


def test_finetune_cli_on_sessions_the_checkpoint_knows_is_an_error(binned_file, tmp_path, capsys):
    s = load_binned(binned_file, session_id="rec")
    ck = save_checkpoint(build_model(TINY_SPEC, [s], seed=0), tmp_path / "model")
    s.save(tmp_path / "data")
    rc = main(["finetune", "--checkpoint", str(ck), "--data", str(tmp_path / "data"), "--epochs", "1", "--no-progress",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("possm finetune: error: nothing to fine-tune: the model already knows every session given (rec)")
    assert not (tmp_path / "out" / "model.yaml").exists()
    model, _ = load_checkpoint(ck)
    with pytest.raises(ConfigError, match="would train no parameter"):
        finetune(model, [s], mode="ft", epochs=2)


def test_session_file_carries_its_fingerprint_and_refuses_tampering(binned_file, tmp_path):
    s = load_binned(binned_file, session_id="rec")
    path = s.save(tmp_path)
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    assert str(d["fingerprint"]) == s.fingerprint and len(s.fingerprint) == 16
    assert Session.load(path).fingerprint == s.fingerprint
    d["spike_times"] = d["spike_times"] + 1e-9 * (np.arange(len(d["spike_times"])) == len(d["spike_times"]) - 1)  # stays sorted
    np.savez(tmp_path / "tampered.npz", **d)
    with pytest.raises(DataError, match=rf"do not match the fingerprint stored with them \(stored {s.fingerprint}, computed "):
        Session.load(tmp_path / "tampered.npz")
    del d["fingerprint"]
    np.savez(tmp_path / "old.npz", **d)  # files written before fingerprints: load, fingerprint computed
    old = Session.load(tmp_path / "old.npz")
    assert len(old.fingerprint) == 16 and old.fingerprint != s.fingerprint


def test_simulated_session_ids_carry_the_seed(tmp_path, capsys):
    for seed in (0, 99):
        assert main(["simulate", "--sessions", "1", "--seed", str(seed), "--duration", "5", "--out", str(tmp_path / f"s{seed}")]) == 0
    capsys.readouterr()
    (a,), (b,) = (load_sessions_of(tmp_path / f"s{seed}") for seed in (0, 99))
    assert (a.session_id, b.session_id) == ("sim-m0-seed0-s000", "sim-m0-seed99-s000")
    assert not set(a.unit_ids) & set(b.unit_ids) and a.fingerprint != b.fingerprint
    # the seedless ids the bundled checkpoint was trained on, on request
    assert main(["simulate", "--sessions", "1", "--duration", "5", "--id-prefix", "sim-m0", "--out", str(tmp_path / "old")]) == 0
    (old,) = load_sessions_of(tmp_path / "old")
    assert old.session_id == "sim-m0-s000" and old.fingerprint == a.fingerprint
    from possm_plugin.realtime.demo import sim_id_prefix
    from possm_plugin.sim import parse_sim_session_id

    assert sim_id_prefix(None, seed=0, session_index=0) == "sim-m0"  # the demo streams what the bundled checkpoint knows
    assert parse_sim_session_id("sim-m0-seed99-s000") == {"subject": "m0", "seed": 99, "task": "motor", "index": 0,
                                                        "id_prefix": "sim-m0-seed99"}


def load_sessions_of(folder):
    from possm_plugin.data.session import load_sessions

    return load_sessions(folder)


def test_held_out_trials_cut_from_a_recording_keep_its_identity(binned_file, tmp_path):
    """A model trained on some trials of a recording decodes its other trials (``Session.cut`` keeps the
    recording's identity, also through a session file); a recording with other spikes is still refused."""
    rec = load_binned(binned_file, session_id="rec")
    train, test = rec.cut(np.arange(0, 18)), rec.cut(np.arange(18, 24))
    assert train.fingerprint != test.fingerprint != rec.fingerprint  # their own spikes differ
    assert train.identity == test.identity == rec.fingerprint
    model = build_model(TINY_SPEC, [train], seed=0)
    assert model.session_fingerprints == {"rec": rec.fingerprint}
    prepare_sessions(model, [test])  # accepted: the same recording
    back = Session.load(test.save(tmp_path / "test.npz"))
    assert back.identity == rec.fingerprint and back.fingerprint == test.fingerprint
    prepare_sessions(model, [back])
    other = dataclasses.replace(test, spike_times=test.spike_times + 1e-3, origin=None)  # other content, same id
    with pytest.raises(DataError, match=r"session 'rec' is not the recording"):
        prepare_sessions(model, [other])


def test_bin_jitter_moves_spikes_only_inside_their_bins(binned_file):
    """Training windows of a binned session with ``bin_jitter``: every spike at a new time, in its own bin."""
    from possm_plugin.data.prepared import WindowSampler

    rec = load_binned(binned_file, session_id="rec")
    model = build_model(TINY_SPEC, [rec], seed=0)
    ps = prepare_sessions(model, [rec])[0]
    assert ps.bin_s == pytest.approx(0.1)
    plain = ps.chunks(3, 10)  # chunks 3..12: 0.15 s .. 0.65 s, a window starting mid-bin
    moved = ps.chunks(3, 10, rng=np.random.default_rng(0))

    def per_bin(ch):
        m = ch.mask & (ch.units > 0)
        t = ch.times[m] + np.repeat(ch.starts, m.sum(1))  # absolute times
        return np.bincount(np.floor(t / 0.1 + 1e-9).astype(int), minlength=8)[2:6], np.sort(t[(t >= 0.2) & (t < 0.6)])

    (c0, t0), (c1, t1) = per_bin(plain), per_bin(moved)
    np.testing.assert_array_equal(c0, c1)  # whole bins 0.2-0.6 s keep their counts
    assert not np.allclose(t0, t1)
    s = WindowSampler([ps], readout="regression", window_chunks=10, n_units=model.n_units, seed=0, bin_jitter=True)
    assert s.bin_jitter


def test_jitter_s_moves_real_spike_times_only_inside_their_chunks():
    """Sessions with real spike times: ``jitter_s`` (the recipe's 0.05 s, one chunk) draws every spike's
    time anew inside its 50 ms bin, so each chunk keeps exactly its spikes; without it nothing moves."""
    from possm_plugin.sim import simulate_motor_session

    s = simulate_motor_session(0, seed=3, duration_s=20.0)
    model = build_model(TINY_SPEC, [s], seed=0)
    ps = prepare_sessions(model, [s])[0]
    assert ps.bin_s is None
    plain = ps.chunks(7, 12)
    moved = ps.chunks(7, 12, rng=np.random.default_rng(1), jitter_s=0.05)
    same = ps.chunks(7, 12, rng=np.random.default_rng(1))  # no bin width: nothing to re-place within
    np.testing.assert_array_equal(plain.counts, moved.counts)
    for a, b in ((plain, same),):
        np.testing.assert_array_equal(a.times, b.times)
    m = plain.mask & (plain.units > 0)
    np.testing.assert_array_equal(np.sort(plain.units[m]), np.sort(moved.units[moved.mask & (moved.units > 0)]))
    assert not np.allclose(np.sort(plain.times[m]), np.sort(moved.times[moved.mask & (moved.units > 0)]))
    assert moved.times[moved.mask].max() < 0.05 and moved.times[moved.mask].min() >= 0.0
