"""``possm closed-loop`` end to end (baselines; POSSM's unit identification is exercised by the benchmark)."""

from __future__ import annotations

import json

from possm_plugin.cli.main import main


def test_cli_prints_metrics_and_writes_the_figure(tmp_path, capsys):
    rc = main(["--log-level", "WARNING", "closed-loop", "--decoder", "wiener", "--decoder", "oracle", "--trials", "4",
               "--calibration", "20", "--timeout", "3", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"decoders", "seeds", "trials"} and out["seeds"] == [0] and out["trials"] == 4
    m = out["decoders"]["oracle"]
    assert set(m) == {"success_rate", "time_to_target_s", "dial_in_s", "path_efficiency", "itr_bps"}
    assert set(m["time_to_target_s"]) == {"median", "p90"}
    assert m["success_rate"] == 1.0
    assert (tmp_path / "closed-loop.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "closed-loop.json").read_text())
    assert saved["decoders"] == out["decoders"] and saved["details"]["trajectories"]["oracle"]


def test_cli_rejects_bad_trials(capsys):
    assert main(["closed-loop", "--trials", "0", "--decoder", "oracle"]) == 1
    assert "--trials" in capsys.readouterr().err
