"""StreamingDecoder and DecoderRunner: streaming equals offline, batching, reset, gaps, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from possm_plugin.errors import ConfigError, UnknownUnitError
from possm_plugin.realtime.io import PredictionSink, SpikeBatch, SpikeSource
from possm_plugin.realtime.runner import DecoderRunner
from possm_plugin.realtime.streaming import StreamingDecoder

W = 0.05  # chunk width = step of the tiny models


def poisson_spikes(rng, *, n_units=16, rate=30.0, t_start=10.0, duration=3.0):
    n = rng.poisson(n_units * rate * duration)
    t = np.sort(rng.uniform(t_start, t_start + duration, n))
    return rng.integers(0, n_units, n), t


def stream_in_batches(dec, ch, t, rng, *, stream=0, max_batch=40):
    """Push in random batches; after each, advance to the last pushed time (all earlier spikes are in)."""
    preds, i = [], 0
    while i < len(t):
        j = min(len(t), i + int(rng.integers(1, max_batch)))
        dec.push(ch[i:j], t[i:j], stream=stream)
        preds += dec.advance(float(t[j - 1]), stream=stream)
        i = j
    return preds


def check_grid(preds, t0, *, width=W, step=W):
    k = np.array([p.chunk_index for p in preds])
    np.testing.assert_array_equal(k, np.arange(len(preds)))
    np.testing.assert_allclose([p.t_start for p in preds], t0 + k * step, atol=1e-9)
    np.testing.assert_allclose([p.t_end for p in preds], t0 + k * step + width, atol=1e-9)


# -- streaming == offline --------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["gru", "s4d", "mamba"])
def test_streaming_equals_offline_forward(backbone, rng):
    dec = StreamingDecoder(make_tiny_model(backbone))
    ch, t = poisson_spikes(rng)
    preds = stream_in_batches(dec, ch, t, rng)
    t0 = dec.t0()
    assert t0 == t[0] and len(preds) == int((t[-1] - t0 - W) // W) + 1
    check_grid(preds, t0)
    offline = dec.decode_offline(ch, t, t0=t0, n_chunks=len(preds))
    stream = np.stack([p.values for p in preds])
    np.testing.assert_allclose(stream, offline, rtol=0, atol=1e-5)
    assert np.abs(offline).max() > 1e-3
    assert dec.stats.chunks_decoded == len(preds) and dec.stats.spikes_dropped == 0
    assert dec.stats.spikes_decoded == sum(p.n_spikes for p in preds) == int(np.sum(t < t0 + len(preds) * W))


def test_streaming_equals_offline_with_overlapping_chunks(rng):
    dec = StreamingDecoder(make_tiny_model("gru", chunk_width=0.05, chunk_step=0.025))
    ch, t = poisson_spikes(rng, duration=2.0)
    preds = stream_in_batches(dec, ch, t, rng)
    check_grid(preds, dec.t0(), width=0.05, step=0.025)
    offline = dec.decode_offline(ch, t, t0=dec.t0(), n_chunks=len(preds))
    np.testing.assert_allclose(np.stack([p.values for p in preds]), offline, rtol=0, atol=1e-5)
    # overlapping chunks share spikes: more decoded than pushed
    assert dec.stats.spikes_decoded > np.sum(t < dec.t0() + len(preds) * 0.025)


_MODEL_GRU = make_tiny_model("gru", seed=3)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), max_batch=st.integers(1, 300), lag=st.floats(0.0, 0.2))
def test_streaming_equals_offline_for_any_batching(seed, max_batch, lag):
    """However events are batched and however far the watermark lags, the outputs are the same."""
    rng = np.random.default_rng(seed)
    dec = StreamingDecoder(_MODEL_GRU)
    ch, t = poisson_spikes(rng, duration=1.0, rate=40.0)
    preds, i = [], 0
    while i < len(t):
        j = min(len(t), i + int(rng.integers(1, max_batch + 1)))
        dec.push(ch[i:j], t[i:j])
        preds += dec.advance(float(t[j - 1]) - lag)
        i = j
    preds += dec.advance(float(t[-1]))
    offline = dec.decode_offline(ch, t, t0=dec.t0(), n_chunks=len(preds))
    # outputs reach ~10 after target_scale (20): float32 rounding of two different operation orders over
    # 40 chunks is a few ulps of that (~1e-6 each), so a relative term joins the absolute one
    np.testing.assert_allclose(np.stack([p.values for p in preds]), offline, rtol=2e-6, atol=1e-5)
    assert dec.stats.spikes_late == 0


# -- several streams --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["gru", "mamba"])
def test_batched_streams_equal_single_streams(backbone, rng):
    model = make_tiny_model(backbone)
    multi = StreamingDecoder(model, n_streams=3)
    spikes = [poisson_spikes(rng, t_start=5.0 + s, duration=1.6) for s in range(3)]
    lag = [0.0, 0.0, 0.23]  # stream 2 lags: its chunks come in other calls (partial batches)
    marks = [t[0] + np.arange(1, 16) * 0.1 - lag[s] for s, (ch, t) in enumerate(spikes)]
    got: dict[int, list] = {0: [], 1: [], 2: []}
    for j in range(15):
        for s, (ch, t) in enumerate(spikes):
            lo = -np.inf if j == 0 else marks[s][j - 1]
            sel = (t >= lo) & (t < marks[s][j])
            multi.push(ch[sel], t[sel], stream=s)
        for p in multi.advance_many({s: float(marks[s][j]) for s in range(3)}):
            got[p.stream].append(p)
    for s, (ch, t) in enumerate(spikes):
        single = StreamingDecoder(model, max_gap=100.0)  # the same first call (anchors the grid), then the rest
        first = t < marks[s][0]
        single.push(ch[first], t[first])
        ref = single.advance(float(marks[s][0]))
        rest = (t >= marks[s][0]) & (t < marks[s][-1])
        single.push(ch[rest], t[rest])
        ref += single.advance(float(marks[s][-1]))
        assert len(got[s]) == len(ref) >= 20
        assert [p.chunk_index for p in got[s]] == list(range(len(ref)))
        np.testing.assert_allclose(np.stack([p.values for p in got[s]]), np.stack([p.values for p in ref]), rtol=0, atol=1e-5)


# -- state ------------------------------------------------------------------------------------------
def test_reset_gives_the_outputs_of_a_fresh_decoder(rng):
    model = make_tiny_model("s4d")
    dec = StreamingDecoder(model)
    ch_a, t_a = poisson_spikes(rng, t_start=0.0, duration=1.0)
    ch_b, t_b = poisson_spikes(rng, t_start=1.3, duration=1.0)
    first = stream_in_batches(dec, ch_a, t_a, rng)
    dec.reset()
    assert dec.t0() is None and dec.stats.resets == 1
    after = stream_in_batches(dec, ch_b, t_b, rng)
    fresh = stream_in_batches(StreamingDecoder(model), ch_b, t_b, rng)
    assert len(first) >= 15 and after[0].chunk_index == 0 and len(after) == len(fresh)
    np.testing.assert_allclose(np.stack([p.values for p in after]), np.stack([p.values for p in fresh]), rtol=0, atol=1e-6)
    assert not np.allclose(after[0].values, first[-1].values)


def test_gap_longer_than_max_gap_resets_and_keeps_the_grid(rng):
    model = make_tiny_model("gru")
    dec = StreamingDecoder(model, max_gap=1.0)
    ch, t = poisson_spikes(rng, t_start=0.0, duration=0.5)
    before = stream_in_batches(dec, ch, t, rng)
    k_next = before[-1].chunk_index + 1
    buffered = dec.streams[0].times.copy()  # spikes of the chunk still open when the source went away
    last = dec.advance(float(t[-1]) + 3.0)  # the source was away 3 s
    # the open chunk's spikes are decoded (never silently lost), then the silence is skipped
    assert [p.chunk_index for p in last] == ([k_next] if len(buffered) else [])
    assert sum(p.n_spikes for p in last) == len(buffered)
    assert dec.stats.resets == 1 and dec.stats.chunks_skipped > 50
    ch2, t2 = poisson_spikes(rng, t_start=float(t[-1]) + 3.0, duration=0.8)
    after = stream_in_batches(dec, ch2, t2, rng)
    k_first = k_next + len(last) + dec.stats.chunks_skipped
    assert [p.chunk_index for p in after] == list(range(k_first, k_first + len(after)))
    start = dec.t0() + k_first * W
    np.testing.assert_allclose(after[0].t_start, start, atol=1e-9)
    fresh = StreamingDecoder(model, t0=start)
    ref = stream_in_batches(fresh, ch2, t2, rng)
    np.testing.assert_allclose(np.stack([p.values for p in after]), np.stack([p.values for p in ref[: len(after)]]), rtol=0, atol=1e-6)


def test_short_silence_is_decoded_not_reset(rng):
    dec = StreamingDecoder(make_tiny_model("gru"), max_gap=1.0)
    ch, t = poisson_spikes(rng, t_start=0.0, duration=0.5)
    stream_in_batches(dec, ch, t, rng)
    preds = dec.advance(float(t[-1]) + 0.5)
    assert len(preds) >= 9 and all(p.n_spikes == 0 for p in preds[1:]) and dec.stats.resets == 0
    assert all(np.isfinite(p.values).all() for p in preds)


def _entries_batch(ch, t, bins, *, bin_s=0.001):
    """Events plus one mark per entry ``bins`` (bin indices), watermark = the bin's end, as a Redis
    source's batch carries them (fields: the bin index)."""
    marks = [((b + 1) * bin_s + 1e-6, {"bin": int(b)}) for b in bins]
    return SpikeBatch(np.asarray(ch), np.asarray(t), marks[-1][0], start=float(bins[0]) * bin_s, marks=marks)


