"""The loop in real time over LSL with ``possm-lsl`` as a separate process (discovery pinned to this
machine by conftest's LSLAPICFG)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pylsl")

from conftest import make_tiny_model

from possm_plugin.closedloop.decoders import PossmLoopDecoder
from possm_plugin.closedloop.realtime import LslLoopDecoder, start_node
from possm_plugin.closedloop.runner import run_loop
from possm_plugin.closedloop.task import TaskConfig
from possm_plugin.model.checkpoint import save_checkpoint
from possm_plugin.realtime.demo import _stop
from possm_plugin.sim.motor_stream import MotorSpikeStream


@pytest.mark.slow
def test_realtime_loop_matches_in_process_decoding(tmp_path):
    stream = MotorSpikeStream(10, noise_seed=0)
    model = make_tiny_model(n_units=stream.n_units, session=stream.session_id)
    ckpt = save_checkpoint(model, tmp_path / "tiny", default_session=stream.session_id)
    tag = f"test-{tmp_path.name}"
    node = start_node(ckpt, inlet=f"cl-spikes-{tag}", outlet=f"cl-pred-{tag}")
    pushed = []
    try:
        dec = LslLoopDecoder(stream.unit_ids, session_id=stream.session_id, name=f"cl-spikes-{tag}", outlet=f"cl-pred-{tag}",
                             wait_s=0.04, node=node)
        res = run_loop(dec, stream, n_trials=2, task=TaskConfig(timeout_s=1.0),
                       spike_hook=lambda k, t, u: (pushed.append((t.copy(), u.copy())), (t, u))[1])
    finally:
        _stop(node)
    n = len(res.decoded)
    assert n == 40 and dec.stats["chunks"] == n
    assert dec.stats["fresh"] >= 0.8 * n, dec.stats
    # the same spikes (and the grid's marker spike) decoded in process give the same velocities
    ref = PossmLoopDecoder(model, session=stream.session_id, unit_ids=stream.unit_ids)
    ref.reset(0.0)
    pushed[0] = (np.r_[0.0, pushed[0][0]], np.r_[0, pushed[0][1]])
    offline = np.stack([ref.step(t, u, 0.05 * (k + 1), None).copy() for k, (t, u) in enumerate(pushed)])
    fresh = np.flatnonzero(np.any(res.decoded != 0, axis=1))
    assert len(fresh) >= 0.8 * n
    # the grid is anchored where the loop's is: the first chunks agree to float rounding; later ones drift a
    # little as LSL's clock correction moves the timestamps by microseconds (the recurrent state carries it)
    np.testing.assert_allclose(res.decoded[:3], offline[:3], atol=2e-3)
    err = np.abs(res.decoded[fresh] - offline[fresh]).mean()
    assert err < 0.1 * np.abs(offline[fresh]).mean()


@pytest.mark.slow
def test_cli_realtime_runs_possm_over_lsl(tmp_path, capsys):
    import json

    from possm_plugin.cli.main import main

    rc = main(["--log-level", "WARNING", "closed-loop", "--decoder", "possm", "--trials", "2", "--calibration", "20",
               "--ui-epochs", "1", "--timeout", "2", "--realtime", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trials"] == 2 and "possm" in out["decoders"]
    rt = json.loads((tmp_path / "closed-loop.json").read_text())["details"]["loop"]["0"]["possm"]
    assert rt["chunks"] >= 2 * 0.5 / 0.05 and rt["fresh"] >= 0.8 * rt["chunks"], rt
    assert '"chunks_decoded"' in rt["node_summary"]
