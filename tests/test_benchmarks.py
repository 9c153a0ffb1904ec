"""The latency benchmark's machinery: its JSON (the keys scripts read) and its latency arithmetic."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _latency_module():
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "benchmarks" / "latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_latency_json_has_the_documented_keys_and_every_engine():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--quick", "--json", "--no-lsl", "--sizes", "small",
         "--backbones", "gru,mamba", "--units", "24", "--engines", "numba,numpy,torch,reference", "--no-paced"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert set(r["chunk_compute_ms"]) == {"gru-small-24u", "mamba-small-24u"}
    assert r["step"] == "NumbaStep" and r["engines"] == ["numba", "numpy", "torch", "reference"] and r["blas"]
    for v in r["chunk_compute_ms"].values():
        assert 0 < v["p50"] <= v["p99"] and v["n"] >= 95 and v["engine"] == "numba"
        assert set(v["engines"]) == {"numba", "numpy", "torch", "reference"} and v["engines"]["numba"]["p50"] == v["p50"]
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
