"""Faults, each a bounded test against real processes, a real redis-server and real LSL:

- the LSL decoder (``possm-lsl``) killed with SIGKILL and restarted: consumers of its outlet recover by
  themselves and see the gap; then its source (``possm simulate --lsl``) killed and restarted:
  ``possm-lsl`` keeps running and resumes;
- the Redis server restarted under the generic Redis source -> decoder -> Redis sink loop
  (``possm-lsl --source redis --sink redis``): nothing lost after the restart, the state carries on;
- the BRAND node killed with SIGKILL and restarted (onto a full disk): it resumes after the last input
  entry it decoded and posts what it replayed, skipped and lost; a backlog longer than
  ``resume_max_seconds`` is skipped and counted exactly;
- slow consumers: an LSL consumer that stops pulling, a Redis consumer that never reads, a Redis sink
  whose writes are slow;
- the disk full when writing logs (``/dev/full``): the decoders keep decoding.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time

import lsl_helpers as lh  # noqa: I001 - pins LSL discovery to this machine before anything talks to liblsl
import numpy as np
import pylsl
import pytest
import torch
from conftest import make_tiny_model
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)
from reliability_helpers import (
    ENTRIES_PER_CHUNK,
    Procs,
    console_script,
    crossing_events,
    env,
    f64,
    make_crossings,
    output_values,
    publish_supergraph,
    push_crossings,
    report,
    u64,
    wait_for,
)

from possm_plugin.adapters.brand import BrandNode
from possm_plugin.adapters.redis_stream import RedisOptions
from possm_plugin.model.checkpoint import save_checkpoint
from possm_plugin.model.config import preset
from possm_plugin.model.possm import POSSM
from possm_plugin.realtime.streaming import StreamingDecoder

N_UNITS = 16
SIM_SESSION = "sim-m0-s000"


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


@pytest.fixture(scope="module")
def sim_checkpoint(tmp_path_factory):
    """A tiny random model that knows the units of the simulator's session 0 (seed 0, subject m0)."""
    from possm_plugin.sim import simulate_motor_session

    units = simulate_motor_session(0, seed=0, subject="m0", duration_s=5).unit_ids
    torch.manual_seed(0)
    cfg = preset("small", "gru", dim=32, dim_head=32, ffn_dropout=0.0, backbone_kwargs={"hidden": 48, "layers": 1}, target_scale=20.0)
    model = POSSM(cfg, unit_ids=units, session_ids=[SIM_SESSION], session_units={SIM_SESSION: units}).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "sim_tiny")


