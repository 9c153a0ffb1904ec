"""The accuracy benchmark's machinery (benchmarks/accuracy.py --smoke): every section runs end to end
with 1 epoch on tiny sessions, the JSON has the documented keys and types, and the report is written.
Not a test of accuracy numbers."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accuracy.py"


@functools.lru_cache(maxsize=1)
def _bench():
    """benchmarks/accuracy.py as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("possm_accuracy_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("acc")
    md = out / "accuracy.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", "--report", str(md), "--jobs", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc, md


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_smoke_json_has_every_section(smoke):
    out, proc, _ = smoke
    bench = _bench()
    assert len(proc.stdout.strip().splitlines()) == 1  # stdout holds the JSON alone
    assert "single session" in proc.stderr and "POSSM beats every baseline" in proc.stderr
    ss = out["single_session"]
    assert set(ss) == set(bench.SS_MODELS)
    for d in ss.values():
        assert _is_num(d["r2_mean"]) and _is_num(d["r2_std"]) and d["r2_std"] >= 0
        assert len(d["per_seed"]) == len(out["seeds"]) >= 3
        assert np.isclose(np.mean(d["per_seed"]), d["r2_mean"], atol=1e-3)
    fractions = [str(f) for f in bench.SMOKE.fractions]
    assert set(out["transfer"]) == set(bench.TRANSFER_METHODS)
    for d in out["transfer"].values():
        assert list(d) == fractions and all(_is_num(v) for v in d.values())
    assert set(out["transfer_by_group"]) == {g for g, _, _ in bench.SMOKE.heldout}
    assert 0 < out["transfer_meta"]["ui_trainable_fraction"] < 1
    assert set(out["classification"]) == {"possm", "gru_binned"}
    assert all(_is_num(v) and 0 <= v <= 1 for v in out["classification"].values())
    assert set(out["ctc"]) == {"possm", "gru_binned"}
    assert all(_is_num(v) and v >= 0 for v in out["ctc"].values())
    if bench.find_real_data() is not None:
        assert set(out["real"]) == set(bench.REAL_MODELS)
        for d in out["real"].values():
            assert _is_num(d["r2_mean"]) and _is_num(d["r2_std"]) and len(d["per_seed"]) == 3
    else:
        assert out["real"] == {} and "skipped" in out["real_meta"]
    v = out["verdict"]
    assert isinstance(v["possm_beats_every_baseline"], bool) and isinstance(v["ui_within_0.05_of_full_training"], bool)
    assert v["best_baseline"] in bench.BASELINES and v["best_possm"].startswith("possm_")
    m = out["meta"]
    assert _is_num(m["wall_s"]) and _is_num(m["cpu_s"]) and m["jobs"] == 2 and len(m["load_avg_start"]) == 3


def test_smoke_report_and_discussion_kept(smoke, tmp_path):
    out, _, md = smoke
    bench = _bench()
    text = md.read_text()
    assert "# Accuracy benchmark" in text and "![accuracy](accuracy.png)" in text
    assert md.with_suffix(".png").stat().st_size > 1000
    # a hand-written discussion survives regenerating the report
    md2 = tmp_path / "r.md"
    md2.write_text(text.replace("_(no discussion yet", "Hand-written words. _(no discussion yet"))
    bench.report.write_report(out, md2)
    assert "Hand-written words." in md2.read_text()
    assert (tmp_path / "r.png").is_file()


def test_cut_trials_and_first_trials_keep_ids_and_behaviour():
    bench = _bench()
    from possm_plugin.binning import bin_session
    from possm_plugin.sim import simulate_motor_session

    s = simulate_motor_session(0, seed=3, duration_s=20.0)
    cut = bench.lib.cut_trials(s, np.array([2, 0]))
    assert cut.session_id == s.session_id and cut.unit_ids == s.unit_ids
    d2, d0 = np.diff(s.trials[2]), np.diff(s.trials[0])
    np.testing.assert_allclose(cut.trials, [[0.0, d2[0]], [d2[0], d2[0] + d0[0]]])
    a, b = s.trials[2]
    n_spikes = np.sum((s.spike_times >= a) & (s.spike_times < b)) + np.sum((s.spike_times >= s.trials[0, 0]) & (s.spike_times < s.trials[0, 1]))
    assert len(cut.spike_times) == n_spikes
    head = bench.lib.first_trials(s, 3)
    assert len(head.trials) == 3 and len(head.spike_times) == len(s.spike_times)
    # POSSM chunks and baseline bins are scored on the same chunk ends
    y, ends = bench.lib.eval_grid(s, np.arange(3, 5), 0.05)
    b = bin_session(s)
    assert len(y) == int(b.mask(np.arange(3, 5)).sum()) and np.all(np.diff(ends) > 0)
