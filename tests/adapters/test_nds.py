"""``possm-lsl`` against the real neural-data-simulator (NDS 0.2.10, as shipped on PyPI): its
``streamer`` -> ``encoder`` -> ``ephys_generator`` chain in a virtual environment of its own
(tests/nds_helpers.py), decoded after online calibration on NDS's own behaviour stream.

The venv is created once (about a minute) and reused; the test skips only when pip cannot reach a
package index. It takes 70-140 s on two cores (marked slow): NDS starts in ~15 s, calibration collects
30 s and trains 10-60 s, decoding runs 20 s.
"""

from __future__ import annotations

import json
import threading
import time

import lsl_helpers as lh  # sets LSLAPICFG before anything talks to liblsl
import nds_helpers as nh
import numpy as np
import pylsl
import pytest

N_CHANNELS = 96
CALIBRATE_S = 30.0
DECODE_S = 20.0
EPOCHS = 10


@pytest.fixture(scope="session")
def nds_bin():
    bin_dir, why = nh.ensure_venv()
    if bin_dir is None:
        pytest.skip(why)
    return bin_dir


def _r2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return 1.0 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)


@pytest.mark.slow
def test_possm_lsl_decodes_the_real_nds_spike_stream_after_online_calibration(nds_bin, tmp_path):
    tag = lh.unique("t")
    nds = nh.NDS(nds_bin, tmp_path, n_channels=N_CHANNELS, tag=tag).start()
    node = relay = None
    try:
        # the behaviour first: the streamer starts first. On this busy machine LSL's discovery sometimes stops
        # answering for NDS-Behavior (and NDS-LFPData) after a few seconds, for minutes, while an open inlet
        # keeps receiving: possm-lsl then failed with "no LSL stream NDS-Behavior" in 2 of 8 runs. So this
        # process relays NDS's behaviour samples, with their timestamps, to an outlet of its own, which
        # possm-lsl calibrates on (NDS's spikes it reads directly).
        relay = _Relay(lh.open_inlet(nds.behaviour, timeout=60, clocksync=True), nds.behaviour + "-relay")
        relay.start()
        rec = lh.Recorder()
        out = lh.unique("possm")
        node = nds.start_node(["-m", "possm_plugin.cli.lsl_node", "--inlet", nds.spikes, "--outlet", out, "--resolve-timeout", "60",
                         "--calibrate", str(CALIBRATE_S), "--labels", relay.name, "--duration", str(DECODE_S),
                         "--json-summary", "--log-level", "INFO", "--telemetry", "--calibrate-epochs", str(EPOCHS)])
        info = lh.resolve(nds.spikes, timeout=60)
        assert info.channel_count() == 50 and info.nominal_srate() == 0  # [channels, units, 48 waveform samples]
        # the outlet appears once calibration is done (the behaviour inlet buffers meanwhile)
        rec.add("pred", _open_when_up(out, node, limit=CALIBRATE_S + 240))
        rec.add("tele", lh.open_inlet(out + "-telemetry"))
        rec.until(lambda: node.poll() is not None, limit=DECODE_S + 60)
        stdout, stderr = lh.stop(node)
        assert node.returncode == 0, stderr[-3000:] + nds.failed()
    finally:
        if node is not None:
            lh.stop(node, kill=True)
        if relay is not None:
            relay.stop()
        nds.stop()
    summary = json.loads(stdout.strip().splitlines()[-1])
    b_ts, b_val = relay.get()
    p_ts, p_val = rec.get("pred")
    keep = (p_ts > b_ts[0]) & (p_ts < b_ts[-1])
    true = np.stack([np.interp(p_ts[keep], b_ts, b_val[:, k]) for k in range(2)], axis=1)
    r2 = _r2(p_val[keep], true)
    print(f"\nNDS: {N_CHANNELS} electrodes, calibration {summary['calibration']}, live R2 {r2.round(3)} over {keep.sum()} "
          f"predictions; spikes in {summary['spikes_in']}, decoded {summary['spikes_decoded']}, dropped {summary['spikes_dropped']}; "
          f"chunk end -> publish {summary['publish_ms']}")
    print(json.dumps(summary))
    _, tele = rec.get("tele")
    slow = tele[tele[:, 1] > 20.0]
    print("chunks with publish_ms > 20 (chunk index, publish_ms):", [(int(k), round(float(ms), 1)) for k, ms in slow[:, [3, 1]]])
    print(stderr[-4000:])
    assert summary["calibration"]["new_units"] == N_CHANNELS, summary["calibration"]
    # nothing unknown, invalid, duplicated or from the future. NDS pushes each iteration's spikes with one
    # timestamp (push_chunk without stamps), so two spikes of one electrode in a push covering 10-20 ms share
    # a time: both are kept (LSL delivers each sample once; these were dropped as "duplicate", 0.3-2.3 % of
    # spikes, before). What NDS itself causes when it lags on a busy machine ("Not running in real-time"): a
    # push that arrives more than idle_delay after its stamp is late (15 of 29,500 spikes in one run, 0 in four)
    for k in ("spikes_unknown", "spikes_invalid", "spikes_future", "spikes_truncated", "spikes_duplicate"):
        assert summary[k] == 0, summary
    assert summary["spikes_late"] <= 0.005 * summary["spikes_in"], summary
    assert summary["spikes_dropped"] == summary["spikes_late"], summary
    assert summary["spikes_decoded"] > 0.9 * N_CHANNELS * 8 * DECODE_S, summary  # >= 8 Hz per electrode, NDS at rest
    assert keep.sum() >= 0.8 * DECODE_S / 0.05, (keep.sum(), summary)
    assert r2.min() > 0.5, r2  # measured in five runs: calibration R2 0.72-0.77, live R2 vx 0.65-0.75, vy 0.76-0.87
    assert summary["runtime_s"] == pytest.approx(DECODE_S, abs=1.0)  # --duration counts from the end of calibration
    assert f"for {DECODE_S:g} s from now (after calibration)" in stderr
    # decoding starts in real time after calibration: the queued spikes are skipped (one log line), so no
    # burst of stale predictions (before: chunk end -> publish p50 2.4, p99 348, max 553 ms; after, in three
    # runs: 3.0 / 27 / 38, 1.7 / 10 / 24 and 3.6 / 62 / 254 ms, the last with a 250 ms stall of NDS mid-run)
    assert "queued samples" in stderr and "while calibrating" in stderr, stderr[-3000:]
    # (that burst had 0.6-1.8 s of backlog, 12-36 stale chunks: p99 >= 348 ms). A stall of NDS itself on a
    # busy machine still shows, as a short staircase (chunk end -> publish 254, 204, 154, 104, 62 ms in one run)
    assert summary["publish_ms"]["p99"] < 250, summary["publish_ms"]