# == LSL ====================================================================================================
class Consumer:
    """One inlet on the decoder's outlet, opened once (``recover=True``: liblsl finds the outlet again
    by its source_id after the decoder restarts), pulled into lists."""

    def __init__(self, name: str, timeout: float = 60.0) -> None:
        infos = pylsl.resolve_byprop("name", name, 1, timeout)
        assert infos, f"no outlet {name!r}"
        self.inlet = pylsl.StreamInlet(infos[0], max_buflen=60, recover=True, processing_flags=pylsl.proc_none)
        self.inlet.open_stream(timeout=timeout)
        self.ts: list[float] = []
        self.values: list[np.ndarray] = []

    def pull(self, timeout: float = 0.05) -> None:
        d, t = self.inlet.pull_chunk(timeout=timeout, max_samples=10000, as_numpy=True)
        if len(t):
            self.ts += list(np.asarray(t, np.float64))
            self.values += list(np.asarray(d, np.float64).reshape(len(t), -1))

    def until(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pull()
            if cond():
                return True
        return bool(cond())

    def n_after(self, t: float) -> int:
        return sum(x > t for x in self.ts)


@pytest.mark.slow
def test_lsl_decoder_killed_then_source_killed_both_recover(sim_checkpoint, procs, tmp_path):
    name, sid, out = lh.unique("rel-spikes"), lh.unique("rel-sid"), lh.unique("rel-out")
    sim_cmd = console_script("possm", "possm_plugin.cli.main") + [
        "simulate", "--lsl", "--name", name, "--source-id", sid, "--labels-name", "", "--duration", "300",
        "--segment", "10", "--offset", "0",
    ]
    node_cmd = console_script("possm-lsl", "possm_plugin.cli.lsl_node") + [
        "--inlet", name, "--checkpoint", str(sim_checkpoint), "--outlet", out, "--resolve-timeout", "60",
        "--log-level", "WARNING", "--json-summary", "--source-opt", "lost_after=0.5", "--source-opt", "reconnect_interval=0.2",
    ]
    lsl_env = env(LSLAPICFG=str(lh.LSL_CFG))
    sim1 = procs.start(sim_cmd, env=lsl_env, err=tmp_path / "sim1.txt")
    node1 = procs.start(node_cmd, env=lsl_env, err=tmp_path / "node1.txt")
    cons = Consumer(out)
    assert cons.until(lambda: len(cons.ts) >= 10, 60), (tmp_path / "node1.txt").read_text()

    # 1. the decoder is SIGKILLed and started again: the consumer's inlet recovers by itself
    Procs.end(node1, sig=signal.SIGKILL)
    cons.pull(0.2)
    t_kill = cons.ts[-1]
    node2 = procs.start(node_cmd, env=lsl_env, out=tmp_path / "node2.out", err=tmp_path / "node2.txt")
    assert cons.until(lambda: cons.n_after(t_kill) >= 10, 90), (tmp_path / "node2.txt").read_text()
    after = np.array([t for t in cons.ts if t > t_kill])
    lost_chunks = int(round((after[0] - t_kill) / 0.05)) - 1  # what the consumer can tell it missed
    assert lost_chunks >= 1
    report("lsl decoder SIGKILL + restart", consumer_recovered=True, gap_s=round(after[0] - t_kill, 3), chunks_lost=lost_chunks)

    # 2. the source is SIGKILLed: possm-lsl keeps running; the source comes back: decoding resumes
    Procs.end(sim1, sig=signal.SIGKILL)
    cons.until(lambda: False, 1.5)  # at most lost_after (0.5 s) of idle chunks, then nothing
    n_lost = len(cons.ts)
    cons.until(lambda: False, 1.0)
    assert len(cons.ts) == n_lost and node2.poll() is None  # alive, and quiet while the source is away
    t_gone = cons.ts[-1]
    procs.start(sim_cmd, env=lsl_env, err=tmp_path / "sim2.txt")
    assert cons.until(lambda: cons.n_after(t_gone) >= 10, 60), (tmp_path / "node2.txt").read_text()

    rc = Procs.end(node2, sig=signal.SIGTERM, timeout=20)
    log = (tmp_path / "node2.txt").read_text()
    assert rc == 0, log
    summary = json.loads((tmp_path / "node2.out").read_text().strip().splitlines()[-1])
    assert summary["source_losses"] == 1 and summary["source_returns"] == 1, summary
    assert summary["acquire_errors"] == 0 and summary["publish_errors"] == 0 and "Traceback" not in log
    ts = np.array(cons.ts)
    assert np.all(np.diff(ts) > 0) and np.isfinite(np.array(cons.values)).all()
    gap = float(min(t for t in ts if t > t_gone) - t_gone)
    report("lsl source SIGKILL + restart", node_alive=True, source_losses=summary["source_losses"],
           source_returns=summary["source_returns"], resets=summary["resets"], gap_s=round(gap, 3),
           acquire_errors=summary["acquire_errors"], chunks_decoded=summary["chunks_decoded"])


# == Redis restart under the generic Redis source -> decoder -> Redis sink loop ================================
def test_redis_restart_under_the_generic_redis_source_and_sink(tmp_path, tiny_checkpoint):
    """What ``possm-lsl --source redis --sink redis`` runs (plugin factories + DecoderRunner): the
    server restarts (losing everything) between two bursts; the reader resumes, the sink queues and
    flushes, the tick clock and the recurrent state carry on, so the outputs after the restart equal
    the offline forward of the whole input."""
    from possm_plugin.plugins import manager
    from possm_plugin.realtime.runner import DecoderRunner

    server = RedisServer(tmp_path).start()
    try:
        manager.reset_plugin_manager()
        source_cls, sink_cls = manager.get_source("redis"), manager.get_sink("redis")
        src = source_cls(stream="cr", n_channels=str(N_UNITS), port=str(server.port), backoff_max="0.1", socket_timeout="1")
        sink = sink_cls(stream="pred", port=str(server.port), backoff_max="0.1", socket_timeout="1")
        src.connect(timeout=5)
        dec = StreamingDecoder.from_checkpoint(tiny_checkpoint)
        stop = threading.Event()
        runner = DecoderRunner(src, dec, [sink], stop_event=stop, poll_timeout=0.02, warmup=1)
        th = threading.Thread(target=runner.run, daemon=True)
        th.start()
        n1, n2 = 8, 8
        x = make_crossings((n1 + n2) * ENTRIES_PER_CHUNK, seed=3)
        x[0] = 0  # a first bin without a spike still anchors the chunk grid
        c = server.client()
        assert wait_for(lambda: sink.connected, 10)
        push_crossings(c, "cr", x[: n1 * ENTRIES_PER_CHUNK])
        assert wait_for(lambda: c.xlen("pred") >= n1, 20)
        before = [(i, f) for i, f in c.xrange("pred")]
        c.close()
        server.restart(down_for=0.3)
        c = server.client()
        push_crossings(c, "cr", x[n1 * ENTRIES_PER_CHUNK:], i0=n1 * ENTRIES_PER_CHUNK)
        assert wait_for(lambda: dec.stats.chunks_decoded >= n1 + n2, 20)
        stop.set()
        th.join(15)
        assert not th.is_alive()
        after = [(i, f) for i, f in c.xrange("pred")]  # the sink flushed its queue when it was disconnected
        src.disconnect()
        c.close()
    finally:
        manager.reset_plugin_manager()
        server.stop()
    assert len(before) == n1 and len(after) == n2
    assert src.stats()["reconnects"] >= 1 and runner.acquire_errors == 0 and runner.publish_errors == 0
    ch, tt = crossing_events(x)
    want = dec.decode_offline(ch, tt, t0=0.0, n_chunks=n1 + n2)
    np.testing.assert_allclose(output_values(before + after), want, rtol=1e-5, atol=1e-5)
    assert [u64(f, b"i") for _, f in after] == list(range(n1, n1 + n2))
    report("redis restart, generic source/sink", chunks_before=len(before), chunks_after=len(after),
           reconnects=src.stats()["reconnects"], max_abs_diff_vs_offline=float(np.abs(output_values(before + after) - want).max()))


# == BRAND node: SIGKILL, restart, resume ========================================================================
def _states(c, nickname: str = "possm") -> list[dict]:
    return [f for _, f in c.xrange(f"{nickname}_state")]


@pytest.mark.slow
def test_brand_node_sigkill_and_restart_resumes_and_posts_what_it_lost(tmp_path, tiny_checkpoint, procs):
    """The node is SIGKILLed in the middle of a chunk, input keeps coming, the node starts again (its
    log file on a full disk): it resumes after the input entry that completed its last output, replays
    the unfinished chunk and the backlog, posts that, and its outputs carry on -- counter, chunk grid
    and values (those of a fresh state, which is what a crash costs). The Redis password (given by
    environment) appears in no log line and no stream entry."""
    password = "pw-" + lh.unique("secret")
    server = RedisServer(tmp_path, password=password).start()
    try:
        c = server.client()
        publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                        "output_stream": "possm", "log": "INFO"})
        cmd = console_script("possm-brand", "possm_plugin.adapters.brand") + ["-n", "possm", "-i", "127.0.0.1", "-p", str(server.port)]
        node_env = env(POSSM_REDIS_PASSWORD=password)
        log1 = tmp_path / "node1.txt"
        node1 = procs.start(cmd, env=node_env, err=log1)
        assert wait_for(lambda: any(f[b"status"] == b"running" for f in _states(c)), 90), log1.read_text()
        n_chunks = 20
        x = make_crossings(n_chunks * ENTRIES_PER_CHUNK, seed=21)
        ids = push_crossings(c, "thresh_cross", x[:500])  # 10 chunks
        assert wait_for(lambda: c.xlen("possm") >= 10, 30), log1.read_text()
        ids += push_crossings(c, "thresh_cross", x[500:525], i0=500)  # half a chunk: read, never output
        time.sleep(0.2)
        Procs.end(node1, sig=signal.SIGKILL)
        assert _states(c)[-1][b"status"] == b"running"  # what a crash leaves behind
        ids += push_crossings(c, "thresh_cross", x[525:825], i0=525)  # 6 chunks arrive while it is down

        node2 = procs.start(cmd, env=node_env, out="/dev/full", err="/dev/full")  # the restarted node logs to a full disk
        assert wait_for(lambda: any(b"resume" in f for f in _states(c)), 90)
        resumed = next(f for f in _states(c) if b"resume" in f)
        info = json.loads(resumed[b"resume"])
        assert info == {"resumed": True, "after_id": ids[499], "replayed": 325, "skipped": 0, "trimmed": False, "outputs_before": 10}
        assert b"325 input entries replayed" in resumed[b"message"] and b"recurrent state was lost" in resumed[b"message"]
        ids += push_crossings(c, "thresh_cross", x[825:], i0=825)
        assert wait_for(lambda: c.xlen("possm") >= n_chunks, 30)
        node2.send_signal(signal.SIGINT)
        assert node2.wait(timeout=30) == 0
        out = [(i.decode(), f) for i, f in c.xrange("possm")]
        states = _states(c)
        everything = [v for _, f in c.xrange("possm_state") for v in f.values()] + [v for _, f in out for v in f.values()]
    finally:
        server.stop()
    assert len(out) == n_chunks  # nothing doubled, nothing missing
    assert [u64(f, b"i") for _, f in out] == list(range(n_chunks))
    assert [f[b"id_in"].decode() for _, f in out] == [ids[(k + 1) * ENTRIES_PER_CHUNK - 1] for k in range(n_chunks)]
    np.testing.assert_allclose([f64(f, b"t_end") for _, f in out], 0.05 * np.arange(1, n_chunks + 1), atol=1e-9)
    ref = StreamingDecoder.from_checkpoint(tiny_checkpoint)
    ch, tt = crossing_events(x[:500])
    np.testing.assert_allclose(output_values(out[:10]), ref.decode_offline(ch, tt, t0=0.0, n_chunks=10), rtol=1e-5, atol=1e-5)
    ch, tt = crossing_events(x[500:], first_index=500)  # after the crash: a fresh state from the resume point
    np.testing.assert_allclose(output_values(out[10:]), ref.decode_offline(ch, tt, t0=0.5, n_chunks=10), rtol=1e-5, atol=1e-5)
    assert states[-1][b"status"] == b"done" and json.loads(states[-1][b"stats"])["resume"]["replayed"] == 325
    log = log1.read_text()
    assert "Traceback" not in log and password not in log
    assert not any(password.encode() in v for v in everything if isinstance(v, bytes))
    report("brand SIGKILL + restart (log on a full disk)", **{k: v for k, v in info.items() if k != "after_id"},
           outputs=len(out), max_abs_diff_after_vs_fresh_offline=float(np.abs(output_values(out[10:]) - ref.decode_offline(
               ch, tt, t0=0.5, n_chunks=10)).max()))


