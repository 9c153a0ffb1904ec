"""The BRAND example as a user runs it: the graph file's POSSM node, started with the graph's own
parameters against a real redis-server, and ``run_without_brand.py`` on an empty and on a used Redis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from redis_helpers import redis_server  # noqa: F401  (fixture)
from reliability_helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "brand"


def graph_node(nickname: str = "possm") -> dict:
    graph = yaml.safe_load((EXAMPLE / "possm_graph.yaml").read_text())
    return next(n for n in graph["nodes"] if n["nickname"] == nickname)


def node_command() -> list[str]:
    exe = shutil.which("possm-brand")
    return [exe] if exe else [sys.executable, "-m", "possm_plugin.adapters.brand"]


def env() -> dict:
    """This tree first on the path (for the node and the example script alike), one thread."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))


def test_example_graph_runs_as_written_with_the_bundled_checkpoint(redis_server, tmp_path):  # noqa: F811
    from possm_plugin.model.checkpoint import read_checkpoint_config

    node = graph_node()
    params = node["parameters"]
    doc = read_checkpoint_config(params["checkpoint"])  # ~: the bundled checkpoint
    assert params["n_channels"] == len(doc["session_units"][doc["default_session"]])
    c = redis_server.client()
    c.xadd("supergraph_stream", {"data": json.dumps({"graph_name": "possm_sim", "nodes": {node["nickname"]: node}})})
    err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115  (the node writes to it until the end)
    proc = subprocess.Popen([*node_command(), "-n", node["nickname"], "-i", "127.0.0.1", "-p", str(redis_server.port)],
                            stdout=subprocess.DEVNULL, stderr=err, env=env())
    try:
        assert wait_for(lambda: any(f[b"status"] in (b"running", b"error") for _, f in c.xrange("possm_state")), 60.0), \
            (tmp_path / "stderr.txt").read_text()
        assert c.xrevrange("possm_state", count=1)[0][1][b"status"] == b"running"
        rng = np.random.default_rng(0)
        dtype = np.dtype(params["input_dtype"])
        p = c.pipeline(transaction=False)
        for row in (rng.random((150, params["n_channels"])) < 0.02).astype(dtype):  # 150 ms: 3 chunks
            p.xadd(params["input_stream"], {params["input_field"]: row.tobytes()})
        p.execute()
        assert wait_for(lambda: c.xlen(params["output_stream"]) >= 3, 30.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    out = [f for _, f in c.xrange(params["output_stream"])]
    assert len(out) == 3
    for f in out:
        values = np.frombuffer(f[params["output_field"].encode()], params["output_dtype"])
        assert values.shape == (len(doc["model"]["output_names"]),) and np.isfinite(values).all()
    assert json.loads(c.xrevrange("possm_state", count=1)[0][1][b"stats"])["outputs"] == 3


def run_example(port: int, save: Path, seconds: float = 3.0) -> str:
    res = subprocess.run([sys.executable, str(EXAMPLE / "run_without_brand.py"), "--port", str(port), "--seconds", str(seconds),
                          "--save", str(save)], check=False, capture_output=True, text=True, timeout=180, env=env())
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.slow
def test_run_without_brand_gives_the_same_predictions_on_a_used_redis(redis_server, tmp_path):  # noqa: F811
    """The second run finds the first run's streams (state, outputs, input) in Redis; it must read only
    its own entries and the node must not replay the earlier input: same predictions, same count."""
    out1 = run_example(redis_server.port, tmp_path / "first.npz")
    c = redis_server.client()
    assert c.xlen("possm") == 60 and c.xlen("threshold_values") == 3000
    out2 = run_example(redis_server.port, tmp_path / "second.npz")
    first, second = np.load(tmp_path / "first.npz"), np.load(tmp_path / "second.npz")
    assert first["pred"].shape == (60, 2) and second["pred"].shape == (60, 2)  # one per 50 ms chunk of this run
    np.testing.assert_allclose(second["pred"], first["pred"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(second["t_end"], first["t_end"])
    assert c.xlen("possm") == 120  # the earlier run's entries are left where they were
    line = [s for s in (out1, out2) for s in s.splitlines() if s.startswith("R2 ")]
    assert len(line) == 2 and line[0] == line[1], (out1, out2)