class _Relay(threading.Thread):
    """Republish an inlet's samples, timestamps kept, on an outlet ``name`` (same channels and rate),
    and keep them: ``get()`` -> times (T,), values (T, C)."""

    def __init__(self, inlet, name: str) -> None:
        super().__init__(daemon=True)
        info = inlet.info()
        self.name, self.inlet, self._halt = name, inlet, threading.Event()
        out = pylsl.StreamInfo(name, info.type(), info.channel_count(), info.nominal_srate(), pylsl.cf_float32, "relay-" + name)
        self.outlet = pylsl.StreamOutlet(out)
        self.ts: list[np.ndarray] = []
        self.data: list[np.ndarray] = []

    def run(self) -> None:
        while not self._halt.is_set():
            d, t = self.inlet.pull_chunk(timeout=0.02, max_samples=4096, as_numpy=True)
            if len(t):
                d = np.asarray(d, np.float32).reshape(len(t), -1)
                self.outlet.push_chunk(d, np.asarray(t, np.float64).tolist())
                self.ts.append(np.asarray(t, np.float64))
                self.data.append(d.astype(np.float64))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.ts), np.concatenate(self.data)


def _open_when_up(name: str, node, *, limit: float):
    """An inlet on ``name`` once the node publishes it; fails with the node's stderr if it exits first."""
    t_end = time.monotonic() + limit
    while time.monotonic() < t_end:
        if node.poll() is not None:
            raise AssertionError(f"possm-lsl exited with {node.returncode}: {lh.stop(node)[1][-3000:]}")
        try:
            return lh.open_inlet(name, timeout=2.0, clocksync=True)
        except AssertionError:
            continue
    raise AssertionError(f"possm-lsl published no {name!r} within {limit:g} s: {lh.stop(node)[1][-3000:]}")
