"""``possm finetune`` without ``--checkpoint``: the bundled checkpoint it starts from fits the sessions
(real imported recordings: ``chewie``, pretrained on the bundled real data; otherwise ``default``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from possm_plugin.cli.finetune import base_checkpoint
from possm_plugin.cli.main import main
from possm_plugin.data.importers import load_binned
from possm_plugin.errors import CheckpointError
from possm_plugin.model.checkpoint import bundled_checkpoint, load_checkpoint, resolve_checkpoint
from possm_plugin.sim import simulate_motor_sessions


@pytest.fixture(scope="module")
def binned_file(tmp_path_factory):
    """A small recording in the binned NPZ layout: 12 units, 16 trials of 8 bins of 100 ms."""
    rng = np.random.default_rng(11)
    vel = np.cumsum(rng.normal(size=(128, 2)), 0).astype(np.float32)
    counts = rng.poisson(np.exp(0.5 + 0.1 * vel @ rng.normal(size=(2, 12)) / np.abs(vel).max())).astype(np.float32)
    path = tmp_path_factory.mktemp("rec") / "rec.npz"
    np.savez(path, counts=counts, velocity=vel, trial_lengths=np.full(16, 8, np.int32), bin_s=np.float32(0.1))
    return path


def test_real_imported_sessions_start_from_the_real_data_checkpoint_and_others_from_the_default(binned_file):
    real = load_binned(binned_file, session_id="lab-day1")
    assert base_checkpoint([real])[0] == "chewie"
    sim = simulate_motor_sessions(1, seed=2, duration_s=20.0)
    assert base_checkpoint(sim)[0] == "default"  # simulated: no import record
    assert base_checkpoint([real, *sim])[0] == "default"  # every session must be a real import
    other = load_binned(binned_file, session_id="lab-day2")
    other.target_names = ["px", "py"]  # positions, not the checkpoint's velocity outputs
    assert base_checkpoint([other])[0] == "default"


def test_finetune_without_checkpoint_adapts_the_real_data_checkpoint(binned_file, tmp_path, capsys):
    load_binned(binned_file, session_id="lab-day1").save(tmp_path / "data")
    rc = main(["finetune", "--data", str(tmp_path / "data"), "--mode", "ui", "--epochs", "1", "--no-progress",
               "--out", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "starting from the bundled checkpoint 'chewie'" in captured.err.splitlines()[0]
    summary = json.loads(captured.out)
    assert summary["base_checkpoint"] == "chewie" and summary["new_units"] == 12 and summary["new_sessions"] == 1
    adapted, _ = load_checkpoint(tmp_path / "out" / "model.yaml")
    pretrained, _ = load_checkpoint("chewie")
    assert adapted.session_vocab.ids == [*pretrained.session_vocab.ids, "lab-day1"]
    assert {"chewie-20131003", "chewie-20131219"} <= set(pretrained.session_vocab.ids)
    assert main(["info", str(tmp_path / "out" / "model.yaml")]) == 0
    assert "trained      fine-tuned (ui) from a checkpoint on other sessions" in capsys.readouterr().out


def test_bundled_checkpoints_resolve_by_name_and_info_says_what_they_were_trained_on(capsys):
    assert resolve_checkpoint("chewie")[1] == bundled_checkpoint("chewie")
    assert resolve_checkpoint("default")[1] == bundled_checkpoint("default") == resolve_checkpoint(None)[1]
    with pytest.raises(CheckpointError, match="the bundled ones are default, chewie"):
        bundled_checkpoint("jenkins")
    assert main(["info", "chewie"]) == 0
    out = capsys.readouterr().out
    assert "trained      on the 2 session(s) below" in out
    assert "chewie-20131003: 174 units" in out and "chewie-20131219: 155 units" in out
