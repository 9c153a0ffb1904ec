"""The BrainFlow source: the threshold detector on known signals, BrainFlow's synthetic board and
playback file board through the decode loop, and ``possm-lsl --source brainflow``."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("brainflow")

from brainflow.board_shim import BoardIds, BoardShim  # noqa: E402
from brainflow.data_filter import DataFilter  # noqa: E402
from conftest import TINY, TINY_BACKBONE  # noqa: E402
from redis_helpers import redis_server  # noqa: E402,F401  (fixture)

from possm_plugin.adapters.brainflow_board import BrainFlowSource, ThresholdDetector, effective_band, resolve_board  # noqa: E402
from possm_plugin.errors import ConfigError  # noqa: E402
from possm_plugin.model.checkpoint import save_checkpoint  # noqa: E402
from possm_plugin.model.config import preset  # noqa: E402
from possm_plugin.model.possm import POSSM  # noqa: E402

SYNTH = BoardIds.SYNTHETIC_BOARD.value


def synthetic_labels() -> list[str]:
    return list(BoardShim.get_eeg_names(SYNTH))


def board_checkpoint(path, session: str = "synth"):
    """A tiny POSSM whose units are the synthetic board's channels (``synth/Fz``, ...)."""
    import torch

    torch.manual_seed(0)
    units = [f"{session}/{lab}" for lab in synthetic_labels()]
    cfg = preset("small", "gru", **TINY, backbone_kwargs=TINY_BACKBONE["gru"])
    model = POSSM(cfg, unit_ids=units, session_ids=[session], session_units={session: units}).eval()
    return save_checkpoint(model, path / "board")


