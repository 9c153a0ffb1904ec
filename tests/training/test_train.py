import copy
import json
import re
import time

import numpy as np
import pytest
import torch
import yaml

from possm_plugin.data.prepared import prepare_sessions
from possm_plugin.errors import ConfigError
from possm_plugin.model.checkpoint import load_checkpoint
from possm_plugin.sim import (
    simulate_handwriting_sessions,
    simulate_motor_session,
    simulate_motor_sessions,
    simulate_phoneme_sessions,
    write_sessions,
)
from possm_plugin.training.evaluate import evaluate_prepared
from possm_plugin.training.finetune import add_sessions, finetune
from possm_plugin.training.metrics import r2_score
from possm_plugin.training.train import TrainConfig, build_model, fit, load_train_config, train

TINY_SPEC = {"preset": "small", "backbone": "gru", "dim": 32, "dim_head": 32, "backbone_kwargs": {"hidden": 64, "layers": 1}}


@pytest.fixture(scope="module")
def motor():
    return simulate_motor_sessions(2, seed=7, duration_s=90.0)


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_beats_a_zero_predictor(motor):
    cfg = TrainConfig(epochs=6, batch_size=32, lr=4e-3, progress=False, seed=0)
    m = build_model(TINY_SPEC, motor, seed=0)
    res = fit(m, motor, cfg=cfg)
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < 0.75 * losses[0]
    # zero predictor has R2 <= 0 on held-out trials (R2 = 1 - SS_res/SS_tot, SS_res(0) >= SS_tot)
    prepared = prepare_sessions(m, motor)
    r2 = evaluate_prepared(m, prepared)["r2"]
    ps = prepared[0]
    a, b = ps.split_span("valid")
    i0, i1 = ps.chunk_range(a, b)
    true = ps.targets_at(np.arange(i0, i1) * ps.step + ps.width, 1.0)
    assert r2_score(true, np.zeros_like(true)).mean() <= 0.0
    assert r2 > 0.3, r2
    assert res["best"]["r2"] == pytest.approx(r2, abs=1e-6)  # model left at its best epoch


@pytest.mark.slow
def test_train_cli_style_run_writes_checkpoints_metrics_and_resumes(tmp_path, motor):
    write_sessions(motor, tmp_path / "data")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "model: {preset: small, backbone: s4d, dim: 32, dim_head: 32, backbone_kwargs: {hidden: 32, layers: 1, d_state: 16}}\n"
        "train: {epochs: 2, batch_size: 32, seed: 1, progress: false}\n"
    )
    cfg = load_train_config(cfg_file, data=str(tmp_path / "data"), out=str(tmp_path / "run"))
    res = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    best, doc = load_checkpoint(tmp_path / "run")
    assert doc["meta"]["epoch"] == res["best_epoch"]
    cfg3 = load_train_config(cfg_file, data=str(tmp_path / "data"), out=str(tmp_path / "run"), epochs=3)
    res3 = train(cfg3, resume=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [h["epoch"] for h in res3["history"]] == [2]


def test_train_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(None, epoch=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {optimizer: sgd}\n")
    with pytest.raises(ConfigError, match="optimizer='sgd'"):
        load_train_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "none.yaml")


def test_lamb_optimizer_trains(motor):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=4e-3, optimizer="lamb", progress=False)
    m = build_model(TINY_SPEC, motor[:1], seed=0)
    res = fit(m, motor[:1], cfg=cfg)
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"] * 1.05
    assert all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.slow
def test_unit_identification_freezes_everything_but_new_rows(motor):
    m = build_model(TINY_SPEC, motor, seed=0)
    fit(m, motor, cfg=TrainConfig(epochs=2, batch_size=32, progress=False))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n_units, n_sess = len(m.unit_vocab), len(m.session_vocab)
    new = simulate_motor_session(5, seed=7, duration_s=60.0)
    twin = copy.deepcopy(m)
    torch.manual_seed(123)
    add_sessions(twin, [new])  # the same draw of new rows that finetune makes below
    torch.manual_seed(123)
    res = finetune(m, [new], mode="ui", epochs=2, batch_size=32)
    after = m.state_dict()
    for k, v in before.items():
        if k == "unit_emb.weight":
            assert torch.equal(after[k][:n_units], v)
            moved = (after[k][n_units:] - twin.unit_emb.weight[n_units:]).abs().amax(-1)
            assert (moved > 1e-4).float().mean() > 0.9  # the new rows trained
        elif k == "session_emb.weight":
            assert torch.equal(after[k][:n_sess], v)
        else:
            assert torch.equal(after[k], v), k
    assert after["unit_emb.weight"].shape[0] == n_units + new.n_units
    assert res["new_units"] == new.n_units and res["trainable_parameters"] == (new.n_units + 1) * 32
    assert "valid_r2" in res and np.isfinite(res["valid_r2"])
    res2 = finetune(m, [simulate_motor_session(6, seed=7, duration_s=60.0)], mode="ft", epochs=2, ui_epochs=1, batch_size=32)
    assert len(res2["history"]) == 2 and "ft" in res2


