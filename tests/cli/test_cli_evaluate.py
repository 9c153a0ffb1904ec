"""``possm evaluate`` prints a table a person can read (the JSON has the same numbers)."""

from __future__ import annotations

import json

from possm_plugin.cli.evaluate import metrics_text
from possm_plugin.cli.main import main
from possm_plugin.model.checkpoint import save_checkpoint
from possm_plugin.sim import simulate_motor_sessions, write_sessions
from possm_plugin.training.train import build_model

TINY_SPEC = {"preset": "small", "backbone": "gru", "dim": 32, "dim_head": 32, "backbone_kwargs": {"hidden": 48, "layers": 1}}


def test_evaluate_prints_a_table_with_the_json_numbers(tmp_path, capsys):
    sessions = simulate_motor_sessions(2, seed=3, duration_s=30.0)
    write_sessions(sessions, tmp_path / "data")
    ckpt = save_checkpoint(build_model(TINY_SPEC, sessions, seed=0), tmp_path / "m")
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data")]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "[" not in out and "'" not in out  # no Python reprs
    lines = out.splitlines()
    assert lines[0] == f"{ckpt}: regression readout, 2 session(s), held-out trials (the last 20% of each session)"
    assert lines[1].split() == ["session", "R2", "R2", "vx", "R2", "vy"]
    rows = {ln.split()[0]: [float(x) for x in ln.split()[1:]] for ln in lines[2:]}
    assert set(rows) == {s.session_id for s in sessions} | {"mean"}
    for s in sessions:
        sid = s.session_id
        assert rows[sid] == [round(doc["r2_per_session"][sid], 3), *(round(v, 3) for v in doc["r2_per_output"][sid])]
    assert rows["mean"] == [round(doc["r2"], 3)]


def test_metrics_text_of_a_classifier_has_one_column():
    text = metrics_text({"readout": "classification", "accuracy": 0.75, "accuracy_per_session": {"a": 0.5, "b": 1.0}},
                        output_names=["vx", "vy"])
    assert text.splitlines() == ["session  accuracy", "a        0.500", "b        1.000", "mean     0.750"]