class NodeThread:
    """A BrandNode run in a thread; leaving the block without main()'s 'done' is what a crash leaves."""

    def __init__(self, port: int, nickname: str = "possm") -> None:
        self.stop = threading.Event()
        self.node = BrandNode(nickname, RedisOptions(host="127.0.0.1", port=port, backoff_max=0.1), stop=self.stop)
        self.node.connect(5.0)
        self.node.setup(self.node.load_parameters())
        self.error: BaseException | None = None
        self.result: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.node.run(block_ms=20)
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc

    def __enter__(self) -> "NodeThread":
        self.thread.start()
        assert wait_for(lambda: self.node.reader.last_id is not None, 10)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        self.node.close()
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def test_brand_backlog_longer_than_resume_max_seconds_is_skipped_and_counted(redis_server, tiny_checkpoint):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "cr", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                    "output_stream": "out", "resume_max_seconds": 0.2})
    x = make_crossings(2000, seed=5)
    with NodeThread(redis_server.port):
        push_crossings(c, "cr", x[:250])
        assert wait_for(lambda: c.xlen("out") >= 5, 20)
    # "crashed" (no 'done' posted); 1.2 s of input arrives: more than resume_max_seconds (0.2 s = 200 entries)
    push_crossings(c, "cr", x[250:1450], i0=250)
    c.xadd("possm_state", {"code": 0, "status": "initialized"})  # a restart that died loading its model: still a crash
    with NodeThread(redis_server.port) as nt:
        assert wait_for(lambda: nt.node.resume_info is not None, 10)
        info = nt.node.resume_info
        assert info["resumed"] and info["replayed"] == 0 and info["skipped"] == 1200 and info["outputs_before"] == 5
        push_crossings(c, "cr", x[1450:1700], i0=1450)
        assert wait_for(lambda: c.xlen("out") >= 10, 20)
    out = c.xrange("out")
    assert len(out) == 10 and [u64(f, b"i") for _, f in out] == list(range(10))
    # the chunk grid continues across the skipped 1.2 s: entry 1450 starts at 1.45 s
    np.testing.assert_allclose([f64(f, b"t_end") for _, f in out[5:]], 1.45 + 0.05 * np.arange(1, 6), atol=1e-9)
    ch, tt = crossing_events(x[1450:1700], first_index=1450)
    want = StreamingDecoder.from_checkpoint(tiny_checkpoint).decode_offline(ch, tt, t0=1.45, n_chunks=5)
    np.testing.assert_allclose(output_values(out[5:]), want, rtol=1e-5, atol=1e-5)
    # a clean stop ('done') is not a crash: the next start reads new entries only, as BRAND nodes do
    c.xadd("possm_state", {"code": 0, "status": "done"})
    push_crossings(c, "cr", x[1700:1800], i0=1700)
    with NodeThread(redis_server.port) as nt:
        assert nt.node.resume_info is None
        push_crossings(c, "cr", x[1800:1850], i0=1800)
        assert wait_for(lambda: c.xlen("out") >= 11, 20)
    assert c.xlen("out") == 11
    report("brand backlog > resume_max_seconds", skipped=info["skipped"], replayed=info["replayed"], grid_continues=True)


