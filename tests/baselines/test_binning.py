"""possm_plugin.baselines.binning: counts on the chunk grid, labels at chunk ends, trial membership and splits."""

from __future__ import annotations

import numpy as np
import pytest

from possm_plugin.baselines.binning import (
    TrialSubset,
    as_subsets,
    bin_session,
    bin_spikes,
    chunk_ends,
    chunk_trials,
    kfold_trials,
    lagged,
    session_grid,
    split_trials,
)
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.tokenize import chunk_starts, tokenize


def _session(rng, *, n_units=5, duration=6.0, rate=20.0) -> Session:
    n = rng.poisson(rate * duration * n_units)
    times = np.sort(rng.uniform(0, duration, n))
    # spikes exactly on chunk boundaries must land in the later chunk
    times[:3] = [0.05, 0.5, 1.0]
    times = np.sort(times)
    tt = np.arange(0, duration + 1e-9, 0.01)
    return Session(
        session_id="syn",
        spike_times=times,
        spike_units=rng.integers(0, n_units, n),
        unit_ids=[f"syn/u{i}" for i in range(n_units)],
        target_times=tt,
        targets=np.stack([np.sin(tt), tt], 1),
        trials=[[0.0, 2.0], [2.0, 4.0], [4.5, 6.0]],
        phase=(tt > 3).astype(np.int8) * 2,
    )


def test_counts_equal_the_tokens_of_each_chunk(rng):
    s = _session(rng)
    b = bin_session(s)
    starts = chunk_starts(0.0, len(b), 0.05)
    np.testing.assert_array_equal(b.starts, starts)  # same grid as the tokenizer, anchored at 0
    assert len(b) == 120 and b.counts.shape == (120, 5)
    ch = tokenize(s.spike_units + 1, s.spike_times, starts=starts, width=0.05, next_start=b.next_start)
    np.testing.assert_array_equal(b.counts.sum(1), ch.counts)
    for i in (0, 1, 9, 10, 19, 20, 77):  # per unit, chunk by chunk
        rows = ch.units[i][ch.mask[i] & (ch.units[i] > 0)]
        np.testing.assert_array_equal(b.counts[i], np.bincount(rows - 1, minlength=5))
    assert b.counts.sum() == len(s.spike_times)  # every spike in exactly one chunk (6 s = 120 chunks)


def test_overlapping_chunks_and_boundaries():
    times = np.array([0.0, 0.05, 0.0999, 0.1, 0.16])
    starts = np.array([0.0, 0.05, 0.1])
    counts = bin_spikes(times, np.zeros(5, int), n_units=1, starts=starts, width=0.1)
    # [0, 0.1): 0, 0.05, 0.0999 | [0.05, 0.15): 0.05, 0.0999, 0.1 | [0.1, 0.2): 0.1, 0.16
    np.testing.assert_array_equal(counts[:, 0], [3, 3, 2])
    np.testing.assert_array_equal(counts[:, 0], tokenize(np.ones(5, int), times, starts=starts, width=0.1).counts)


def test_spikes_on_boundaries_at_large_clock_values_count_once():
    t0 = 1_700_000_000.0  # unix time: start_i + width and start_{i+1} round apart
    starts = t0 + np.arange(400) * 0.05
    nxt = t0 + 400 * 0.05
    assert np.any(starts[:-1] + 0.05 != starts[1:])  # the rounding this guards against
    ends = chunk_ends(starts, 0.05, nxt)
    np.testing.assert_array_equal(ends[:-1], starts[1:])
    on_starts = np.r_[starts, nxt]  # a spike on every boundary; the last is after the last chunk
    counts = bin_spikes(on_starts, np.zeros(401, int), n_units=1, starts=starts, width=0.05, next_start=nxt)
    np.testing.assert_array_equal(counts[:, 0], np.ones(400))
    # spikes at the unsnapped start + width: each in exactly one chunk, none lost
    near = starts[:-1] + 0.05
    counts = bin_spikes(near, np.zeros(399, int), n_units=1, starts=starts, width=0.05, next_start=nxt)
    assert counts.sum() == 399  # (a chunk may get its neighbour's: they sit within ulps of the boundary)
    tok = tokenize(np.ones(399, int), near, starts=starts, width=0.05, next_start=nxt)
    np.testing.assert_array_equal(counts[:, 0], tok.counts)