def test_classification_and_ctc_train_and_evaluate():
    hw = simulate_handwriting_sessions(1, seed=0, duration_s=60.0, n_classes=4)
    m = build_model(TINY_SPEC, hw, seed=0)
    assert m.config.readout == "classification" and m.config.output_dim == 4
    res = fit(m, hw, cfg=TrainConfig(epochs=2, batch_size=16, progress=False))
    assert 0.0 <= res["best"]["accuracy"] <= 1.0
    ph = simulate_phoneme_sessions(1, seed=0, duration_s=60.0, n_phonemes=5)
    m = build_model(TINY_SPEC, ph, seed=0)
    assert m.readout.out_features == 6  # CTC blank + 5 phonemes
    res = fit(m, ph, cfg=TrainConfig(epochs=2, batch_size=8, progress=False))
    losses = [h["train_loss"] for h in res["history"]]
    assert np.isfinite(losses).all() and res["best"]["token_error_rate"] >= 0.0


def test_possm_train_defaults_are_the_recipe_and_explicit_epochs_win(tmp_path):
    from possm_plugin.training.train import RECIPE

    cfg = load_train_config(None)
    for k, v in RECIPE.items():
        assert getattr(cfg, k) == v, k
    assert cfg.epochs_for(5) == 120 and cfg.epochs_for(100) == 30  # at least 600 steps, at least 30 epochs
    asked = load_train_config(None, epochs=3)
    assert asked.min_steps == 0 and asked.epochs_for(5) == 3
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 4, min_steps: 50, ema: 0.0}\n")
    both = load_train_config(f)
    assert both.epochs_for(5) == 10 and both.ema == 0.0 and both.batch_size == RECIPE["batch_size"]
    with pytest.raises(ConfigError, match="ema"):
        load_train_config(None, ema=1.0)


def test_weight_average_is_what_validation_and_best_checkpoint_hold(tmp_path, motor):
    """With ``ema`` the returned model and best.* hold the running average of the weights (checked by
    averaging the live weights after every step here), and last.* the live weights."""
    from possm_plugin.training.train import WeightAverage

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = WeightAverage(lin, 0.5)
    want = 0.0  # the shadow starts at the initial weights, then decays by min(0.5, (1 + n) / (10 + n))
    for n, v in enumerate((1.0, 3.0, 5.0)):
        with torch.no_grad():
            lin.weight.fill_(v)
        avg.update()
        d = min(0.5, (1 + n) / (10 + n))
        want = d * want + (1 - d) * v
    expect = torch.full_like(lin.weight, want)
    torch.testing.assert_close(avg.shadow[0], expect)
    with avg.swapped():
        torch.testing.assert_close(lin.weight.detach(), expect)
    assert float(lin.weight.detach()[0, 0]) == 5.0  # live weights back

    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, seed=0, ema=0.9)
    m = build_model(TINY_SPEC, motor, seed=0)
    res = fit(m, motor, cfg=cfg, out_dir=tmp_path / "run")
    best, _ = load_checkpoint(tmp_path / "run" / "best.yaml")
    last, _ = load_checkpoint(tmp_path / "run" / "last.yaml")
    sd, sb, sl = m.state_dict(), best.state_dict(), last.state_dict()
    if res["best_epoch"] == 1:
        assert all(torch.equal(sd[k], sb[k]) for k in sd)
    assert any(not torch.equal(sb[k], sl[k]) for k in sb)  # the average differs from the live weights
    r2 = evaluate_prepared(best, prepare_sessions(best, motor))["r2"]
    assert r2 == pytest.approx(res["best"]["r2"], abs=1e-6)