# == slow consumers ==========================================================================================
def test_lsl_consumer_that_stops_pulling_gets_the_newest_samples_and_never_blocks_the_decoder():
    """The outlet never blocks (push_sample), and a consumer that did not pull for a while finds at
    most its own buffer (max_buflen seconds at the nominal rate): the newest samples, the older dropped
    by liblsl on the consumer's side. Memory is bounded by that buffer per consumer."""
    from possm_plugin.adapters.lsl import LSLSink
    from possm_plugin.realtime.io import Prediction

    name = lh.unique("rel-slow")
    sink = LSLSink(name, source_id="sid-" + name)
    sink.connect(output_names=["vx", "vy"], chunk_step=0.05)
    try:
        infos = pylsl.resolve_byprop("name", name, 1, 10)
        inlet = pylsl.StreamInlet(infos[0], max_buflen=1, processing_flags=pylsl.proc_none)  # 1 s = 20 samples
        inlet.open_stream(timeout=10)
        assert wait_for(sink._outlet.have_consumers, 10)
        t0 = pylsl.local_clock()
        n = 2000  # 100 s of predictions, published while the consumer does not pull
        for k in range(n):
            sink.publish([Prediction(values=np.array([k, -k], np.float32), t_start=t0 + k * 0.05, t_end=t0 + (k + 1) * 0.05, chunk_index=k)])
        time.sleep(0.5)
        got, ts = [], []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not got or got[-1][0] != n - 1):
            d, t = inlet.pull_chunk(timeout=0.1, max_samples=10000, as_numpy=True)
            got += d.tolist()
            ts += list(t)
    finally:
        sink.disconnect()
    assert sink.published == n
    assert got and got[-1] == [n - 1, -(n - 1)]  # the newest arrived
    assert len(got) <= 200  # the consumer's buffer (20) plus what was in flight: not 2000
    np.testing.assert_array_equal(np.diff([g[0] for g in got]), 1)  # a contiguous tail, in order
    report("lsl consumer not pulling", published=n, received=len(got), newest_received=True)


