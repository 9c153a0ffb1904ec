"""Real LSL, end to end: the simulator and the decoder node run in their own processes, discovery is
pinned to this machine (tests/lsl_helpers.py), and every test uses its own stream names."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time

import lsl_helpers as lh  # noqa: I001 - sets LSLAPICFG before anything talks to liblsl
import numpy as np
import pylsl
import pytest
import torch

from possm_plugin.adapters.lsl import LSLSink, LSLSource
from possm_plugin.cli import lsl_node
from possm_plugin.errors import ConfigError
from possm_plugin.model.checkpoint import load_checkpoint, save_checkpoint
from possm_plugin.model.config import preset
from possm_plugin.model.possm import POSSM
from possm_plugin.realtime.io import Prediction
from possm_plugin.realtime.runner import DecoderRunner
from possm_plugin.realtime.streaming import StreamingDecoder
from possm_plugin.sim import simulate_motor_session

SESSION = "sim-m0-s000"


@pytest.fixture(scope="module")
def sim_checkpoint(tmp_path_factory):
    """A tiny random model that knows the units of the simulator's session 0 (seed 0, subject m0)."""
    units = simulate_motor_session(0, seed=0, subject="m0", duration_s=5).unit_ids
    torch.manual_seed(0)
    cfg = preset("small", "gru", dim=32, dim_head=32, ffn_dropout=0.0, backbone_kwargs={"hidden": 48, "layers": 1}, target_scale=20.0)
    model = POSSM(cfg, unit_ids=units, session_ids=[SESSION], session_units={SESSION: units}).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "sim_tiny")


@pytest.fixture
def procs():
    """Processes a test starts; all are ended at teardown."""
    started = []
    yield started
    for p in started:
        lh.stop(p, kill=True)


def _node_args(name, ck, out, *extra):
    return ["-m", "possm_plugin.cli.lsl_node", "--inlet", name, "--checkpoint", str(ck), "--outlet", out,
            "--resolve-timeout", "30", "--log-level", "WARNING", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["events", "binned"])
def test_node_publishes_one_sample_per_chunk_equal_to_offline_forward(form, sim_checkpoint, procs):
    name, out = lh.unique(f"spk-{form}"), lh.unique("possm")
    procs.append(lh.start_sim(name, form=form, duration=40))
    rec = lh.Recorder(spikes=lh.open_inlet(name))  # subscribed before the node: sees every spike it sees
    # clocksync=false: the node keeps the sender's timestamps, exactly like this recorder (proc_none)
    extra = ["--telemetry", "--json-summary", "--source-opt", "clocksync=false", "--source-opt", "idle_delay=0.5"]
    if form == "events":
        extra += ["--duration", "3"]
    node = lh.start(_node_args(name, sim_checkpoint, out, *extra))
    procs.append(node)
    try:
        rec.add("pred", lh.open_inlet(out, timeout=60))
        rec.add("tele", lh.open_inlet(out + "-telemetry"))
    except AssertionError as exc:
        stdout, stderr = lh.stop(node)
        raise AssertionError(f"{exc}; the node exited with {node.returncode}: {stdout[-500:]} {stderr[-3000:]}") from None
    if form == "events":  # stops by itself after --duration
        rec.until(lambda: node.poll() is not None, limit=60)
    else:  # stopped by SIGTERM once this process has 30 predictions and their telemetry
        rec.until(lambda: min(sum(len(t) for t in rec.ts[k]) for k in ("pred", "tele")) >= 30, limit=60)
        rec.pull(0.1)
    stdout, stderr = lh.stop(node)
    assert node.returncode == 0, stderr
    rec.pull(0.3)  # the spikes up to now (the simulator still runs): they cover every published chunk
    summary = json.loads(stdout.strip().splitlines()[-1])

    p_ts, p_val = rec.get("pred")
    t_ts, tele = rec.get("tele")
    assert len(p_ts) >= 20 and summary["chunks_decoded"] >= len(p_ts), (len(p_ts), summary)
    assert summary["spikes_late"] == 0 and summary["spikes_unknown"] == 0 and summary["spikes_decoded"] > 0, summary
    assert summary["resets"] == 0 and summary["acquire_errors"] == 0, summary
    # one sample per chunk, stamped with its end: the chunk indices (telemetry) of the predictions
    # received are consecutive and every stamp is t0 + width + k * step
    common, ip, it = np.intersect1d(p_ts, t_ts, return_indices=True)
    assert len(common) >= 20, (len(p_ts), len(t_ts), summary)
    p_ts, p_val = p_ts[ip[0]:], p_val[ip[0]:]
    n = len(p_ts)
    width = step = 0.05
    k0 = int(round(tele[it[0], 3]))
    k = k0 + np.arange(n)
    t0 = float(p_ts[0] - width - k0 * step)
    np.testing.assert_allclose(p_ts, t0 + width + k * step, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.rint(tele[it, 3]), k[ip - ip[0]])
    assert np.all(tele[it, 0] > 0) and np.all(tele[it, 1] > 0)  # compute_ms, publish_ms

    s_ts, s_data = rec.get("spikes")
    if form == "events":
        ch, times = s_data[:, 0].astype(np.int64), s_ts
        # the node anchors its grid on the first spike it decoded: t0 is that spike's time exactly, which
        # t0 rebuilt from the stamps above misses by float rounding (~1e-12) and would put it outside chunk 0
        first = int(np.argmin(np.abs(times - t0)))
        assert abs(times[first] - t0) < 1e-6, (times[first], t0)
        t0 = float(times[first])
    else:
        ch, times = lh.binned_to_events(s_ts, s_data, rate=100.0)
        assert abs((t0 - s_ts[0]) * 100.0 - round((t0 - s_ts[0]) * 100.0)) < 1e-6  # grid anchored on a bin edge
    assert s_ts[-1] >= p_ts[-1]  # the recording covers every decoded chunk
    dec = StreamingDecoder.from_checkpoint(sim_checkpoint)
    offline = dec.decode_offline(ch, times, t0=t0, n_chunks=int(k[-1]) + 1)
    np.testing.assert_allclose(p_val, offline[k], rtol=0, atol=1e-4)
    assert np.abs(offline[k]).max() > 1e-3  # a real comparison, not of zeros