def test_backlog_with_a_long_silence_and_a_continuous_watermark_is_decoded_not_skipped(rng):
    """3 s of 1 ms entries read in one go (a backlog), spike-free from 0.5 to 2.5 s: the entries'
    watermarks advanced 1 ms at a time, so the silence is data (empty bins), decoded as entry by
    entry, equal to the offline forward; the same events without per-entry watermarks are skipped."""
    model = make_tiny_model("gru")
    ch1, t1 = poisson_spikes(rng, t_start=0.0, duration=0.5)
    ch2, t2 = poisson_spikes(rng, t_start=2.5, duration=0.5)
    ch, t = np.concatenate([ch1, ch2]), np.concatenate([t1, t2])
    dec = StreamingDecoder(model, max_gap=1.0)
    preds = dec.decode(_entries_batch(ch, t, np.arange(3000)))
    assert [p.chunk_index for p in preds] == list(range(60))
    assert dec.stats.chunks_skipped == 0 and dec.stats.resets == 0 and dec.stats.spikes_decoded == len(t)
    np.testing.assert_allclose(np.stack([p.values for p in preds]), dec.decode_offline(ch, t, t0=0.0, n_chunks=60), rtol=1e-5, atol=1e-5)
    assert [p.extra["bin"] for p in preds] == [50 * k + 49 for k in range(60)]  # the entry that completed each chunk
    blind = StreamingDecoder(model, max_gap=1.0)  # one watermark for the whole batch: the silence looks like a gap
    blind.decode(SpikeBatch(ch, t, 3.0 + 1e-6, start=0.0))
    assert blind.stats.chunks_skipped > 0 and blind.stats.resets >= 1