def test_brand_output_stream_bounded_when_no_one_reads_it(redis_server, tiny_checkpoint):
    """A consumer that never reads the output stream: with ``output_maxlen`` the stream stays bounded
    (approximate trimming), without it Redis memory grows with every chunk (documented)."""
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "cr", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                    "output_stream": "out", "output_maxlen": 100})
    n_chunks = 400
    x = make_crossings(n_chunks * ENTRIES_PER_CHUNK, seed=8)
    with NodeThread(redis_server.port) as nt:
        for a in range(0, len(x), 5000):
            push_crossings(c, "cr", x[a : a + 5000], i0=a)
        assert wait_for(lambda: nt.node.outputs >= n_chunks, 60)
    assert nt.node.outputs == n_chunks
    assert c.xlen("out") <= 200  # maxlen 100, trimmed in whole macro-nodes of 100 entries
    assert u64(c.xrevrange("out", count=1)[0][1], b"i") == n_chunks - 1  # the newest are kept
    report("brand output never read (output_maxlen=100)", chunks=n_chunks, xlen=c.xlen("out"))


def test_brand_slow_output_writes_delay_but_lose_nothing(redis_server, tiny_checkpoint):
    """Every output write takes 40 ms (a slow link): the node falls behind the input, reads it in
    bounded batches (``count``), and catches up; every chunk is written once, in order, equal to the
    offline forward."""
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "cr", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                    "output_stream": "out"})
    n_chunks = 30
    x = make_crossings(n_chunks * ENTRIES_PER_CHUNK, seed=9)
    with NodeThread(redis_server.port) as nt:
        writer = nt.node.writer
        flush, seen = writer.flush, []

        def slow_flush():
            seen.append(len(writer.pending))
            time.sleep(0.04)
            return flush()

        writer.flush = slow_flush
        push_crossings(c, "cr", x)
        assert wait_for(lambda: c.xlen("out") >= n_chunks, 60)
    out = c.xrange("out")
    assert len(out) == n_chunks and [u64(f, b"i") for _, f in out] == list(range(n_chunks))
    # one write per read, with the chunks that read completed: nothing piles up in the writer beyond what
    # one bounded read (count entries) can complete
    assert nt.node.reader.count == 1000  # reads are bounded however far behind the node is
    assert max(seen) <= nt.node.reader.count // ENTRIES_PER_CHUNK and not nt.node.writer.pending
    ch, tt = crossing_events(x)
    want = StreamingDecoder.from_checkpoint(tiny_checkpoint).decode_offline(ch, tt, t0=0.0, n_chunks=n_chunks)
    np.testing.assert_allclose(output_values(out), want, rtol=1e-5, atol=1e-5)
    report("brand slow output writes (40 ms each)", chunks=n_chunks, written=len(out), max_pending=max(seen))


