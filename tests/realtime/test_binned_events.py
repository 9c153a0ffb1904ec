"""One conversion of binned counts into spike events: the training importer and every live path place
spikes at the same times and drop the same bad counts."""

from __future__ import annotations

import numpy as np
import pytest

from possm_plugin.adapters.redis_stream import EntryParser, batch_of
from possm_plugin.data.importers.binned import counts_to_events
from possm_plugin.realtime.binned_events import binned_to_events
from possm_plugin.realtime.io import Prediction, SpikeBatch

BIN = 0.01


def _sorted(ch, t):
    order = np.lexsort((ch, t))
    return np.asarray(ch)[order], np.asarray(t)[order]


def test_importer_and_live_paths_place_spikes_alike():
    counts = np.random.default_rng(0).poisson(0.8, size=(30, 5)).astype(np.int16)
    starts = 2.0 + BIN * np.arange(30)
    ch, t, bad = binned_to_events(counts, starts, BIN)
    assert bad == 0 and len(t) == counts.sum()
    # the importer's even placement (training)
    ti, ui = counts_to_events(counts, bin_s=BIN, t0=2.0, placement="even")
    np.testing.assert_allclose(_sorted(ui, ti)[1], _sorted(ch, t)[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(_sorted(ui, ti)[0], _sorted(ch, t)[0])
    # the Redis/BRAND entry parser (tick clock from 0: shift by the first start)
    p = EntryParser(kind="binned", n_channels=5, dtype="int16", bin_size_ms=BIN * 1e3)
    parsed = [p.parse(f"{k}-0", {b"samples": row.tobytes()}) for k, row in enumerate(counts)]
    b = batch_of(parsed)
    np.testing.assert_allclose(_sorted(b.channels, b.times)[1] + 2.0, _sorted(ch, t)[1], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(_sorted(b.channels, b.times)[0], _sorted(ch, t)[0])
    # hosts (the decoder node, ezmsg, Timeflux) and LSL: SpikeBatch.from_bins
    fb = SpikeBatch.from_bins(counts, starts, BIN)
    np.testing.assert_array_equal(fb.times, t)
    assert fb.start == 2.0 and fb.watermark == pytest.approx(2.3) and fb.bins_invalid == 0


def test_one_policy_for_bad_counts():
    row = np.array([np.nan, -1.0, 2.5, 2.9999998, np.inf, 3000.0, 1.0], np.float32)  # 5 bad, 2 usable (3 and 1 spikes)
    ch, t, bad = binned_to_events(row.reshape(1, -1), np.array([0.0]), BIN)
    assert bad == 5 and ch.tolist() == [3, 3, 3, 6]
    np.testing.assert_allclose(t, [BIN / 6, BIN / 2, 5 * BIN / 6, BIN / 2])
    p = EntryParser(kind="binned", n_channels=7, dtype="float32", bin_size_ms=BIN * 1e3)
    e = p.parse("1-0", {b"samples": row.tobytes()})
    assert e.error == "bad_values" and p.malformed == {"bad_values": 1}  # counted, and the good counts kept
    np.testing.assert_array_equal(e.channels, ch)
    np.testing.assert_allclose(e.times, t)
    assert SpikeBatch.from_bins(row.reshape(1, -1), np.array([0.0]), BIN).bins_invalid == 5


def test_decode_passes_the_completing_entry_through():
    """``attach_marks``: a prediction carries the fields of the first entry whose watermark reached its end."""
    from possm_plugin.realtime.chunk_grid import attach_marks

    preds = [Prediction(np.zeros(2, np.float32), 0.0, 0.05, 0), Prediction(np.zeros(2, np.float32), 0.05, 0.1, 1)]
    marks = [(0.049, {"sync": b"a"}), (0.050001, {"sync": b"b"}), (0.08, {"sync": b"c"}), (0.100001, {"sync": b"d"})]
    attach_marks(preds, marks)
    assert [p.extra["sync"] for p in preds] == [b"b", b"d"]
