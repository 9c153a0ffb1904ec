"""Online calibration trains unit identification as ``possm finetune`` does (the recipe), not on defaults of its own."""

from __future__ import annotations

import numpy as np
from conftest import make_tiny_model

from possm_plugin.data.session import Session
from possm_plugin.realtime import calibration
from possm_plugin.training import finetune as finetune_module
from possm_plugin.training.recipe import UI_LR
from possm_plugin.training.train_config import RECIPE


def _session(seconds: float = 6.0) -> Session:
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, seconds, 400))
    tt = np.arange(0, seconds, 0.01)
    return Session(session_id="new", spike_times=t, spike_units=rng.integers(0, 8, len(t)).astype(np.int64),
                   unit_ids=[f"new/u{i}" for i in range(8)], target_times=tt, targets=np.c_[np.sin(tt), np.cos(tt)].astype(np.float32),
                   trials=np.array([[0.0, seconds / 2], [seconds / 2, seconds]]))


def test_calibration_uses_the_recipe_of_possm_finetune(monkeypatch):
    seen = []

    def spy(model, sessions, **kw):
        seen.append(kw)
        return {"history": []}

    monkeypatch.setattr(finetune_module, "finetune", spy)
    model = make_tiny_model("gru")
    calibration.calibrate(model, _session())
    kw = seen[-1]
    cfg = kw["train_config"]
    assert kw["mode"] == "ui" and kw["lr"] == UI_LR and kw["batch_size"] == RECIPE["batch_size"]
    assert cfg.min_steps == calibration.CALIBRATION_STEPS and kw["epochs"] == RECIPE["epochs"]
    assert cfg.ema == RECIPE["ema"] and cfg.jitter_s == RECIPE["jitter_s"] and cfg.bin_jitter
    calibration.calibrate(model, _session(), epochs=3)  # an explicit count means exactly that many
    assert seen[-1]["epochs"] == 3 and seen[-1]["train_config"].min_steps == 0


def test_calibration_with_the_recipe_trains_only_the_new_rows():
    model = make_tiny_model("gru")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = calibration.calibrate(model, _session(), epochs=2)
    assert out["new_units"] == 8 and out["new_sessions"] == 1 and out["seconds"] > 0
    after = model.state_dict()
    for k, v in before.items():
        if k in ("unit_emb.weight", "session_emb.weight"):
            np.testing.assert_array_equal(after[k][: len(v)].numpy(), v.numpy())  # old rows untouched
            assert not np.array_equal(after[k][len(v):].numpy(), after[k][len(v):].numpy() * 0)
        else:
            np.testing.assert_array_equal(after[k].numpy(), v.numpy())
