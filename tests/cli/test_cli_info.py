"""``possm info`` (and ``possm simulate``, which writes the sessions ``info`` later describes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_model

from possm_plugin.cli.main import main
from possm_plugin.data.session import load_sessions
from possm_plugin.model.checkpoint import save_checkpoint


@pytest.fixture
def two_session_checkpoint(tmp_path):
    model = make_tiny_model("s4d", n_units=5, session="a")
    b_units = ["b/x1", "b/x2", "b/x3"]
    model.extend_units(b_units)
    model.extend_sessions(["b"], units={"b": b_units})
    return save_checkpoint(model, tmp_path / "two", default_session="b", meta={"note": "two sessions"}), model


def test_info_json_describes_the_checkpoint(two_session_checkpoint, capsys):
    path, model = two_session_checkpoint
    assert main(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backbone"] == "s4d" and d["backbone_kwargs"] == {"hidden": 48, "layers": 2, "d_state": 16}
    assert d["n_parameters"] == model.n_parameters() > 0
    assert d["n_parameters_without_embeddings"] == model.n_parameters() - 9 * 32 - 3 * 32
    assert (d["chunk_width"], d["chunk_step"]) == (0.05, 0.05)
    assert d["readout"] == "regression" and d["outputs"] == ["vx", "vy"] and d["target_scale"] == 20.0
    assert d["default_session"] == "b" and d["n_sessions"] == 2 and d["n_units"] == 8
    assert d["sessions"] == [
        {"session_id": "a", "n_units": 5, "unit_ids": [f"a/u{i:03d}" for i in range(5)], "fingerprint": None},
        {"session_id": "b", "n_units": 3, "unit_ids": ["b/x1", "b/x2", "b/x3"], "fingerprint": None},
    ]
    assert d["model"]["dim"] == 32 and d["meta"] == {"note": "two sessions"}
    assert d["checkpoint"].endswith("two.yaml") and d["weights"].endswith("two.safetensors")


def test_info_text_and_stem_and_directory(two_session_checkpoint, capsys):
    path, _ = two_session_checkpoint
    assert main(["info", str(path.with_suffix(""))]) == 0
    out = capsys.readouterr().out
    assert "backbone s4d" in out and "width 50 ms, step 50 ms" in out and "default 'b'" in out
    assert "a: 5 units [a/u000, a/u001, a/u002, ...]" in out and "b: 3 units [b/x1, b/x2, b/x3]" in out
    assert main(["info", str(path.parent), "--units"]) == 0  # a directory with one checkpoint
    assert "a/u004" in capsys.readouterr().out


def test_info_without_argument_reads_the_bundled_default(two_session_checkpoint, monkeypatch, capsys):
    path, _ = two_session_checkpoint
    monkeypatch.setattr("possm_plugin.model.checkpoint.default_checkpoint", lambda: path)
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(path)


def test_info_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("possm info: error: checkpoint file") and "does not exist" in err[-1]


def test_info_corrupt_weights_are_reported(two_session_checkpoint, capsys):
    path, _ = two_session_checkpoint
    w = path.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    assert main(["info", str(path)]) == 1
    assert "do not match the sha256" in capsys.readouterr().err


def test_simulate_writes_sessions_that_match_the_stream_units(tmp_path, capsys):
    assert main(["simulate", "--sessions", "2", "--seed", "0", "--out", str(tmp_path), "--duration", "6"]) == 0
    out = capsys.readouterr().out
    assert "sim-m0-seed0-s000.npz" in out and "sim-m0-seed0-s001.npz" in out
    sessions = load_sessions(tmp_path)
    assert [s.session_id for s in sessions] == ["sim-m0-seed0-s000", "sim-m0-seed0-s001"]
    assert sessions[0].duration <= 6.0 and len(sessions[0].spike_times) > 1000
    from possm_plugin.sim.lsl import SimulatedLSLStream

    live = SimulatedLSLStream(name="unused", offset=6.0, segment=5.0)  # built, not opened: no LSL traffic
    assert live.session_id == "sim-m0-seed0-s000" and live.unit_ids == sessions[0].unit_ids
    assert live.spike_times.min() >= 0 and live.spike_times.max() < 5.0
    assert not np.isin(live.spike_times + 6.0, sessions[0].spike_times).any()  # another time segment


def test_simulate_needs_out_or_lsl(capsys):
    assert main(["simulate"]) == 1
    assert "--out DIR" in capsys.readouterr().err


def test_simulate_duration_bound_is_a_clean_number(tmp_path, capsys):
    for bad, shown in (("0", "0"), ("4.99", "4.99"), ("nan", "nan")):
        assert main(["simulate", "--out", str(tmp_path), "--duration", bad]) == 1
        err = capsys.readouterr().err
        assert err.strip() == f"possm simulate: error: --duration must be at least 5 s when writing sessions, got {shown}"
    assert not list(tmp_path.iterdir())
    from possm_plugin.errors import ConfigError
    from possm_plugin.sim import simulate_handwriting_sessions

    with pytest.raises(ConfigError, match=r"^duration_s must be >= 5, got 2\.5$"):  # the library says the same
        simulate_handwriting_sessions(1, duration_s=2.5)


def test_compile_prepares_the_compiled_step_and_says_where_it_is_cached(capsys, monkeypatch):
    from pathlib import Path

    import possm_plugin.engines as engines

    assert main(["compile", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["available"] is True and d["error"] is None and d["seconds"] >= 0
    cache = Path(d["cache"])
    assert cache.is_dir() and any(p.name.startswith("numba_backbones._step_gru") for p in cache.iterdir())
    monkeypatch.setattr(engines, "numba_error", lambda: "ImportError: no numba")  # an install where Numba does not load
    assert main(["compile"]) == 1
    assert "Numba is not available" in capsys.readouterr().out
