"""The README's first command: ``possm demo`` streams, decodes live and reports (here for 4 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import lsl_helpers  # noqa: F401  # pins LSL discovery to this machine through LSLAPICFG


def test_demo_streams_decodes_and_reports(tmp_path):
    tag = uuid.uuid4().hex[:8]
    out = subprocess.run(
        [sys.executable, "-m", "possm_plugin.cli.main", "demo", "--duration", "4", "--out", str(tmp_path), "--json",
         "--name", f"demo-spikes-{tag}", "--labels-name", f"demo-vel-{tag}", "--outlet", f"demo-possm-{tag}"],
        capture_output=True, text=True, timeout=240, env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r == json.loads((tmp_path / "demo.json").read_text())
    assert r["predictions_received"] >= 60  # 20 per second
    assert r["r2"]["mean"] > 0.5, r["r2"]  # the bundled checkpoint on its own simulated session: about 0.8
    s = r["node_summary"]
    assert s["spikes_dropped"] == 0 and s["chunks_decoded"] >= r["predictions_received"] and s["spikes_decoded"] > 1000
    for key in ("compute_ms", "chunk_end_to_publish_ms", "end_to_end_ms"):
        assert r[key]["n"] >= 50 and 0 < r[key]["p50"] <= r[key]["p99"], (key, r[key])
    assert (tmp_path / "demo.png").stat().st_size > 10_000