def test_labels_sampled_at_chunk_ends_and_trials(rng):
    s = _session(rng)
    b = bin_session(s)
    ends = b.ends
    np.testing.assert_allclose(b.targets[:, 0], np.sin(ends), atol=1e-4)
    np.testing.assert_allclose(b.targets[:, 1], ends, atol=1e-5)
    assert np.all(b.phase[ends > 3.0 + 1e-9] == 2) and np.all(b.phase[ends < 3.0 - 1e-9] == 0)
    # chunk ends in (start, end]: 40 chunks in trial 0, 40 in trial 1, none in the gap, 30 in trial 2
    assert np.bincount(b.trial + 1).tolist() == [10, 40, 40, 30]
    assert b.trial[39] == 0 and b.trial[40] == 1 and b.trial[80] == -1 and b.trial[90] == 2
    assert b.mask([0, 2]).sum() == 70 and b.mask().sum() == 110


def test_chunk_trials_handles_overlapping_and_unsorted_trials():
    trials = np.array([[2.0, 3.0], [0.0, 10.0], [5.0, 6.0]])
    out = chunk_trials(trials, np.array([0.5, 2.5, 4.0, 5.5, 10.0, 10.5]))
    np.testing.assert_array_equal(out, [1, 0, 1, 2, 1, -1])


def test_explicit_t0_and_bad_grid(rng):
    s = _session(rng)
    g = session_grid(s, t0=0.01, width=0.1, step=0.05)
    np.testing.assert_allclose(g[:3], [0.01, 0.06, 0.11])
    assert g[-1] + 0.1 <= s.duration
    with pytest.raises(ConfigError, match="0 < step <= width"):
        session_grid(s, width=0.05, step=0.1)


def test_split_trials_contiguous_and_shuffled():
    sp = split_trials(20, valid_fraction=0.1, test_fraction=0.2)
    assert sp["train"].tolist() == list(range(14)) and sp["valid"].tolist() == [14, 15]
    assert sp["test"].tolist() == [16, 17, 18, 19]
    r = split_trials(20, valid_fraction=0.1, test_fraction=0.2, seed=3)
    assert sorted(np.concatenate(list(r.values())).tolist()) == list(range(20))
    assert len(r["train"]) == 14 and len(r["test"]) == 4
    assert r["test"].tolist() != sp["test"].tolist()
    assert split_trials(20, test_fraction=0.2, seed=3)["test"].tolist() == split_trials(20, test_fraction=0.2, seed=3)["test"].tolist()
    with pytest.raises(DataError, match="too few"):
        split_trials(2, valid_fraction=0.5, test_fraction=0.5)


def test_kfold_trials_partition():
    folds = kfold_trials(10, 3, seed=1)
    tests = np.concatenate([f["test"] for f in folds])
    assert sorted(tests.tolist()) == list(range(10))
    for f in folds:
        assert not set(f["train"]) & set(f["test"]) and len(f["train"]) + len(f["test"]) == 10
    with pytest.raises(ConfigError, match="k must be"):
        kfold_trials(3, 4)


def test_lagged_is_causal():
    x = np.arange(8, dtype=float).reshape(4, 2)
    out = lagged(x, 3)
    assert out.shape == (4, 6)
    np.testing.assert_array_equal(out[2], [4, 5, 2, 3, 0, 1])
    np.testing.assert_array_equal(out[0], [0, 1, 0, 0, 0, 0])
    assert lagged(x, 6).shape == (4, 12)


def test_subsets(rng):
    s = _session(rng)
    subs = as_subsets([s, TrialSubset(s, [2])])
    assert subs[0].trials.tolist() == [0, 1, 2] and subs[1].trials.tolist() == [2]
    with pytest.raises(DataError, match="trial indices"):
        TrialSubset(s, [3])
    with pytest.raises(DataError, match="Session or TrialSubset"):
        as_subsets([1])
