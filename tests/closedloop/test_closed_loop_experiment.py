"""An experiment with POSSM in the loop: unit identification from the bundled checkpoint on the
calibration block, then the loop (tiny budget: one epoch, two short trials)."""

from __future__ import annotations

from possm_plugin.closedloop.experiment import ExperimentConfig, run_experiment
from possm_plugin.closedloop.task import TaskConfig


def test_possm_is_calibrated_by_ui_and_steers():
    cfg = ExperimentConfig(trials=2, calibration_s=20.0, ui_epochs=1, task=TaskConfig(timeout_s=2.0))
    rep = run_experiment(["possm", "oracle"], [0], cfg, delays=[0.05])
    assert set(rep) == {"decoders", "seeds", "trials", "details"}
    fit = rep["details"]["fit"]["0"]["possm"]
    assert 0 < fit["trainable_fraction"] < 0.05
    assert fit["open_loop_r2"] is not None and fit["calibration_r2"] is not None
    assert rep["details"]["counts"]["possm"]["trials"] == 2
    assert rep["decoders"]["oracle"]["success_rate"] == 1.0
    assert set(rep["details"]["delay_sweep"]["possm"]) == {"0.05"}
