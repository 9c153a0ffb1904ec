"""The BRAND node against a real redis-server: crossings in, one prediction per chunk out, equal to the
offline forward; Redis restarts; malformed entries; parameter errors in the state stream; SIGINT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from redis_helpers import redis_server  # noqa: F401  (fixture)
from reliability_helpers import crossing_events, wait_for

from possm_plugin.adapters.brand import BrandNode, NodeParameters, main, read_node_parameters
from possm_plugin.adapters.redis_stream import RedisOptions
from possm_plugin.errors import ConfigError
from possm_plugin.realtime.streaming import StreamingDecoder

N_UNITS = 16
ENTRIES_PER_CHUNK = 50  # 50 ms chunks of 1 ms crossings


def publish_supergraph(client, nickname: str, parameters: dict) -> None:
    graph = {
        "graph_name": "possm_test",
        "nodes": {nickname: {"name": "possm", "nickname": nickname, "module": "../brand-modules/possm", "parameters": parameters}},
    }
    client.xadd("supergraph_stream", {"data": json.dumps(graph)})


def make_crossings(n_entries: int, n_units: int = N_UNITS, seed: int = 0) -> np.ndarray:
    """(T, U) int16 crossings: mostly 0/1 at about 30 Hz, a few 2s."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n_entries, n_units)) < 0.03).astype(np.int16)
    x[rng.random((n_entries, n_units)) < 0.002] = 2
    return x


def push_crossings(client, stream: str, x: np.ndarray, *, i0: int = 0, extra: dict | None = None) -> list[str]:
    ids = []
    p = client.pipeline(transaction=False)
    for n, row in enumerate(x):
        entry = {
            "crossings": row.astype(np.int16).tobytes(),
            "ts": np.uint64(time.monotonic_ns()).tobytes(),
            "sync": json.dumps({"nsp_idx_1": i0 + n}),
            "i": np.uint64(i0 + n).tobytes(),
        }
        if extra and n in extra:
            entry = extra[n](entry)
        p.xadd(stream, entry)
    ids = [i.decode() for i in p.execute()]
    return ids


def outputs(client, stream: str = "possm") -> list[tuple[str, dict]]:
    return [(i.decode(), f) for i, f in client.xrange(stream)]


class NodeThread:
    """A BrandNode run in a thread (stopped and joined at the end)."""

    def __init__(self, server, nickname: str = "possm") -> None:
        self.stop = threading.Event()
        self.node = BrandNode(nickname, RedisOptions(host="127.0.0.1", port=server.port, backoff_max=0.2), stop=self.stop)
        self.node.connect(5.0)
        self.node.setup(self.node.load_parameters())
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.node.run(block_ms=20)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def __enter__(self) -> "NodeThread":
        self.thread.start()
        assert wait_for(lambda: self.node.reader.last_id is not None, 5.0)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.node.close()
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def offline(checkpoint, ch, tt, n_chunks) -> np.ndarray:
    dec = StreamingDecoder.from_checkpoint(checkpoint)
    return dec.decode_offline(ch, tt, t0=0.0, n_chunks=n_chunks)


def values(flds, field: bytes = b"samples") -> np.ndarray:
    return np.frombuffer(flds[field], np.float32)


# -- parameters ------------------------------------------------------------------------------------
def test_parameters_reject_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="unknown parameter.*'n_chanels'"):
        NodeParameters.from_dict({"n_chanels": 96})
    with pytest.raises(ConfigError, match="n_channels='many'"):
        NodeParameters.from_dict({"n_channels": "many"})
    with pytest.raises(ConfigError, match="bin_size_ms"):
        NodeParameters.from_dict({"input_kind": "binned"})
    with pytest.raises(ConfigError, match="label_stream"):
        NodeParameters.from_dict({"calibrate_seconds": 30})
    p = NodeParameters.from_dict({"n_channels": 96, "unit_ids": "a,b", "session": None, "input_kind": "binned", "bin_size_ms": 20})
    assert p.n_channels == 96 and p.unit_ids == ["a", "b"] and p.session is None and p.bin_size_ms == 20.0


def test_read_node_parameters_from_supergraph(redis_server):
    c = redis_server.client()
    with pytest.raises(ConfigError, match="no supergraph"):
        read_node_parameters(c, "possm")
    publish_supergraph(c, "other", {})
    publish_supergraph(c, "possm", {"input_stream": "old"})
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross_1", "n_channels": 16})
    assert read_node_parameters(c, "possm") == {"input_stream": "thresh_cross_1", "n_channels": 16}  # the latest entry
    with pytest.raises(ConfigError, match="'nobody' is not in the supergraph"):
        read_node_parameters(c, "nobody")