@pytest.mark.slow
def test_stream_without_labels_needs_session_and_maps_channels_in_order(sim_checkpoint, procs, capsys):
    name = lh.unique("nolabels")
    procs.append(lh.start_sim(name, duration=40, extra=["--no-labels"]))
    parser = lsl_node.build_parser()
    args = parser.parse_args(["--inlet", name, "--checkpoint", str(sim_checkpoint), "--resolve-timeout", "30", "--outlet", lh.unique("o")])
    with pytest.raises(ConfigError, match=r"names no units \(no channel labels\); pass --session ID"):
        lsl_node.run(args)
    args = parser.parse_args(["--inlet", name, "--checkpoint", str(sim_checkpoint), "--resolve-timeout", "30",
                              "--outlet", lh.unique("o"), "--session", SESSION, "--duration", "1.5", "--json-summary"])
    assert lsl_node.run(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["session"] == SESSION
    assert summary["chunks_decoded"] >= 20 and summary["spikes_decoded"] > 100
    assert summary["spikes_unknown"] == 0


def test_binned_stream_without_labels_reports_unknown_units(sim_checkpoint, procs):
    name = lh.unique("binnolab")
    procs.append(lh.start_sim(name, form="binned", duration=40, extra=["--no-labels"]))
    args = lsl_node.build_parser().parse_args(["--inlet", name, "--checkpoint", str(sim_checkpoint), "--resolve-timeout", "30"])
    with pytest.raises(ConfigError, match=r"102 of the stream's 102 units are unknown.*'0', '1'.*no channel labels.*--calibrate.*--session ID"):
        lsl_node.run(args)


def test_unknown_units_message_names_them_and_how_to_calibrate(procs, tmp_path):
    other = ["other/u0", "other/u1"]
    model = POSSM(preset("small", "gru", dim=32, dim_head=32, backbone_kwargs={"hidden": 16, "layers": 1}),
                  unit_ids=other, session_ids=["other"], session_units={"other": other})
    ck = save_checkpoint(model, tmp_path / "other")
    name = lh.unique("unknown")
    procs.append(lh.start_sim(name, duration=40))
    args = lsl_node.build_parser().parse_args(["--inlet", name, "--checkpoint", str(ck), "--resolve-timeout", "30"])
    with pytest.raises(ConfigError, match=r"102 of the stream's 102 units are unknown.*'sim-m0-seed0-s000/u000'.*--calibrate 60 --labels"):
        lsl_node.run(args)


@pytest.mark.slow
@pytest.mark.parametrize("same_source_id", [True, False], ids=["same-source-id", "new-source-id"])
def test_source_that_vanishes_and_returns_resumes_with_fresh_state(same_source_id, sim_checkpoint, procs):
    name, sid = lh.unique("flaky"), lh.unique("sid")
    procs.append(lh.start_sim(name, duration=60, source_id=sid))
    src = LSLSource(name, lost_after=0.4, reconnect_interval=0.2, resolve_timeout=30).connect()
    model, _ = load_checkpoint(sim_checkpoint)
    dec = StreamingDecoder(model)
    preds: list[Prediction] = []
    stop = threading.Event()
    runner = DecoderRunner(src, dec, [], stop_event=stop, on_predictions=preds.extend)
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    try:
        _wait(lambda: len(preds) >= 10, 30)
        lh.stop(procs[0], kill=True)  # the source vanishes
        t_gone = pylsl.local_clock()
        _wait(lambda: runner.source_losses == 1, 10)
        n_lost = len(preds)
        time.sleep(1.0)
        assert th.is_alive() and len(preds) == n_lost  # still running, nothing decoded while lost
        procs.append(lh.start_sim(name, duration=60, source_id=sid if same_source_id else lh.unique("sid2")))
        _wait(lambda: runner.source_returns == 1 and len(preds) >= n_lost + 10, 40)
    finally:
        stop.set()
        th.join(15)
        src.disconnect()
    assert not th.is_alive()
    after = preds[n_lost:]
    assert after[0].chunk_index == 0 and after[0].t_start > t_gone + 1.0  # fresh grid after the return
    assert [p.chunk_index for p in after[:10]] == list(range(10))
    assert all(np.isfinite(p.values).all() for p in preds)
    assert dec.stats.resets >= 1 and runner.acquire_errors == 0
    assert src.losses == 1 and not src.lost


def test_no_inlet_exits_2_with_one_line(sim_checkpoint):
    name = lh.unique("absent")
    exe = shutil.which("possm-lsl")
    cmd = [exe] if exe else None
    args = ["--inlet", name, "--checkpoint", str(sim_checkpoint), "--resolve-timeout", "0.3"]
    proc = lh.start(["-m", "possm_plugin.cli.lsl_node", *args]) if cmd is None else _popen(cmd + args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("possm-lsl")]
    assert lines == [f"possm-lsl: no LSL stream with name='{name}' appeared within 0.3 s"]


def test_sink_outlet_metadata_and_stamps():
    name = lh.unique("sinkmeta")
    sink = LSLSink(name, units="cm/s", telemetry=True, source_id="sid-" + name)
    sink.connect(output_names=["vx", "vy"], chunk_step=0.05)
    try:
        inlet = lh.open_inlet(name, timeout=10)
        info = inlet.info(5.0)
        assert info.nominal_srate() == pytest.approx(20.0) and info.channel_count() == 2
        assert info.channel_format() == pylsl.cf_float32 and info.source_id() == "sid-" + name
        ch = info.desc().child("channels").child("channel")
        assert (ch.child_value("label"), ch.child_value("unit")) == ("vx", "cm/s")
        assert ch.next_sibling().child_value("label") == "vy"
        t = pylsl.local_clock()
        preds = [Prediction(values=np.array([1.5, -2.0], np.float32), t_start=t + i * 0.05, t_end=t + i * 0.05 + 0.05, chunk_index=i) for i in range(3)]
        _wait(lambda: sink._outlet.have_consumers(), 10)
        sink.publish(preds)
        got, ts = [], []
        deadline = time.monotonic() + 10
        while len(ts) < 3 and time.monotonic() < deadline:
            d, s = inlet.pull_chunk(timeout=0.1, as_numpy=True)
            got.extend(d.tolist())
            ts.extend(s.tolist())
        np.testing.assert_allclose(ts, [p.t_end for p in preds], atol=1e-9)
        np.testing.assert_array_equal(got, [[1.5, -2.0]] * 3)
    finally:
        sink.disconnect()


def _popen(cmd):
    import subprocess

    return subprocess.Popen(cmd, env=lh.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(cond, timeout: float) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def test_predicate_building():
    from possm_plugin.adapters.lsl import build_predicate

    assert build_predicate("spikes") == "name='spikes'"
    assert build_predicate("spikes", "type='Spikes'") == "name='spikes' and (type='Spikes')"
    assert build_predicate(None, "hostname='rig'") == "hostname='rig'"
    with pytest.raises(ConfigError, match="stream name"):
        build_predicate(None, None)
    assert math.isfinite(pylsl.local_clock())


class _Replay:
    """A source (or behaviour stream) that delivers a prepared recording in its first calls."""

    def __init__(self, items, unit_ids=(), names=("vx", "vy")):
        self.items, self.unit_ids, self.channel_names = list(items), list(unit_ids), list(names)
        self.has_labels, self.connected, self.closed = True, True, False

    def connect(self, timeout=None):
        return self

    def acquire(self, timeout=0.0):
        return self.items.pop(0) if self.items else self.empty

    def disconnect(self):
        self.closed = True


def test_online_calibration_learns_new_units_with_the_backbone_frozen():
    from possm_plugin.realtime.calibration import calibrate_online
    from possm_plugin.realtime.io import SpikeBatch

    sess = simulate_motor_session(3, seed=0, duration_s=12)
    t_clock = 1000.0  # stream clock: the session shifted
    spikes = [SpikeBatch(sess.spike_units[sel].astype(np.float64), sess.spike_times[sel] + t_clock, t_clock + b)
              for a, b in ((0, 6), (6, 12)) for sel in [(sess.spike_times >= a) & (sess.spike_times < b)]]
    source = _Replay(spikes, sess.unit_ids)
    source.empty = SpikeBatch.empty(None)
    labels = _Replay([(sess.target_times + t_clock, sess.targets.astype(np.float64))])
    labels.empty = (np.zeros(0), np.zeros((0, 2)))
    model = make_tiny(units=["sim-m0-s000/u000", "sim-m0-s000/u001"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, sid, unit_ids, metrics = calibrate_online(model, source, labels=labels, seconds=0.2, epochs=1, session_id="calib-test")
    assert sid == "calib-test" and unit_ids == sess.unit_ids and labels.closed
    assert sid in model.session_vocab and all(u in model.unit_vocab for u in unit_ids)
    assert metrics["new_units"] == len(unit_ids) and metrics["new_sessions"] == 1 and np.isfinite(metrics["valid_r2"])
    after = model.state_dict()
    for k, v in before.items():  # every old weight (old embedding rows included) is bit-identical
        assert torch.equal(after[k][: v.shape[0]], v), k
    assert not torch.equal(after["unit_emb.weight"][3:], torch.zeros_like(after["unit_emb.weight"][3:]))
    dec = StreamingDecoder(model, session=sid, unit_ids=unit_ids)
    dec.push(sess.spike_units[:200], sess.spike_times[:200])
    assert all(np.isfinite(p.values).all() for p in dec.advance(float(sess.spike_times[199])))


def make_tiny(units):
    torch.manual_seed(0)
    cfg = preset("small", "gru", dim=32, dim_head=32, ffn_dropout=0.0, backbone_kwargs={"hidden": 16, "layers": 1}, target_scale=20.0)
    return POSSM(cfg, unit_ids=units, session_ids=[SESSION], session_units={SESSION: units}).eval()


def test_sorted_units_and_waveform_fields_of_spike_events():
    """NDS-like samples [channel, unit, waveform...]: desc/units/unit maps (channel, unit) pairs;
    a desc/channels list naming the fields is not taken for unit labels."""
    name = lh.unique("nds")
    info = pylsl.StreamInfo(name, "Spikes", 5, pylsl.IRREGULAR_RATE, "int16", "sid-" + name)
    fields = info.desc().append_child("channels")
    for f in ("channel", "unit", "w0", "w1", "w2"):
        fields.append_child("channel").append_child_value("label", f)
    units = info.desc().append_child("units")
    for label, c, u in (("e0a", 0, 0), ("e0b", 0, 1), ("e3a", 3, 0)):
        x = units.append_child("unit")
        x.append_child_value("label", label)
        x.append_child_value("channel", str(c))
        x.append_child_value("unit", str(u))
    outlet = pylsl.StreamOutlet(info)
    src = LSLSource(name, resolve_timeout=10, idle_delay=10.0).connect()
    try:
        assert src.form == "events" and src.unit_ids == ["e0a", "e0b", "e3a"] and src.has_labels
        src.acquire(0.0)  # the first pull starts the stream
        _wait(lambda: outlet.have_consumers(), 10)
        t = pylsl.local_clock()
        samples = np.array([[0, 0, 1, 2, 3], [0, 1, 0, 0, 0], [3, 0, 0, 0, 0], [3, 1, 0, 0, 0], [9, 0, 0, 0, 0]], np.int16)
        outlet.push_chunk(samples, [t + 0.001 * i for i in range(5)])
        got = []
        deadline = time.monotonic() + 10
        while sum(len(b) for b in got) < 5 and time.monotonic() < deadline:
            got.append(src.acquire(0.05))
        ch = np.concatenate([b.channels for b in got])
        np.testing.assert_array_equal(ch, [0, 1, 2, -1, -1])  # unknown pairs -> -1 (counted by the decoder)
        assert got[-1].watermark == pytest.approx(t + 0.004, abs=1e-3)  # clock sync adds the tiny estimated offset
    finally:
        src.disconnect()


def _event_outlet(name: str, n_units: int = 4) -> pylsl.StreamOutlet:
    """A spike-event outlet (irregular rate, [channel, unit]) with units u0..u{n-1}."""
    info = pylsl.StreamInfo(name, "Spikes", 2, pylsl.IRREGULAR_RATE, "int16", "sid-" + name)
    chans = info.desc().append_child("channels")
    for i in range(n_units):
        chans.append_child("channel").append_child_value("label", f"u{i}")
    return pylsl.StreamOutlet(info)


def test_idle_watermark_decodes_silence_but_waits_for_a_stalled_sender():
    name = lh.unique("idle")
    outlet = _event_outlet(name)
    src = LSLSource(name, resolve_timeout=10, idle_delay=0.02, clocksync=False).connect()
    try:
        src.acquire(0.0)
        _wait(lambda: outlet.have_consumers(), 10)
        # a sparse stream: one spike, then quiet neurons -> the watermark follows the clock
        t1 = pylsl.local_clock()
        outlet.push_sample([1, 0], t1)
        wm = None
        t_end = time.monotonic() + 0.3
        while time.monotonic() < t_end:
            wm = src.acquire(0.005).watermark or wm
        assert wm > t1 + 0.2
        # a busy stream (2 spikes per ms) that stalls: the watermark waits for the stalled spikes
        t_busy = time.monotonic() + 0.4
        while time.monotonic() < t_busy:
            now = pylsl.local_clock()
            outlet.push_chunk(np.array([[0, 0], [2, 0]], np.int16), [now, now])
            src.acquire(0.0)
            time.sleep(0.001)
        last = pylsl.local_clock()
        outlet.push_sample([3, 0], last)
        t_stall = time.monotonic() + 0.25
        while time.monotonic() < t_stall:
            b = src.acquire(0.005)
            wm = b.watermark if b.watermark is not None else wm
        assert last <= wm < last + 0.05  # did not run 250 ms ahead of the silent sender
        late = last + 0.1  # a spike from inside the stall, pushed when the sender wakes up
        outlet.push_sample([1, 0], late)
        got = []
        deadline = time.monotonic() + 5
        while not any(len(b) for b in got) and time.monotonic() < deadline:
            got.append(src.acquire(0.05))
        b = [b for b in got if len(b)][0]
        assert b.times[0] == pytest.approx(late, abs=1e-9) and b.times[0] > wm  # in time: not late
    finally:
        src.disconnect()


@pytest.mark.slow
def test_clock_lag_auto_closes_chunks_by_the_clock_and_follows_the_senders_delay():
    """clock_lag="auto": while data flow, the watermark trails the clock by a lag learnt from the
    arrival delays, short for a sender pushing every millisecond, long for one pushing in 30 ms batches."""
    name = lh.unique("clocklag")
    outlet = _event_outlet(name)
    src = LSLSource(name, resolve_timeout=10, idle_delay=0.5, clock_lag="auto", clocksync=False).connect()
    try:
        src.acquire(0.0)
        _wait(lambda: outlet.have_consumers(), 10)
        assert src.watermark_lag() == 0.5  # not watched for a second yet: idle_delay

        def run(seconds, batch):
            """Push spikes stamped over the last ``batch`` seconds every ``batch`` seconds; returns the
            (clock before the pull, watermark, lag) of every pull that delivered spikes."""
            seen, t_next, t_end = [], pylsl.local_clock(), time.monotonic() + seconds
            while time.monotonic() < t_end:
                now = pylsl.local_clock()
                if now >= t_next:
                    stamps = np.linspace(now - batch, now, 4)
                    outlet.push_chunk(np.array([[0, 0], [1, 0], [2, 0], [3, 0]], np.int16), stamps.tolist())
                    t_next = now + batch
                before = src.now()
                b = src.acquire(0.0005)
                if len(b):
                    seen.append((before, b.watermark, src.watermark_lag()))
            return seen

        fast = run(1.5, 0.001)
        lag_fast = src.watermark_lag()
        assert 0.0005 <= lag_fast < 0.5, lag_fast  # learnt from ~1 ms delays (plus scheduling), below idle_delay
        late = [(before, wm, lag) for before, wm, lag in fast if lag < 0.5]
        assert late and all(wm >= before - lag for before, wm, lag in late)  # the clock, not the data, leads
        run(2.5, 0.03)  # the sender now batches 30 ms: every spike is >= 30 ms old when it arrives
        assert 0.045 <= src.watermark_lag() <= 0.5  # 1.5 x 30 ms + 0.5 ms or more, at most idle_delay
    finally:
        src.disconnect()


def test_clock_lag_option_values():
    assert LSLSource("x", clock_lag="off").clock_lag is None and LSLSource("x", clock_lag=False).clock_lag is None
    assert LSLSource("x", clock_lag=0.002).clock_lag == 0.002 and LSLSource("x", clock_lag="auto").clock_lag == "auto"
    for bad in ("soon", -0.001, 2.0, True):
        with pytest.raises(ConfigError, match="clock_lag"):
            LSLSource("x", clock_lag=bad)


@pytest.mark.parametrize("drift", [0.0, 40e-6, -40e-6], ids=["jitter", "jitter+drift", "jitter+drift-back"])
def test_binned_bins_stay_on_their_grid_when_the_clock_offset_estimate_moves(drift):
    """Clock sync maps each timestamp with the latest offset estimate, which moves by microseconds at
    each update. A chunk must still close with the batch that carries its last bin, not one bin later,
    and no spike may land before a watermark already given (late). With clocks that drift apart
    (``drift`` s per bin, 4 % of a 1 ms bin), the grid re-anchors; still nothing late or lost."""
    w, n_units, n_bins = 0.001, 4, 1000
    src = LSLSource("x")
    src.srate, src.form, src._tc = 1.0 / w, "binned", 0.0
    dec = StreamingDecoder(make_tiny([f"u{i}" for i in range(n_units)]), session=SESSION, engine="torch")
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.05, size=(n_bins, n_units))
    counts[::97, 1] = 3  # some bins with several spikes of one unit (spread inside the bin)
    t0 = pylsl.local_clock() - 2.0
    offset = rng.choice([-4e-6, -1e-6, 0.0, 2.5e-6], size=n_bins // 100 + 1).repeat(100)[:n_bins]  # one estimate per 100 bins
    ends = t0 + w * np.arange(1, n_bins + 1) + offset + drift * np.arange(n_bins)
    closed_with = {}
    given = -np.inf
    for b in range(n_bins):  # one bin per pull, as at 1 kHz
        batch = src._binned(counts[b : b + 1], ends[b : b + 1])
        if b == 0:
            dec.advance(batch.start)
        if len(batch):
            assert batch.times.min() >= given  # never before the watermark already given
        dec.push(batch.channels, batch.times)
        for p in dec.advance(batch.watermark):
            closed_with[p.chunk_index] = b
        given = batch.watermark
    assert dec.stats.spikes_late == 0 and dec.stats.spikes_dropped == 0
    assert dec.stats.spikes_in == counts.sum()
    n_chunks = len(closed_with)
    assert n_chunks >= 19 and sorted(closed_with) == list(range(n_chunks))
    if drift == 0.0:  # chunk k's last bin is bin 50k + 49: its pull closes it
        assert closed_with == {k: 50 * k + 49 for k in range(n_chunks)}
    else:  # bins slide against the chunk grid: a chunk closes with the bin whose end reaches the chunk's end
        for k, b in closed_with.items():  # (within the snap, a quarter of a bin)
            end_k = t0 + 0.05 * (k + 1)
            first = int(np.searchsorted(ends, end_k - 0.25 * w))
            assert first <= b <= int(np.searchsorted(ends, end_k + 0.25 * w)), (k, b, first)