def test_backlog_longer_than_max_future_keeps_every_event(rng):
    """8 s of 10 ms bins in one batch (more than max_future = 5 s past the stream's watermark): the
    events were delivered with their bins, none is 'future'; every chunk equals the offline forward."""
    model = make_tiny_model("gru")
    ch, t = poisson_spikes(rng, t_start=0.0, duration=8.0)
    dec = StreamingDecoder(model, max_future=5.0)
    preds = dec.decode(_entries_batch(ch, t, np.arange(800), bin_s=0.01))
    assert len(preds) == 160 and dec.stats.spikes_future == 0 and dec.stats.spikes_decoded == len(t)
    np.testing.assert_allclose(np.stack([p.values for p in preds]), dec.decode_offline(ch, t, t0=0.0, n_chunks=160), rtol=1e-5, atol=1e-5)


def test_a_watermark_step_beyond_max_gap_inside_a_batch_is_a_gap(rng):
    """Entries up to 0.5 s, then (the source was away 2 s) entries from 2.5 s, in one batch: the chunks
    before the step are decoded, the 40 inside it skipped with a reset, the rest decoded from a fresh state."""
    model = make_tiny_model("gru")
    ch1, t1 = poisson_spikes(rng, t_start=0.0, duration=0.5)
    ch2, t2 = poisson_spikes(rng, t_start=2.5, duration=0.5)
    dec = StreamingDecoder(model, max_gap=1.0)
    bins = np.concatenate([np.arange(500), np.arange(2500, 3000)])
    preds = dec.decode(_entries_batch(np.concatenate([ch1, ch2]), np.concatenate([t1, t2]), bins))
    assert [p.chunk_index for p in preds] == list(range(10)) + list(range(50, 60))
    assert dec.stats.chunks_skipped == 40 and dec.stats.resets == 1
    np.testing.assert_allclose(np.stack([p.values for p in preds[:10]]), dec.decode_offline(ch1, t1, t0=0.0, n_chunks=10), rtol=1e-5, atol=1e-5)
    fresh = StreamingDecoder(model).decode_offline(ch2, t2, t0=2.5, n_chunks=10)
    np.testing.assert_allclose(np.stack([p.values for p in preds[10:]]), fresh, rtol=1e-5, atol=1e-5)


