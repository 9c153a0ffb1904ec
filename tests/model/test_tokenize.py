import numpy as np
import pytest

from possm_plugin.errors import ConfigError
from possm_plugin.model.tokenize import chunk_end, chunk_ends, chunk_starts, collate, n_chunks_between, tokenize, tokenize_one


def test_spikes_land_in_the_right_chunk_at_the_right_relative_time():
    starts = chunk_starts(10.0, 3, 0.05)
    c = tokenize([3, 5, 7], [10.01, 10.07, 10.149], starts=starts, width=0.05)
    assert c.counts.tolist() == [1, 1, 1]
    assert c.units[:, 0].tolist() == [3, 5, 7]
    np.testing.assert_allclose(c.times[:, 0], [0.01, 0.02, 0.049], atol=1e-6)
    assert c.mask.sum() == 3


def test_empty_chunk_gets_one_blank_token():
    c = tokenize([4], [0.12], starts=chunk_starts(0.0, 3, 0.05), width=0.05)
    assert c.counts.tolist() == [0, 0, 1]
    assert c.units[0, 0] == 0 and c.times[0, 0] == 0.0 and c.mask[0, 0]
    assert c.mask[1].tolist() == [True] and c.units[2, 0] == 4


def test_boundary_spike_belongs_to_the_later_chunk():
    starts = chunk_starts(0.0, 3, 0.05)
    c = tokenize([1, 2], [starts[1], starts[2]], starts=starts, width=0.05)
    assert c.counts.tolist() == [0, 1, 1]
    assert c.times[1, 0] == 0.0 and c.times[2, 0] == 0.0


def test_overlapping_chunks_repeat_spikes_and_outside_spikes_are_ignored():
    starts = chunk_starts(0.0, 3, 0.025)  # 50 ms chunks every 25 ms
    c = tokenize([1, 2, 3], [0.03, -1.0, 5.0], starts=starts, width=0.05)
    assert c.counts.tolist() == [1, 1, 0]
    np.testing.assert_allclose([c.times[0, 0], c.times[1, 0]], [0.03, 0.005], atol=1e-7)


def test_unsorted_input_is_time_ordered_within_chunks_and_truncation_counts():
    c = tokenize([1, 2, 3, 4], [0.04, 0.01, 0.03, 0.02], starts=chunk_starts(0, 1, 0.05), width=0.05, max_tokens=3)
    assert c.units[0].tolist() == [2, 4, 3]
    assert c.dropped == 1 and c.counts[0] == 3


def test_collate_pads_and_masks():
    a = tokenize([1, 2], [0.01, 0.02], starts=chunk_starts(0, 2, 0.05), width=0.05)
    b = tokenize([3], [0.06], starts=chunk_starts(0, 2, 0.05), width=0.05)
    t = collate([a, b])
    assert t["units"].shape == (2, 2, 2)
    assert t["mask"][1, 0].tolist() == [True, False]  # blank token, then padding
    with pytest.raises(ValueError, match="same number of chunks"):
        collate([a, tokenize([1], [0.0], starts=chunk_starts(0, 1, 0.05), width=0.05)])


def test_bad_timing_and_counts():
    with pytest.raises(ConfigError, match="width"):
        tokenize([1], [0.0], starts=[0.0], width=0.0)
    assert n_chunks_between(0.0, 1.0, width=0.05, step=0.05) == 20
    assert n_chunks_between(0.0, 0.04, width=0.05, step=0.05) == 0


@pytest.mark.parametrize("t0", [0.0, 12.345, 1.7e9])  # 1.7e9: a unix-time clock, where ends and starts differ by ulps
@pytest.mark.parametrize("max_tokens", [None, 7])
def test_tokenize_one_equals_tokenize_chunk_by_chunk(t0, max_tokens):
    """The streaming decoder's single-chunk path gives the tokens tokenize gives, chunk by chunk:
    boundary spikes, equal times, empty chunks, truncation, large clock values."""
    rng = np.random.default_rng(int(t0) % 1000 + (max_tokens or 0))
    n_chunks, step = 40, 0.05
    starts = chunk_starts(t0, n_chunks, step)
    t = np.concatenate([rng.uniform(t0, t0 + n_chunks * step, 600), starts[::3], starts[5:9]])  # on the boundaries, twice
    t = t[(t < t0 + 0.5) | (t > t0 + 0.8)]  # silent chunks
    rows = rng.integers(1, 50, len(t))
    order = np.lexsort((rows, t))
    rows, t = rows[order], t[order]
    ref = tokenize(rows, t, starts=starts, width=step, max_tokens=max_tokens, next_start=t0 + n_chunks * step)
    ends = chunk_ends(starts, step, t0 + n_chunks * step)
    assert (ref.counts == 0).any() and (max_tokens is None or ref.dropped > 0)
    total_dropped = 0
    for i in range(n_chunks):
        nxt = t0 + (i + 1) * step
        end = chunk_end(starts[i], step, nxt)
        assert end == ends[i]
        units, times, mask, count, dropped = tokenize_one(rows, t, start=starts[i], end=end, max_tokens=max_tokens)
        w = max(int(ref.counts[i]), 1)
        assert count == ref.counts[i]
        np.testing.assert_array_equal(units[0], ref.units[i, :w])
        np.testing.assert_array_equal(times[0], ref.times[i, :w])
        np.testing.assert_array_equal(mask[0], ref.mask[i, :w])
        assert times.dtype == np.float32 and units.dtype == np.int64
        total_dropped += dropped
    assert total_dropped == ref.dropped