# -- decoding --------------------------------------------------------------------------------------
def test_crossings_in_predictions_out_equal_offline(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                    "output_stream": "possm"})
    n_chunks = 20
    x = make_crossings(n_chunks * ENTRIES_PER_CHUNK)
    c.xadd("thresh_cross", {"crossings": np.ones(N_UNITS, np.int16).tobytes()})  # before the node starts: not read
    with NodeThread(redis_server) as nt:
        ids = push_crossings(c, "thresh_cross", x)
        assert wait_for(lambda: c.xlen("possm") >= n_chunks)
        time.sleep(0.1)
        out = outputs(c)
    assert len(out) == n_chunks  # exactly one entry per chunk
    ch, tt = crossing_events(x)
    want = offline(tiny_checkpoint, ch, tt, n_chunks)
    got = np.stack([values(f) for _, f in out])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for k, (_, f) in enumerate(out):
        last = (k + 1) * ENTRIES_PER_CHUNK - 1  # the entry that completed chunk k
        assert f[b"id_in"].decode() == ids[last]
        assert np.frombuffer(f[b"i_in"], np.uint64)[0] == last
        assert json.loads(f[b"sync"]) == {"nsp_idx_1": last}
        assert np.frombuffer(f[b"i"], np.uint64)[0] == k
        assert np.frombuffer(f[b"ts"], np.uint64)[0] >= np.frombuffer(f[b"ts_in"], np.uint64)[0]
        assert np.frombuffer(f[b"t_end"], np.float64)[0] == pytest.approx((k + 1) * 0.05)
    s = nt.result
    assert s["outputs"] == n_chunks and s["input"]["malformed_total"] == 0
    states = [f[b"status"].decode() for _, f in c.xrange("possm_state")]
    assert states[:2] == ["initialized", "running"]


def test_binned_input(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "binned_spikes", "input_kind": "binned", "input_dtype": "int8",
                                    "bin_size_ms": 10, "checkpoint": str(tiny_checkpoint)})
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.4, size=(30, N_UNITS)).astype(np.int8)  # 30 bins of 10 ms = 6 chunks
    with NodeThread(redis_server):
        for row in counts:
            c.xadd("binned_spikes", {"samples": row.tobytes()})
        assert wait_for(lambda: c.xlen("possm") >= 6)
        time.sleep(0.1)
        out = outputs(c)
    assert len(out) == 6
    ch, tt = [], []
    for b, row in enumerate(counts):
        for u in np.flatnonzero(row):
            for k in range(row[u]):
                ch.append(u)
                tt.append(b * 0.01 + (k + 0.5) / row[u] * 0.01)
    want = offline(tiny_checkpoint, np.array(ch), np.array(tt), 6)
    np.testing.assert_allclose(np.stack([values(f) for _, f in out]), want, rtol=1e-5, atol=1e-5)


def test_backlog_with_a_long_silence_is_decoded_like_live(redis_server, tiny_checkpoint):
    """3 s of 10 ms bins already in the stream (``start: 0``), read in one XREAD, spike-free from 0.5 s to
    2.5 s: every chunk is decoded (no gap, no reset), equal to the offline forward."""
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "binned_spikes", "input_kind": "binned", "input_dtype": "int8",
                                    "bin_size_ms": 10, "checkpoint": str(tiny_checkpoint), "start": "0"})
    rng = np.random.default_rng(4)
    counts = rng.poisson(0.4, size=(300, N_UNITS)).astype(np.int8)
    counts[50:250] = 0
    p = c.pipeline(transaction=False)
    for row in counts:
        p.xadd("binned_spikes", {"samples": row.tobytes()})
    p.execute()
    with NodeThread(redis_server) as nt:
        assert wait_for(lambda: c.xlen("possm") >= 60)
        time.sleep(0.1)
        out = outputs(c)
    assert len(out) == 60 and nt.result["decoder"]["chunks_skipped"] == 0 and nt.result["decoder"]["resets"] == 0
    b, u = np.nonzero(counts)
    k = counts[b, u].astype(int)
    ch = np.repeat(u, k)
    tt = np.concatenate([(bi + (np.arange(ki) + 0.5) / ki) * 0.01 for bi, ki in zip(b, k)])
    np.testing.assert_allclose(np.stack([values(f) for _, f in out]), offline(tiny_checkpoint, ch, tt, 60), rtol=1e-5, atol=1e-5)