def test_distinct_batches_keep_spikes_that_share_unit_and_time(rng):
    """A batch marked ``distinct`` (an LSL source: each sample arrives once) keeps two spikes of one unit
    with one stamp, and decodes as offline with both; an unmarked batch drops the second as a re-send."""
    model = make_tiny_model("gru")
    ch, t = poisson_spikes(rng, t_start=0.0, duration=1.0)
    ch2, t2 = np.concatenate([ch, ch[::7]]), np.concatenate([t, t[::7]])  # every 7th spike twice, same stamp
    order = np.argsort(t2, kind="stable")
    ch2, t2 = ch2[order], t2[order]
    n_rep = len(ch[::7])
    kept = StreamingDecoder(model)
    preds = kept.decode(SpikeBatch(ch2, t2, 1.0, start=0.0, distinct=True))
    assert kept.stats.spikes_duplicate == 0 and kept.stats.spikes_decoded == len(t2)
    values = np.stack([p.values for p in preds])
    np.testing.assert_allclose(values, kept.decode_offline(ch2, t2, t0=0.0, n_chunks=len(preds)), rtol=0, atol=1e-5)
    dropped = StreamingDecoder(model)
    preds_d = dropped.decode(SpikeBatch(ch2, t2, 1.0, start=0.0))
    assert dropped.stats.spikes_duplicate == n_rep and dropped.stats.spikes_decoded == len(t)
    np.testing.assert_allclose(np.stack([p.values for p in preds_d]),
                               dropped.decode_offline(ch, t, t0=0.0, n_chunks=len(preds_d)), rtol=0, atol=1e-5)
    assert np.abs(values - np.stack([p.values for p in preds_d])).max() > 1e-4  # the repeated spikes count


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input_is_dropped_counted_and_harmless(rng):
    model = make_tiny_model("gru")
    dec = StreamingDecoder(model, max_future=5.0)
    ch, t = poisson_spikes(rng, t_start=1.0, duration=1.0)
    half = len(t) // 2
    preds = stream_in_batches(dec, ch[:half], t[:half], rng)
    s = dec.stats
    assert dec.push([1, 2], [np.nan, np.inf]) == 0 and s.spikes_invalid == 2
    assert dec.push([np.nan], [t[half]]) == 0 and s.spikes_invalid == 3
    assert dec.push([1, 2], [t[half]]) == 0 and s.spikes_invalid == 4  # lengths differ
    assert dec.push(["a"], [t[half]]) == 0 and s.spikes_invalid == 5  # not a number
    assert dec.push([-1, 16, 2.5], [t[half]] * 3) == 0 and s.spikes_unknown == 3
    assert dec.push([3], [preds[-1].t_start + 0.001]) == 0 and s.spikes_late == 1  # chunk already decoded
    assert dec.push([3], [t[half - 1] + 100.0]) == 0 and s.spikes_future == 1
    assert dec.push(ch[half:half + 1], t[half:half + 1]) == 1
    assert dec.push(ch[half:half + 1], t[half:half + 1]) == 0 and s.spikes_duplicate == 1
    preds += stream_in_batches(dec, ch[half + 1:], t[half + 1:], rng)
    assert s.spikes_dropped == 5 + 3 + 1 + 1 + 1
    values = np.stack([p.values for p in preds])
    assert np.isfinite(values).all()
    offline = dec.decode_offline(ch, t, t0=dec.t0(), n_chunks=len(preds))
    np.testing.assert_allclose(values, offline, rtol=0, atol=1e-5)  # as if the bad events never came