@pytest.mark.parametrize("model, named", [
    ("{preset: small, backbone: gru, dimm: 32}", "dimm"),  # a typo
    ("{preset: small, backbone: gru, dim: -3}", "dim=-3"),  # a bad value
    ("{preset: small, backbone: gruu}", "gruu"),  # no such backbone
    ("{preset: small, backbone: gru, backbone_kwargs: {hiden: 32}}", "hiden"),  # a typo the backbone rejects
])
def test_a_bad_model_section_fails_at_once_before_any_data_loads(tmp_path, monkeypatch, capsys, model, named):
    """``possm train``: the model: section is checked before the data directory is read, so a typo fails in
    well under a second with one line naming it, even when the data is large (here: reading it fails the test)."""
    from possm_plugin.cli.main import main as possm_main
    from possm_plugin.training import train as train_mod

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was read before the model section was checked")

    monkeypatch.setattr(train_mod, "load_sessions", no_loading)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {model}\ntrain: {{epochs: 1}}\n")
    t0 = time.perf_counter()
    rc = possm_main(["train", "--config", str(cfg), "--data", str(tmp_path / "huge"), "--out", str(tmp_path / "run")])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 1 and named in err and err.count("\n") == 0, err
    assert err.startswith("possm train: error: ") and took < 1.0, (err, took)
    assert not (tmp_path / "run").exists()
    # the same from Python: a TrainConfig made by hand is checked by train() before its data loads
    with pytest.raises(ConfigError, match=re.escape(named)):
        train(TrainConfig(model=yaml.safe_load(model), data=str(tmp_path / "huge"), progress=False))


def test_the_model_check_accepts_what_the_data_decides_and_keeps_the_random_state(motor):
    """Fields the data decides (outputs, readout) are not held against a section; the check builds the model
    once without drawing from torch's generator, so seeded runs stay as they were."""
    from possm_plugin.training.train_config import check_model_spec

    state = torch.get_rng_state()
    for spec in (TINY_SPEC, {**TINY_SPEC, "output_dim": 3}, {**TINY_SPEC, "output_names": ["a"]},
                 {**TINY_SPEC, "readout": "regression", "output_dim": 3}, {"dim": 32, "dim_head": 32}):
        assert check_model_spec(spec).dim == 32
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ConfigError, match="output_names"):  # a section that contradicts itself
        check_model_spec({**TINY_SPEC, "readout": "regression", "output_dim": 3, "output_names": ["a"]})


def test_log_lines_are_not_glued_onto_the_progress_bar(motor, capsys):
    """The CLI logs through a stderr handler on the root logger while tqdm draws on stderr: each epoch's
    log line must start a line of its own, never follow the bar's text."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root, old_level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        before = list(root.handlers)
        m = build_model(TINY_SPEC, motor[:1], seed=0)
        fit(m, motor[:1], cfg=TrainConfig(epochs=2, batch_size=32, lr=4e-3, progress=True, seed=0))
        assert root.handlers == before  # the redirection ends with the bar
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    err = capsys.readouterr().err
    assert "train:" in err and "100%" in err  # the bar was drawn
    logged = [ln for ln in err.split("\n") if "epoch " in ln and " loss " in ln]
    assert len(logged) == 2, err
    for ln in logged:  # what the terminal shows of the line: the text after the last carriage return
        assert ln.split("\r")[-1].startswith("INFO possm_plugin.training.train: epoch "), repr(ln)


@pytest.mark.parametrize("task", ["regression", "classification", "ctc"])
def test_the_recipe_sets_unit_dropout_by_task_and_a_config_wins(task, monkeypatch, tmp_path):
    """The recipe leaves ``unit_dropout`` to the task (0.6 for classification, off for regression and CTC);
    ``fit`` hands that to the window sampler; a number in a config file wins."""
    import possm_plugin.training.train as train_module
    from possm_plugin.training.train_config import RECIPE_UNIT_DROPOUT

    want = {"regression": 1.0, "classification": 0.6, "ctc": 1.0}[task]
    assert RECIPE_UNIT_DROPOUT[task] == want
    sessions = {
        "regression": lambda: simulate_motor_sessions(1, seed=3, duration_s=20.0),
        "classification": lambda: simulate_handwriting_sessions(1, seed=3, duration_s=20.0),
        "ctc": lambda: simulate_phoneme_sessions(1, seed=3, duration_s=20.0),
    }[task]()
    seen = []

    class Stop(Exception):
        pass

    def spy(*args, **kw):
        seen.append(kw["unit_dropout"])
        raise Stop

    monkeypatch.setattr(train_module, "WindowSampler", spy)
    path = tmp_path / "c.yaml"
    for doc, expect in (({}, want), ({"train": {"unit_dropout": 0.8}}, 0.8), ({"train": {"unit_dropout": None}}, want)):
        path.write_text(yaml.safe_dump(doc))
        cfg = load_train_config(path, progress=False)
        model = build_model(TINY_SPEC, sessions, seed=0)
        with pytest.raises(Stop):
            fit(model, sessions, cfg=cfg)
        assert seen[-1] == expect
