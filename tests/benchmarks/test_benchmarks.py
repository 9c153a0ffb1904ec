"""The latency benchmark's machinery: its JSON (the keys scripts read) and its latency arithmetic."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _latency_module():
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "benchmarks" / "latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_latency_json_has_the_documented_keys_and_every_engine():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--quick", "--json", "--no-lsl", "--sizes", "small",
         "--backbones", "gru,mamba", "--units", "24", "--engines", "numba,torch,reference", "--no-paced"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert set(r["chunk_compute_ms"]) == {"gru-small-24u", "mamba-small-24u"}
    assert r["step"] == "NumbaEngine" and r["engines"] == ["numba", "torch", "reference"] and r["blas"]
    for v in r["chunk_compute_ms"].values():
        assert 0 < v["p50"] <= v["p99"] and v["n"] >= 95 and v["engine"] == "numba"
        assert set(v["engines"]) == {"numba", "torch", "reference"} and v["engines"]["numba"]["p50"] == v["p50"]
        assert v["n_parameters"] > 100_000


def test_split_latency_attributes_the_wait_to_the_push_that_completes_the_chunk():
    lat = _latency_module()
    # pushes (first spike, push time, last spike): a chunk ends at 1.000
    log = np.array([
        [0.9970, 0.9981, 0.9980],
        [0.9990, 1.0001, 0.9995],  # push i: the chunk's last spike (0.9995); nothing yet says the chunk is complete
        [1.0004, 1.0011, 1.0009],  # push j: first spike after the end
    ])
    t_end, received = np.array([1.0]), np.array([1.0015])
    r = lat.split_latency(t_end, received, log)
    np.testing.assert_allclose(r["wait_ms"]["p50"], 1.0, atol=1e-6)  # 1.0011 - 1.0001
    np.testing.assert_allclose(r["node_ms"]["p50"], 0.4, atol=1e-6)  # 1.0015 - 1.0011
    np.testing.assert_allclose(r["before_end_ms"]["p50"], -0.1, atol=1e-6)  # 1.0 - 1.0001: pushed after the end
    np.testing.assert_allclose(r["after_end_ms"]["p50"], 1.5, atol=1e-6)  # 1.0015 - 1.0
    # a push that straddles the end completes the chunk itself: no wait
    log2 = np.array([[0.9970, 0.9981, 0.9980], [0.9990, 1.0011, 1.0006]])
    r2 = lat.split_latency(t_end, received, log2)
    assert r2["wait_ms"]["p50"] == 0.0
    np.testing.assert_allclose(r2["node_ms"]["p50"], 0.4, atol=1e-6)


def test_split_latency_binned_waits_for_the_push_of_the_chunks_last_bin():
    lat = _latency_module()
    t_end = np.array([1000.123456789])
    edge = t_end[0] - 1e-10  # the chunk's last bin ends there: sender (t0 + k ms) and node (t0 + k * 50 ms) round apart
    received = np.array([edge + 0.0010])
    # pushes that carried a spike (start of the first bin with one, push time, end of the last bin)
    spikes = np.array([[edge - 0.004, edge - 0.0029, edge - 0.003]])  # the chunk's last spike: 3 bins before its end
    # every push (first bin's start, push time, last bin's end): the empty bins complete the chunk
    every = np.array([[edge - 0.004 + 0.001 * k, edge - 0.0029 + 0.001 * k, edge - 0.003 + 0.001 * k] for k in range(5)])
    r = lat.split_latency(t_end, received, spikes, every)
    np.testing.assert_allclose(r["wait_ms"]["p50"], 3.0, atol=1e-6)  # to the push of the bin ending at the chunk end
    np.testing.assert_allclose(r["node_ms"]["p50"], 1.0 - 0.1, atol=1e-6)
    np.testing.assert_allclose(r["before_end_ms"]["p50"], 2.9, atol=1e-6)
    np.testing.assert_allclose(r["after_end_ms"]["p50"], 1.0, atol=1e-6)
    np.testing.assert_allclose(r["wait_ms"]["p50"] + r["node_ms"]["p50"], r["before_end_ms"]["p50"] + r["after_end_ms"]["p50"], atol=1e-9)


@pytest.mark.slow
def test_latency_runs_only_the_parts_asked_for():
    """``--no-compute`` skips the compute table; ``--lsl`` takes only known run names."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--json", "--no-compute"]
    out = subprocess.run([*cmd, "--no-lsl"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["chunk_compute_ms"] == {} and not any(k.startswith("lsl_") for k in r)
    bad = subprocess.run([*cmd, "--lsl", "binned,bogus"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--lsl takes a comma list of binned, events, clock" in bad.stderr


def test_lsl_end_to_end_runs_for_both_stream_forms():
    """The benchmark's three processes over real LSL (short): every chunk's prediction arrives and
    each is matched to its pushes. Binned: most chunks' last spike rides in the push that completes
    the chunk (its last bin; 85 % at 1920 spikes/s), so the median wait is zero; events: a chunk
    waits for the push of the first spike after its end."""
    import lsl_helpers  # noqa: F401 - pins LSL discovery to this machine

    lat = _latency_module()
    for form in ("binned", "events"):
        r = lat.bench_lsl(3.0, threads=1, form=form)
        assert r["form"] == form and r["n"] >= 25, r  # 3 s of 50 ms chunks, less start-up (the first half second skipped)
        assert r["p50"] <= r["p99"] and r["wait_ms"]["n"] == r["n"]
        if form == "binned":
            assert r["wait_ms"]["p50"] == 0.0 and r["sender_push_interval_ms"]["n"] >= 2000
        else:
            assert r["wait_ms"]["p50"] > 0.0


BENCH_SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if "\ndef main(" in p.read_text())


def test_every_benchmark_with_a_command_line_is_checked():
    assert {p.stem for p in BENCH_SCRIPTS} >= {"accuracy", "brand_latency", "closed_loop", "latency", "real", "real_report", "soak"}


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help_shows_meaningful_defaults_and_no_path_outside_the_repository(script, capsys, monkeypatch):
    """The benchmarks' --help uses the package CLI's formatter: no "(default: False)" for flags or
    "(default: None)" for unset options, a default shown once, and no path of the machine they were
    written on (the real data default to the recordings bundled with the package)."""
    spec = importlib.util.spec_from_file_location(f"bench_help_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:") and "options:" in text
    for bad in ("(default: False)", "(default: None)", "/work", "shared/data", str(ROOT)):
        assert bad not in text, f"{script.name} --help shows {bad!r}:\n{text}"
    options = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    twice = [o for o in options if len(re.findall(r"\(default\b|(?<!\()\bdefault:", o, re.IGNORECASE)) > 1]
    assert not twice, f"{script.name} --help names a default twice:\n" + "\n".join(twice)


def test_the_accuracy_benchmark_finds_the_bundled_recording_by_default(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_accuracy_lib", ROOT / "benchmarks" / "accuracy_lib.py")
    lib = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, lib)
    spec.loader.exec_module(lib)
    from possm_plugin.data.importers.binned import bundled_files

    found = lib.find_real_data()
    assert found in bundled_files() and found.name == lib.DATA_NAME
    assert lib.find_real_data(str(found.parent)) == found and lib.find_real_data(str(found)) == found
    assert lib.find_real_data(str(tmp_path)) is None  # a folder without it: the real-data section is skipped