def test_oversized_chunks_are_truncated_and_counted(rng):
    model = make_tiny_model("gru")
    dec = StreamingDecoder(model, max_tokens=8)
    t = np.sort(rng.uniform(0.0, W, 20))
    t[0] = 0.0
    ch = rng.integers(0, 16, 20)
    dec.push(ch, t)
    preds = dec.advance(2 * W)
    assert len(preds) == 2 and preds[0].n_spikes == 8 and preds[1].n_spikes == 0
    assert dec.stats.chunks_oversized == 1 and dec.stats.spikes_truncated == 12
    np.testing.assert_allclose(np.stack([p.values for p in preds]), dec.decode_offline(ch, t, t0=0.0, n_chunks=2), atol=1e-5)
    assert all(np.isfinite(p.values).all() for p in preds)


def test_construction_errors():
    model = make_tiny_model("gru")
    with pytest.raises(UnknownUnitError, match="not in the vocabulary"):
        StreamingDecoder(model, unit_ids=["nope/u1"])
    with pytest.raises(ConfigError, match="n_streams"):
        StreamingDecoder(model, n_streams=0)
    assert StreamingDecoder.check_units(model, ["sess0/u000", "x/y"]) == ["x/y"]


# -- engines ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["gru", "s4d", "mamba"])
def test_engines_agree_on_batched_streams_with_resets(backbone, rng, monkeypatch):
    """The compiled engine (the CPU default), the torch engine and model.step itself decode the same
    three streams identically: full and partial batches, a reset of one stream, oversized chunks."""
    from possm_plugin import engines

    model = make_tiny_model(backbone)
    kinds = (("numba", {"engine": "numba"}), ("torch", {"engine": "torch"}), ("reference", {"fast": False}))
    decs = {e: StreamingDecoder(model, n_streams=3, max_tokens=40, **kw) for e, kw in kinds}
    assert {e: d.engine for e, d in decs.items()} == {"numba": "numba", "torch": "torch", "reference": "reference"}
    assert isinstance(decs["numba"].state[0], np.ndarray) and isinstance(decs["torch"].state[0], torch.Tensor)
    assert StreamingDecoder(model).engine == "numba"  # auto on the CPU
    assert StreamingDecoder(model, n_streams=32).engine == "numba"  # the fastest at every stream count measured
    with monkeypatch.context() as mp:  # an install where Numba does not load
        mp.setattr(engines, "numba_error", lambda: "ImportError: no numba")
        assert StreamingDecoder(model).engine == "torch"
        with pytest.raises(ConfigError, match="needs Numba"):
            StreamingDecoder(model, engine="numba")
    spikes = [poisson_spikes(rng, t_start=1.0, duration=1.5, rate=30.0 + 20 * s) for s in range(3)]
    got = {e: [] for e in decs}
    for j in range(1, 16):
        wm = {s: 1.0 + 0.1 * j - (0.17 if s == 2 else 0.0) for s in range(3)}  # stream 2 lags: partial batches
        for e, dec in decs.items():
            for s, (ch, t) in enumerate(spikes):
                sel = (t >= 1.0 + 0.1 * (j - 1) - (0.17 if s == 2 else 0.0)) & (t < wm[s])
                dec.push(ch[sel], t[sel], stream=s)
            if j == 8:
                dec.reset(1)
            got[e] += [(p.stream, p.chunk_index, p.values) for p in dec.advance_many(wm)]
    n = len(got["reference"])
    assert n >= 70 and all([g[:2] for g in got[e]] == [g[:2] for g in got["reference"]] for e in decs)
    ref = np.stack([g[2] for g in got["reference"]])
    for e in ("numba", "torch"):
        np.testing.assert_allclose(np.stack([g[2] for g in got[e]]), ref, rtol=0, atol=1e-5)
    assert decs["numba"].stats.summary()["spikes_truncated"] == decs["reference"].stats.summary()["spikes_truncated"] > 0


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_refresh_rebuilds_the_engine_and_keeps_the_streams_state(engine, rng):
    """refresh() after a weight change: the new weights decode from the state the streams had."""
    model = make_tiny_model("gru")
    ch, t = poisson_spikes(rng, t_start=0.0, duration=1.0)
    a, b = (StreamingDecoder(model, engine=engine, t0=0.0) for _ in range(2))
    for dec in (a, b):
        dec.push(ch[t < 0.5], t[t < 0.5])
        dec.advance(0.5)
    with torch.no_grad():
        model.readout.bias.add_(1.0)
    b.refresh()
    fresh = StreamingDecoder(model, engine=engine, t0=0.0)
    fresh.push(ch, t)
    for dec in (a, b):
        dec.push(ch[t >= 0.5], t[t >= 0.5])
    pa, pb, pf = a.advance(1.0), b.advance(1.0), fresh.advance(1.0)
    assert len(pb) == 10 and np.abs(pa[0].values - pb[0].values).max() > 1.0  # b decodes with the new weights
    np.testing.assert_allclose(np.stack([p.values for p in pb]), np.stack([p.values for p in pf[10:]]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_prewarm_changes_nothing_but_the_count(engine, rng):
    """Throwaway steps before each chunk's end leave outputs, state and counters as they were, and
    run once per chunk of each stream."""
    model = make_tiny_model("mamba")
    ch, t = poisson_spikes(rng, t_start=0.0, duration=1.0)
    outs = {}
    for pw in (None, 0.004):
        dec = StreamingDecoder(model, engine=engine, prewarm=pw, t0=0.0)
        preds = []
        for wm in np.arange(1, 1001) * 0.001:  # 1 ms ticks, as a live source delivers
            sel = (t >= wm - 0.001) & (t < wm)
            dec.push(ch[sel], t[sel])
            preds += dec.advance(float(wm))
        outs[pw] = (np.stack([p.values for p in preds]), dec.stats.summary(), [torch.as_tensor(x).clone() for x in dec.state])
    (a, sa, st_a), (b, sb, st_b) = outs[None], outs[0.004]
    assert len(a) == 20 and np.array_equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(st_a, st_b))
    assert sa["prewarms"] == 0 and sb["prewarms"] == 20  # one per chunk
    assert {k: v for k, v in sa.items() if k not in ("prewarms", "compute_ms")} == {k: v for k, v in sb.items() if k not in ("prewarms", "compute_ms")}
    with pytest.raises(ConfigError, match="prewarm"):
        StreamingDecoder(model, prewarm=0.05)


def test_engine_choice_errors():
    model = make_tiny_model("gru")
    with pytest.raises(ConfigError, match="engine must be"):
        StreamingDecoder(model, engine="jit")
    model.backbone.__class__ = type("GRUSubclass", (type(model.backbone),), {})  # a backbone the fold does not know
    assert StreamingDecoder(model).engine == "torch"
    with pytest.raises(ConfigError, match="no step for backbone"):
        StreamingDecoder(model, engine="numba")


# -- the runner -------------------------------------------------------------------------------------
class ListSource(SpikeSource):
    """Replays a script: SpikeBatch items, an Exception to raise, or "lost" (a vanished source).
    Sets ``done`` after the last item."""

    name = "list"

    def __init__(self, script, done: threading.Event | None = None):
        super().__init__()
        self.script = list(script)
        self.done = done
        self.unit_ids = [f"sess0/u{i:03d}" for i in range(16)]
        self.lost = False
        self.clock = 0.0

    def _connect(self, timeout):
        pass

    def _acquire(self, timeout):
        if not self.script:
            return SpikeBatch.empty(None)
        item = self.script.pop(0)
        if not self.script and self.done is not None:
            self.done.set()
        if isinstance(item, Exception):
            raise item
        self.lost = isinstance(item, str) and item == "lost"
        if self.lost:
            return SpikeBatch.empty(None)
        self.clock = item.watermark + 0.001
        return item

    def _disconnect(self):
        pass

    def now(self):
        return self.clock


class ListSink(PredictionSink):
    name = "list"

    def __init__(self):
        super().__init__()
        self.got = []

    def _connect(self, output_names, chunk_step):
        self.names, self.step = output_names, chunk_step

    def _publish(self, predictions):
        self.got.extend(predictions)

    def _disconnect(self):
        pass


def _batches(ch, t, edges):
    return [SpikeBatch(ch[(t >= a) & (t < b)], t[(t >= a) & (t < b)], float(b)) for a, b in zip(edges[:-1], edges[1:])]


def _run_script(script, **kw):
    done = threading.Event()
    src, sink = ListSource(script, done), ListSink()
    dec = StreamingDecoder(make_tiny_model("gru"))
    runner = DecoderRunner(src, dec, [sink], stop_event=done, poll_timeout=0.0, warmup=1, **kw)
    return runner, dec, sink, runner.run()


def test_runner_decodes_publishes_and_summarises(rng):
    ch, t = poisson_spikes(rng, t_start=0.0, duration=1.0)
    runner, dec, sink, summary = _run_script(_batches(ch, t, np.arange(0.0, 1.0001, 0.02)))
    n = int(np.floor((1.0 - dec.t0() - W) / W + 1e-9)) + 1
    assert sink.names == ["vx", "vy"] and sink.step == W and not sink.connected
    assert len(sink.got) == summary["chunks_decoded"] == summary["predictions_published"] == n >= 18
    offline = dec.decode_offline(ch, t, t0=dec.t0(), n_chunks=n)
    np.testing.assert_allclose(np.stack([p.values for p in sink.got]), offline, rtol=0, atol=1e-5)
    assert summary["publish_ms"]["n"] == n and 0 <= summary["publish_ms"]["p50"] <= 21.0
    assert summary["compute_ms"]["n"] == n and summary["runtime_s"] >= 0 and summary["acquire_errors"] == 0


def test_runner_resets_when_the_source_returns(rng):
    ch, t = poisson_spikes(rng, t_start=0.0, duration=0.5)
    ch2, t2 = poisson_spikes(rng, t_start=5.0, duration=0.5)
    script = _batches(ch, t, np.arange(0.0, 0.5001, 0.05)) + ["lost"] * 3 + _batches(ch2, t2, np.arange(5.0, 5.5001, 0.05))
    runner, dec, sink, summary = _run_script(script)
    assert summary["source_losses"] == 1 and summary["source_returns"] == 1 and summary["resets"] == 1
    after = [p for p in sink.got if p.t_start >= 5.0]
    assert after[0].chunk_index == 0 and after[0].t_start == t2[0] and len(after) >= 8
    ref = stream_in_batches(StreamingDecoder(dec.model), ch2, t2, rng)
    np.testing.assert_allclose(np.stack([p.values for p in after]), np.stack([p.values for p in ref[: len(after)]]), rtol=0, atol=1e-6)


def test_runner_acquisition_error_raises_in_tests_and_is_counted_otherwise(rng, monkeypatch):
    ch, t = poisson_spikes(rng, t_start=0.0, duration=0.3)
    script = _batches(ch, t, [0.0, 0.1]) + [RuntimeError("amplifier hiccup")] + _batches(ch, t, [0.1, 0.2, 0.3])
    monkeypatch.setenv("POSSM_RAISE_IN_THREADS", "1")
    with pytest.raises(RuntimeError, match="amplifier hiccup"):
        _run_script(list(script))
    monkeypatch.setenv("POSSM_RAISE_IN_THREADS", "0")
    runner, dec, sink, summary = _run_script(list(script), error_backoff=0.0)
    assert summary["acquire_errors"] == 1 and len(sink.got) == 5
    assert [p.chunk_index for p in sink.got] == list(range(5))


def test_runner_stops_on_duration_and_event():
    dec = StreamingDecoder(make_tiny_model("gru"))
    runner = DecoderRunner(ListSource([]), dec, [ListSink()], duration=0.2, poll_timeout=0.0, warmup=0)
    assert runner.run()["runtime_s"] >= 0.2
    stop = threading.Event()
    runner = DecoderRunner(ListSource([]), dec, [ListSink()], stop_event=stop, poll_timeout=0.001)
    th = threading.Thread(target=runner.run)
    th.start()
    stop.set()
    th.join(10)
    assert not th.is_alive()
    with pytest.raises(ValueError, match="duration"):
        DecoderRunner(ListSource([]), dec, [], duration=-1)


class ClockSource(ListSource):
    """A ListSource whose watermark follows its clock with a lag (as LSL's ``clock_lag``)."""

    def __init__(self, lag):
        super().__init__([])
        self.lag, self.timeouts = lag, []

    def watermark_lag(self):
        return self.lag

    def _acquire(self, timeout):
        self.timeouts.append(timeout)
        return SpikeBatch.empty(None)


def test_runner_wakes_when_the_next_chunk_closes_by_the_clock():
    """With a clock-following source the loop's pull waits only until the next chunk's end plus the lag,
    pulls at once when that is past, and falls back to poll_timeout when a due chunk stays open (a
    stalled source) instead of spinning."""
    dec = StreamingDecoder(make_tiny_model("gru"), t0=10.0)
    dec.advance(10.0)  # anchor the grid: next chunk [10.00, 10.05)
    assert dec.next_chunk_end() == pytest.approx(10.05)
    src = ClockSource(0.002).connect()
    runner = DecoderRunner(src, dec, [ListSink()], poll_timeout=0.005, warmup=0)
    for clock in (10.040, 10.049, 10.0525, 10.053, 10.053):
        src.clock = clock
        runner.step()
    assert src.timeouts[:2] == [0.005, pytest.approx(0.003)]  # capped by poll_timeout; then 10.052 - 10.049
    assert src.timeouts[2:] == [0.0, 0.005, 0.005]  # due: one immediate pull; still open: no busy loop
    src.lag = None  # the source's watermark follows its data: plain poll_timeout
    runner.step()
    assert src.timeouts[-1] == 0.005
    plain = ListSource([])  # a source without watermark_lag
    assert DecoderRunner(plain, dec, [ListSink()], poll_timeout=0.004, warmup=0)._poll_timeout() == 0.004


# -- CUDA -------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the CUDA decoding path is tested where torch sees one")
@pytest.mark.parametrize("backbone", ["gru", "s4d", "mamba"])
def test_cuda_streaming_equals_cpu_offline(backbone, rng):
    model = make_tiny_model(backbone)
    cpu = StreamingDecoder(model)
    ch, t = poisson_spikes(rng, duration=2.0)
    ref = cpu.decode_offline(ch, t, t0=float(t[0]), n_chunks=30)
    gpu = StreamingDecoder(make_tiny_model(backbone), device="cuda", n_streams=2)
    assert next(gpu.model.parameters()).is_cuda
    preds = []
    for s in range(2):
        preds.append(stream_in_batches(gpu, ch, t, rng, stream=s)[:30])
    for s in range(2):
        np.testing.assert_allclose(np.stack([p.values for p in preds[s]]), ref, rtol=0, atol=1e-4)
    assert gpu.stats.compute_ms and all(np.isfinite(p.values).all() for p in preds[0])