# -- the detector ---------------------------------------------------------------------------------
def spiky_signal(fs: float, seconds: float, spikes: dict[int, list[int]], n_channels: int = 3, amp: float = -25.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = int(fs * seconds)
    x = rng.normal(size=(n_channels, n)) + 50.0  # an offset the band-pass must remove
    for c, idx in spikes.items():
        for k in idx:
            x[c, k] += amp
    return x


def run_blocks(det: ThresholdDetector, x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    ch, idx = [], []
    for s in range(0, x.shape[1], block):
        c, k = det.process(x[:, s : s + block])
        ch.append(c)
        idx.append(k)
    return np.concatenate(ch), np.concatenate(idx)


def test_detector_finds_injected_spikes_after_warmup():
    fs = 30000.0
    spikes = {0: [3000, 45000, 60000], 1: [50000, 50010], 2: [2000]}  # 2000 and 3000 fall in the warm-up
    x = spiky_signal(fs, 2.5, spikes)
    det = ThresholdDetector(3, fs, threshold=-4.5, refractory_ms=1.0, warmup=0.2, history=0.01)
    ch, idx = run_blocks(det, x, 300)
    found = {c: idx[ch == c].tolist() for c in range(3)}
    delay = 4  # the causal filter's group delay, in samples
    assert len(found[0]) == 2 and all(0 <= f - s <= delay for f, s in zip(found[0], [45000, 60000]))
    assert len(found[1]) == 1 and 0 <= found[1][0] - 50000 <= delay  # 50010 is inside the refractory period
    assert found[2] == []
    # white unit noise band-limited to 250-5000 Hz of 15 kHz keeps (5000 - 250) / 15000 of its power
    np.testing.assert_allclose(det.rms, np.sqrt(4750 / 15000), rtol=0.1)
    assert np.all(np.diff(idx) >= 0)


def test_detector_positive_threshold_and_block_size():
    fs = 30000.0
    x = spiky_signal(fs, 1.0, {0: [20000]}, n_channels=1, amp=+25.0)
    a = run_blocks(ThresholdDetector(1, fs, threshold=4.5, warmup=0.2, history=0.01), x, 300)[1]
    b = run_blocks(ThresholdDetector(1, fs, threshold=4.5, warmup=0.2, history=0.01), x, 1000)[1]
    assert len(a) == 1 and 0 <= a[0] - 20000 <= 4
    assert a.tolist() == b.tolist()


def test_detector_is_causal():
    fs = 30000.0
    x = spiky_signal(fs, 1.0, {0: [15000, 29000]}, n_channels=1)
    det = ThresholdDetector(1, fs, warmup=0.2, history=0.01)
    first = det.filter(x[:, :1000].copy())
    det2 = ThresholdDetector(1, fs, warmup=0.2, history=0.01)
    changed = x.copy()
    changed[:, 1000:] = 0.0  # the future changes, the past output must not
    np.testing.assert_array_equal(det2.filter(changed[:, :1000].copy()), first)


def test_band_and_board_resolution():
    assert effective_band((250, 5000), 30000) == (250.0, 5000.0)
    assert effective_band((250, 5000), 250) == pytest.approx((11.25, 112.5))  # the synthetic board
    assert effective_band((300, 3000), 2000) == pytest.approx((300.0, 900.0))
    assert resolve_board("synthetic") == SYNTH and resolve_board("-1") == SYNTH and resolve_board("SYNTHETIC_BOARD") == SYNTH
    assert resolve_board("playback") == BoardIds.PLAYBACK_FILE_BOARD.value
    with pytest.raises(ConfigError, match="not a BrainFlow board"):
        resolve_board("no-such-board")
    with pytest.raises(ConfigError, match="threshold=0"):
        BrainFlowSource(threshold="0")
    with pytest.raises(ConfigError, match="unknown option"):
        BrainFlowSource(treshold=-4)


# -- boards ---------------------------------------------------------------------------------------
def test_synthetic_board_through_the_decoder_at_chunk_rate(tmp_path):
    """Synthetic board -> crossings -> StreamingDecoder: one prediction per 50 ms of board samples."""
    from possm_plugin.plugins import manager
    from possm_plugin.realtime.runner import DecoderRunner
    from possm_plugin.realtime.streaming import StreamingDecoder

    manager.reset_plugin_manager()
    try:
        factory = manager.get_source("brainflow")
    finally:
        manager.reset_plugin_manager()
    # the synthetic board is sines plus a little noise: -1.2 x RMS crosses about once per cycle
    src = factory(board="synthetic", session="synth", threshold="-1.2", warmup="0.3", history="0.2")
    dec = StreamingDecoder.from_checkpoint(board_checkpoint(tmp_path))
    preds = []
    with src:
        assert src.unit_ids == [f"synth/{lab}" for lab in synthetic_labels()]
        dec = StreamingDecoder(dec.model, unit_ids=src.unit_ids)
        stop = threading.Event()
        runner = DecoderRunner(src, dec, [], stop_event=stop, poll_timeout=0.02, on_predictions=preds.extend)
        t = threading.Thread(target=runner.run, daemon=True)
        t.start()
        deadline = time.monotonic() + 20
        while (src.detector is None or src.detector.n_seen < 2.5 * src.fs) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(timeout=10)
        n_seen, fs, crossings = src.detector.n_seen, src.fs, src.detector.n_crossings
    assert n_seen >= 2.5 * fs
    span = n_seen / fs  # seconds of board samples decoded
    assert abs(len(preds) - span / 0.05) <= 2  # the chunk rate, on the board's own clock
    assert [p.chunk_index for p in preds] == list(range(len(preds)))
    assert np.allclose(np.diff([p.t_end for p in preds]), 0.05)
    assert crossings > 50 and dec.stats.spikes_decoded > 0
    assert all(np.all(np.isfinite(p.values)) and p.values.shape == (2,) for p in preds)


def test_playback_file_board_detects_known_spikes(tmp_path):
    fs = BoardShim.get_sampling_rate(SYNTH)
    rows = BoardShim.get_num_rows(SYNTH)
    exg = BoardShim.get_exg_channels(SYNTH)
    n = int(2.0 * fs)
    rng = np.random.default_rng(4)
    data = np.zeros((rows, n))
    data[exg] = rng.normal(size=(len(exg), n)) * 10.0
    spikes = {exg[0]: [300, 420], exg[5]: [350]}
    for r, idx in spikes.items():
        data[r, idx] -= 200.0
    data[BoardShim.get_timestamp_channel(SYNTH)] = time.time() + np.arange(n) / fs
    f = tmp_path / "rec.csv"
    DataFilter.write_file(data, str(f), "w")
    found = []
    # at 250 Hz the band-pass rings for tens of ms after a big impulse: a 50 ms refractory period skips the ringing
    with BrainFlowSource(board="playback", file=str(f), master_board="synthetic", warmup="0.5", history="0.5", refractory_ms="50") as src:
        deadline = time.monotonic() + 20
        while src.detector.n_seen < n and time.monotonic() < deadline:
            b = src.acquire(timeout=0.05)
            found += [(int(c), round((t - src.t0) * fs)) for c, t in zip(b.channels, b.times)]
    assert src.detector.n_seen == n
    got = {exg[c]: [k for cc, k in found if cc == c] for c in {c for c, _ in found}}
    assert set(got) == set(spikes)
    for r, idx in spikes.items():
        assert len(got[r]) == len(idx) and all(0 <= g - s <= 3 for g, s in zip(got[r], idx))


def test_possm_lsl_with_brainflow_source_and_redis_sink(tmp_path, redis_server):
    """``possm-lsl --source brainflow --source-opt board=synthetic`` (predictions to a Redis sink)."""
    lsl_node = pytest.importorskip("possm_plugin.cli.lsl_node")
    ckpt = board_checkpoint(tmp_path)
    rc = lsl_node.main([
        "--source", "brainflow", "--source-opt", "board=synthetic", "--source-opt", "session=synth",
        "--source-opt", "threshold=-1.2", "--source-opt", "warmup=0.3",
        "--sink", "redis", "--sink-opt", "stream=pred", "--sink-opt", f"port={redis_server.port}",
        "--checkpoint", str(ckpt), "--duration", "1.5", "--json-summary",
    ])
    assert rc == 0
    out = redis_server.client().xrange("pred")
    assert len(out) >= 15  # about 1.5 s / 50 ms, less start-up
    t_end = [np.frombuffer(f[b"t_end"], np.float64)[0] for _, f in out]
    assert np.allclose(np.diff(t_end), 0.05)
    assert all(np.frombuffer(f[b"samples"], np.float32).shape == (2,) for _, f in out)