def test_malformed_entries_counted_and_skipped(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint)})
    n_chunks = 4
    x = make_crossings(n_chunks * ENTRIES_PER_CHUNK, seed=5)
    bad = {
        10: lambda e: {k: v for k, v in e.items() if k != "crossings"},  # missing field
        60: lambda e: {**e, "crossings": np.ones(N_UNITS - 3, np.int16).tobytes()},  # wrong length
        61: lambda e: {**e, "crossings": np.ones(N_UNITS, np.float32).tobytes()},  # wrong dtype
        120: lambda e: {**e, "crossings": np.full(N_UNITS, -1, np.int16).tobytes()},  # negative counts
    }
    with NodeThread(redis_server) as nt:
        push_crossings(c, "thresh_cross", x, extra=bad)
        assert wait_for(lambda: c.xlen("possm") >= n_chunks)
        time.sleep(0.1)
        out = outputs(c)
    assert len(out) == n_chunks  # malformed entries are empty bins: the grid stays aligned
    assert nt.result["input"]["malformed"] == {"missing_field": 1, "wrong_length": 1, "wrong_dtype": 1, "bad_values": 1}
    good = x.copy()
    good[list(bad)] = 0
    ch, tt = crossing_events(good)
    np.testing.assert_allclose(np.stack([values(f) for _, f in out]), offline(tiny_checkpoint, ch, tt, n_chunks), rtol=1e-5, atol=1e-5)


def test_redis_restart_mid_stream(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint)})
    n1, n2 = 10, 10  # chunks before and after the restart
    x = make_crossings((n1 + n2) * ENTRIES_PER_CHUNK, seed=7)
    with NodeThread(redis_server) as nt:
        push_crossings(c, "thresh_cross", x[: n1 * ENTRIES_PER_CHUNK])
        assert wait_for(lambda: c.xlen("possm") >= n1)
        before = outputs(c)
        c.close()
        redis_server.restart(down_for=0.3)  # no persistence: every stream is gone
        c = redis_server.client()
        push_crossings(c, "thresh_cross", x[n1 * ENTRIES_PER_CHUNK:], i0=n1 * ENTRIES_PER_CHUNK)
        assert wait_for(lambda: c.xlen("possm") >= n2)
        time.sleep(0.1)
        after = outputs(c)
    assert len(before) == n1 and len(after) == n2  # nothing after the restart is lost, nothing doubled
    assert nt.node.conn.reconnects >= 1
    ch, tt = crossing_events(x)
    want = offline(tiny_checkpoint, ch, tt, n1 + n2)  # the tick clock and the recurrent state carry on
    got = np.stack([values(f) for _, f in before + after])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [np.frombuffer(f[b"i"], np.uint64)[0] for _, f in after] == list(range(n1, n1 + n2))
    state = c.xrange("possm_state")  # the restarted server lost the old state entries: the node posted again
    assert state and state[-1][1][b"status"] == b"running" and state[-1][1][b"message"] == b"reconnected to Redis"


def test_n_channels_mismatch_reported_in_state_stream(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": 96, "checkpoint": str(tiny_checkpoint)})
    c.xadd("thresh_cross", {"crossings": np.zeros(96, np.int16).tobytes()})
    rc = main(["-n", "possm", "-i", "127.0.0.1", "-p", str(redis_server.port)])
    assert rc == 1
    states = [f for _, f in c.xrange("possm_state")]
    assert [s[b"status"] for s in states] == [b"initialized", b"error"]
    assert states[-1][b"code"] == b"1"
    assert b"n_channels=96" in states[-1][b"message"] and b"16 units" in states[-1][b"message"]
    assert c.xlen("possm") == 0


def test_unknown_session_without_calibration_is_an_error(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "x", "session": "nope", "checkpoint": str(tiny_checkpoint)})
    assert main(["-n", "possm", "-p", str(redis_server.port)]) == 1
    last = c.xrevrange("possm_state", count=1)[0][1]
    assert b"'nope' is not in the checkpoint" in last[b"message"] and b"calibrate_seconds" in last[b"message"]


def test_no_redis_is_a_clear_error(capsys):
    from redis_helpers import free_port

    assert main(["-n", "possm", "-p", str(free_port()), "--connect-timeout", "0.3"]) == 1
    assert "cannot reach Redis" in capsys.readouterr().err


