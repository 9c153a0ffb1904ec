"""The real-data benchmark (benchmarks/real.py): its folds never let a test trial into training or
selection (checked on the trial indices every model is given), and a smoke run on two real sessions
cut to a few trials gives the documented JSON and a report that re-renders from it. Not a test of
accuracy numbers."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # benchmark runs in module fixtures: tens of seconds

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "real.py"
N_TRIALS = 30  # per session in the smoke run


@functools.lru_cache(maxsize=1)
def _bench():
    """benchmarks/real.py as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("possm_real_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- folds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [30, 159, 180])
def test_test_folds_partition_the_trials_and_calibration_sets_are_training_prefixes(n):
    bench = _bench()
    plan = bench.fold_plan(n, (0.1, 0.25, 1.0))
    assert len(plan) == 5
    tests = np.concatenate([f["test"] for f in plan])
    assert sorted(tests.tolist()) == list(range(n))  # every trial is tested exactly once
    for f in plan:
        assert not set(f["train"]) & set(f["test"])
        assert sorted(np.concatenate([f["train"], f["test"]]).tolist()) == list(range(n))
        assert np.all(np.diff(f["train"]) > 0)  # recording order
        sizes = []
        for fr, cal in f["calibration"].items():
            assert np.array_equal(cal, f["train"][: len(cal)])  # a prefix of the fold's training trials
            sizes.append(len(cal))
            assert len(cal) == max(bench.MIN_CALIBRATION_TRIALS, round(float(fr) * len(f["train"]))) or len(cal) == len(f["train"])
        assert sizes == sorted(sizes) and sizes[-1] == len(f["train"])
        fit, valid = bench.split_valid(f["train"])
        assert np.array_equal(np.concatenate([fit, valid]), f["train"])  # valid: the last 20 %, in recording order
        assert len(valid) == round(0.2 * len(f["train"]))


# -- a smoke run, every model's data recorded ----------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """real.py --smoke --json --report on a folder of two real sessions cut to their first N_TRIALS
    trials, in this process, with every training, adaptation and prediction call recorded."""
    from possm_plugin.baselines.binning import TrialSubset

    bench = _bench()
    root = tmp_path_factory.mktemp("real")
    data = root / "data"
    sessions = [bench.cut_trials(s, np.arange(N_TRIALS)) for s in bench.bundled_sessions()]
    for s in sessions:
        s.save(data / f"{s.session_id}.npz")
    calls = []

    def origin(session, local=None):
        """(fold, role, original trial indices) of a benchmark cut (None for a whole session)."""
        b = session.meta.get("benchmark")
        if b is None:
            return None
        trials = np.asarray(b["trials"])
        return b["fold"], b["role"], trials if local is None else trials[np.asarray(local)]

    real_fit, real_train, real_adapt, real_predict = bench.fit_baseline, bench.train_recipe, bench.adapt_recipe, bench.predict_session

    def fit_baseline(suite, name, train, valid, **kw):
        assert isinstance(train, TrialSubset) and isinstance(valid, TrialSubset) and train.session is valid.session
        calls.append({"kind": "baseline", "name": name, "sid": train.session.session_id,
                      "fit": origin(train.session, train.trials), "valid": origin(valid.session, valid.trials),
                      "given": origin(train.session)})
        return real_fit(suite, name, train, valid, **kw)

    def train_recipe(sessions, **kw):
        calls.append({"kind": "train", "sids": [s.session_id for s in sessions], "given": [origin(s) for s in sessions]})
        return real_train(sessions, **kw)

    def adapt_recipe(model, sessions, **kw):
        calls.append({"kind": "adapt", "mode": kw["mode"], "sids": [s.session_id for s in sessions],
                      "knows_target": [s.session_id in model.session_vocab for s in sessions],
                      "given": [origin(s) for s in sessions]})
        return real_adapt(model, sessions, **kw)

    def predict_session(model, session, n_chunks=None):
        calls.append({"kind": "predict", "sid": session.session_id, "given": origin(session)})
        return real_predict(model, session, n_chunks)

    md = root / "docs" / "real-data.md"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in [("fit_baseline", fit_baseline), ("train_recipe", train_recipe),
                         ("adapt_recipe", adapt_recipe), ("predict_session", predict_session)]:
            mp.setattr(bench, name, fn)
        bench.load_data.cache_clear()
        with contextlib.redirect_stdout(stdout):
            rc = bench.main(["--data", str(data), "--smoke", "--jobs", "1", "--json", "--report", str(md)])
    assert rc == 0
    lines = stdout.getvalue().strip().splitlines()
    assert len(lines) == 1  # stdout holds the JSON alone
    return json.loads(lines[0]), calls, sessions, md


def test_no_test_trial_is_used_for_training_or_selection(smoke):
    bench = _bench()
    out, calls, sessions, _ = smoke
    plans = {s.session_id: bench.fold_plan(len(s.trials), bench.SMOKE.fractions) for s in sessions}
    ids = set(plans)
    seen = {"baseline": 0, "train": 0, "adapt": 0, "predict": 0, "pretrain": 0}
    for c in calls:
        if c["kind"] == "baseline":
            fold, role, fit = c["fit"]
            _, _, valid = c["valid"]
            given = c["given"][2]
            test = plans[c["sid"]][fold]["test"]
            assert role == "train" and not set(fit) & set(test) and not set(valid) & set(test)
            assert np.array_equal(np.concatenate([fit, valid]), given)  # valid: the tail of what it was given
            assert set(given) <= set(plans[c["sid"]][fold]["train"])
            seen["baseline"] += 1
        elif c["kind"] in ("train", "adapt"):
            for sid, g in zip(c["sids"], c["given"]):
                if g is None:  # pretraining: whole sessions, never the one it is pretrained for (checked below)
                    assert c["kind"] == "train"
                    continue
                fold, role, trials = g
                f = plans[sid][fold]
                assert role == "train" and not set(trials) & set(f["test"])
                assert any(np.array_equal(trials, cal) for cal in f["calibration"].values())  # a training prefix
            if c["kind"] == "adapt":
                assert not any(c["knows_target"])  # the pretrained model never saw the session it adapts to
            if all(g is None for g in c["given"]):
                assert len(c["sids"]) == len(ids) - 1
                seen["pretrain"] += 1
            seen[c["kind"]] += 1
        else:
            fold, role, trials = c["given"]
            assert role == "test" and np.array_equal(trials, plans[c["sid"]][fold]["test"])
            seen["predict"] += 1
    # every model ran: 4 baselines x 5 folds per session single-session, Wiener at the smaller fractions
    n_fr = len(bench.SMOKE.fractions)
    per_session_baselines = 4 * 5 + (n_fr - 1) * bench.SMOKE.transfer_folds
    assert seen["baseline"] == len(ids) * per_session_baselines
    assert seen["pretrain"] == len(ids)  # one pretraining per target session, shared by its folds
    assert seen["adapt"] == len(ids) * 2 * n_fr * bench.SMOKE.transfer_folds
    assert seen["train"] == len(ids) * (1 + 5 + (n_fr - 1) * bench.SMOKE.transfer_folds)
    assert seen["predict"] == seen["adapt"] + seen["train"] - seen["pretrain"]


def test_json_has_the_documented_structure(smoke):
    bench = _bench()
    out, _, sessions, _ = smoke
    ids = [s.session_id for s in sessions]
    assert {"single", "transfer", "budget", "wall_s"} <= set(out) and _is_num(out["wall_s"])
    fractions = [str(f) for f in bench.SMOKE.fractions]
    for sid in ids:
        ss = out["single"][sid]
        assert list(ss) == list(bench.MODELS)
        for d in ss.values():
            assert set(d) == {"r2_mean", "r2_folds"} and len(d["r2_folds"]) == 5
            assert all(_is_num(x) for x in d["r2_folds"]) and np.isclose(np.mean(d["r2_folds"]), d["r2_mean"], atol=1e-3)
        tr = out["transfer"][sid]
        assert list(tr) == list(bench.METHODS)
        for d in tr.values():
            assert list(d) == fractions
            for v in d.values():
                assert set(v) == {"r2_mean", "r2_folds"} and len(v["r2_folds"]) == bench.SMOKE.transfer_folds
                assert all(_is_num(x) for x in v["r2_folds"])
        k = bench.SMOKE.transfer_folds
        assert tr["scratch"]["1.0"]["r2_folds"] == ss["possm"]["r2_folds"][:k]  # the same run
        assert tr["wiener"]["1.0"]["r2_folds"] == ss["wiener"]["r2_folds"][:k]
        assert out["sessions"][sid]["trials"] == N_TRIALS and out["sessions"][sid]["bin_s"] == pytest.approx(0.1)
        assert out["sessions"][sid]["pretrained_on"] == [i for i in ids if i != sid]
        v = out["verdict"][sid]
        assert v["possm_minus_wiener"] == pytest.approx(ss["possm"]["r2_mean"] - ss["wiener"]["r2_mean"], abs=2e-4)
    b = out["budget"]
    assert b["name"] == "smoke" and b["folds"] == 5 and b["fractions"] == list(bench.SMOKE.fractions)
    assert b["models"] == list(bench.MODELS) and _is_num(b["recipe_steps"])


def test_report_is_written_and_re_renders_from_the_json(smoke, tmp_path):
    out, _, sessions, md = smoke
    assert md.is_file() and md.with_suffix(".png").stat().st_size > 10_000
    assert json.loads(md.with_suffix(".json").read_text()) == out
    text = md.read_text()
    assert "## Protocol" in text and "## Transfer" in text
    for s in sessions:
        assert f"`{s.session_id}`" in text
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_report

    # hand-written discussion survives a re-render from the committed JSON, without running anything
    md.write_text(text.replace(real_report.DISCUSSION_START + "\n", real_report.DISCUSSION_START + "\nKEEP ME\n"))
    again = tmp_path / "again.md"
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        assert real_report.main([str(md.with_suffix(".json")), "--md", str(md)]) == 0
    assert "KEEP ME" in md.read_text() and "possm" in buf.getvalue()
    assert real_report.main([str(md.with_suffix(".json")), "--md", str(again)]) == 0
    assert again.with_suffix(".png").is_file() and again.with_suffix(".json").is_file()