# == disk full ===================================================================================================
@pytest.fixture
def logs_to_full_disk():
    """The package logger writes to /dev/full (every write fails with ENOSPC), at DEBUG."""
    pkg = logging.getLogger("possm_plugin")
    stream = open("/dev/full", "w")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(stream)
    old = pkg.level
    pkg.addHandler(handler)
    pkg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old)
        try:
            stream.close()
        except OSError:  # the final flush fails too: the disk is full
            pass


def test_decoder_keeps_decoding_when_its_log_disk_is_full(logs_to_full_disk, capsys):
    """Bad input makes the decoder log warnings; every log write fails (ENOSPC); decoding goes on."""
    dec = StreamingDecoder(make_tiny_model("gru", n_units=N_UNITS))
    rng = np.random.default_rng(0)
    preds = []
    for k in range(40):
        t = np.sort(rng.uniform(k * 0.05, (k + 1) * 0.05, 16))
        dec.push(rng.integers(0, N_UNITS, 16), t)
        dec.push([np.nan, -1], [np.nan, t[0]])  # logged (rate-limited) drops
        dec._warned.clear()  # log every time, not every 5 s
        preds += dec.advance((k + 1) * 0.05)
    assert len(preds) >= 39 and all(np.isfinite(p.values).all() for p in preds)
    assert dec.stats.spikes_invalid == 40 and dec.stats.spikes_unknown == 40
    err = capsys.readouterr().err
    assert "No space left on device" in err  # logging reported its own failure, and went on
    report("decoder log on a full disk", predictions=len(preds), failed_log_writes=err.count("--- Logging error ---"))


def test_brand_node_keeps_decoding_when_its_log_disk_is_full(redis_server, tiny_checkpoint, logs_to_full_disk):
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "cr", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                    "output_stream": "out"})
    x = make_crossings(10 * ENTRIES_PER_CHUNK, seed=4)
    with NodeThread(redis_server.port) as nt:
        ids = push_crossings(c, "cr", x)
        for _k in range(0, 10, 2):  # malformed entries: logged warnings, all failing to write
            nt.node.parser._warn._last.clear()
            c.xadd("cr", {"crossings": b"\x01\x02\x03"})
        # the malformed entries follow the 500 good ones: wait until the node has read them as well
        assert wait_for(lambda: c.xlen("out") >= 10 and nt.node.parser.malformed["wrong_length"] >= 5, 20)
    assert c.xlen("out") == 10 and nt.node.parser.malformed["wrong_length"] == 5 and len(ids) == 500
    report("brand node log on a full disk", outputs=c.xlen("out"), malformed_counted=5)