# -- the console script, stopped by SIGINT ----------------------------------------------------------
def test_console_script_stops_cleanly_on_sigint(redis_server, tiny_checkpoint, tmp_path):
    exe = shutil.which("possm-brand")
    cmd = [exe] if exe else [sys.executable, "-m", "possm_plugin.adapters.brand"]
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint), "log": "INFO"})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    err = open(tmp_path / "stderr.txt", "wb")
    proc = subprocess.Popen([*cmd, "-n", "possm", "-i", "127.0.0.1", "-p", str(redis_server.port)], stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        assert wait_for(lambda: any(f[b"status"] == b"running" for _, f in c.xrange("possm_state")), 60.0), (tmp_path / "stderr.txt").read_text()
        x = make_crossings(3 * ENTRIES_PER_CHUNK, seed=11)
        push_crossings(c, "thresh_cross", x)
        assert wait_for(lambda: c.xlen("possm") >= 3)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    log = (tmp_path / "stderr.txt").read_text()
    assert rc == 0, log
    assert "Traceback" not in log
    last = c.xrevrange("possm_state", count=1)[0][1]
    assert last[b"status"] == b"done" and json.loads(last[b"stats"])["outputs"] == 3
    assert c.xlen("possm") == 3


def test_example_graph_parameters_are_valid():
    from pathlib import Path

    import yaml

    graph = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "brand" / "possm_graph.yaml").read_text())
    node = next(n for n in graph["nodes"] if n["nickname"] == "possm")
    p = NodeParameters.from_dict(node["parameters"])
    assert p.input_stream == "threshold_values" and p.input_dtype == "int8" and p.n_channels == 102
    assert any(n["parameters"].get("input_stream") == p.output_stream for n in graph["nodes"])  # someone reads POSSM


def test_online_calibration_of_an_unknown_session(redis_server, tiny_checkpoint, tmp_path):
    """An unknown session: collect crossings + velocity labels, unit identification in the background,
    then decode; the calibrated checkpoint is saved."""
    c = redis_server.client()
    publish_supergraph(c, "possm", {
        "input_stream": "thresh_cross", "n_channels": 12, "session": "newsess", "checkpoint": str(tiny_checkpoint),
        "calibrate_seconds": 12, "label_stream": "cursor_vel", "calibrate_epochs": 2,
        "calibrated_checkpoint": str(tmp_path / "calibrated"),
    })
    seconds = 13
    rng = np.random.default_rng(8)
    t_ms = np.arange(seconds * 1000)
    vel = np.stack([np.sin(2 * np.pi * t_ms / 2000), np.cos(2 * np.pi * t_ms / 3000)], axis=1) * 10
    rates = 0.01 + 0.02 * (rng.random((1, 12)) * (vel[:, :1] > 0) + rng.random((1, 12)) * (vel[:, 1:] > 0))
    x = (rng.random(rates.shape) < rates).astype(np.int16)
    t0 = 1_000_000_000_000  # the producers' monotonic_ns clock
    with NodeThread(redis_server) as nt:
        assert wait_for(lambda: nt.node.calibration is not None and nt.node.calibration.label_reader.last_id is not None, 5.0)
        p = c.pipeline(transaction=False)
        for k in range(0, len(t_ms), 10):  # 100 Hz velocity, stamped on the same clock as the crossings
            p.xadd("cursor_vel", {"samples": vel[k].astype(np.float32).tobytes(), "ts": np.uint64(t0 + k * 1_000_000).tobytes()})
        p.execute()
        p = c.pipeline(transaction=False)
        for n, row in enumerate(x):
            p.xadd("thresh_cross", {"crossings": row.tobytes(), "ts": np.uint64(t0 + (n + 1) * 1_000_000).tobytes()})
        p.execute()
        assert wait_for(lambda: nt.node.decoder is not None, 60.0)
        push_crossings(c, "thresh_cross", make_crossings(2 * ENTRIES_PER_CHUNK, n_units=12, seed=9))
        assert wait_for(lambda: c.xlen("possm") >= 2)
    assert c.xlen("possm") == 2  # nothing was decoded while calibrating
    states = [f[b"status"] for _, f in c.xrange("possm_state")]
    assert states[:2] == [b"initialized", b"calibrating"] and states[-1] == b"running"
    model = nt.node.decoder.model
    assert "newsess" in model.session_vocab and "newsess/ch011" in model.unit_vocab
    assert nt.result["calibration"]["new_units"] == 12
    from possm_plugin.model.checkpoint import read_checkpoint_config

    assert read_checkpoint_config(tmp_path / "calibrated.yaml")["default_session"] == "newsess"


def test_calibration_parameters_checked_before_reading(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "x", "session": "new", "checkpoint": str(tiny_checkpoint),
                                    "calibrate_seconds": 5, "label_stream": "vel"})
    assert main(["-n", "possm", "-p", str(redis_server.port)]) == 1
    assert b"too short" in c.xrevrange("possm_state", count=1)[0][1][b"message"]
    c.delete("supergraph_stream")
    publish_supergraph(c, "possm", {"input_stream": "x", "session": "new", "checkpoint": str(tiny_checkpoint),
                                    "calibrate_seconds": 30, "label_stream": "vel"})
    assert main(["-n", "possm", "-p", str(redis_server.port)]) == 1
    assert b"needs n_channels" in c.xrevrange("possm_state", count=1)[0][1][b"message"]
