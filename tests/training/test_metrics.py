"""possm_plugin.training.metrics: R2, accuracy, edit distance, token error rate, greedy CTC decoding."""

from __future__ import annotations

import numpy as np
import pytest

from possm_plugin.training.metrics import accuracy, ctc_greedy_decode, edit_distance, r2_mean, r2_score, token_error_rate


def test_r2_matches_its_definition_per_output():
    yt = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    yp = np.array([[1.5, 10.0], [2.0, 25.0], [2.5, 30.0], [4.0, 35.0]])
    # column 0: SS_res = 0.25 + 0 + 0.25 + 0 = 0.5, SS_tot = 5.0 -> 0.9
    # column 1: SS_res = 0 + 25 + 0 + 25 = 50, SS_tot = 500 -> 0.9
    np.testing.assert_allclose(r2_score(yt, yp), [0.9, 0.9])
    assert r2_mean(yt, yp) == pytest.approx(0.9)


def test_r2_of_mean_zero_and_negative_for_worse(rng):
    y = rng.normal(size=(200, 3))
    np.testing.assert_allclose(r2_score(y, np.broadcast_to(y.mean(0), y.shape)), 0.0, atol=1e-12)
    np.testing.assert_allclose(r2_score(y, y), 1.0)
    assert np.all(r2_score(y, -y) < -1.0)  # sign-flipped: SS_res ~ 4 SS_tot
    assert r2_score(y[:, 0], y[:, 0] + 0.1).shape == (1,)  # 1-D input is one output


def test_r2_constant_target_follows_sklearn_convention():
    yt = np.array([[2.0, 1.0], [2.0, 2.0], [2.0, 3.0]])
    np.testing.assert_allclose(r2_score(yt, yt), [1.0, 1.0])
    np.testing.assert_allclose(r2_score(yt, yt + [[0.5, 0.0]]), [0.0, 1.0])


def test_r2_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        r2_score(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        r2_score(np.zeros((1, 2)), np.zeros((1, 2)))


def test_accuracy_from_labels_and_scores():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy([0, 1, 1], scores) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 labels but y_pred 2"):
        accuracy([0, 1, 2], [0, 1])


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("kitten", "sitting", 3),
        ("", "abc", 3),
        ("abc", "", 3),
        ("flaw", "lawn", 2),
        ("same", "same", 0),
    ],
)
def test_edit_distance_known_values(a, b, d):
    assert edit_distance([ord(c) for c in a], [ord(c) for c in b]) == d
    assert edit_distance([ord(c) for c in b], [ord(c) for c in a]) == d


def test_token_error_rate_pools_over_sequences():
    refs = [[1, 2, 3, 4], [5, 6]]
    hyps = [[1, 2, 4], [5, 7, 6]]  # one deletion, one insertion
    assert token_error_rate(refs, hyps) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="at least one reference"):
        token_error_rate([[]], [[1]])


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    # columns: 0 = blank, 1..3 = classes 0..2
    path = [0, 1, 1, 0, 1, 3, 3, 2, 0, 0, 2]
    logits = np.full((len(path), 4), -5.0)
    logits[np.arange(len(path)), path] = 3.0
    out = ctc_greedy_decode(logits)
    # 1,1 -> class 0 ; blank ; 1 -> class 0 again ; 3,3 -> class 2 ; 2 -> class 1 ; blanks ; 2 -> class 1
    np.testing.assert_array_equal(out, [0, 0, 2, 1, 1])
    assert out.dtype == np.int64
    assert len(ctc_greedy_decode(np.zeros((0, 4)))) == 0
    # a blank in the last column maps the other columns to themselves
    np.testing.assert_array_equal(ctc_greedy_decode(logits[:, [1, 2, 3, 0]], blank=3), [0, 0, 2, 1, 1])
    with pytest.raises(ValueError, match="blank must be a column"):
        ctc_greedy_decode(logits, blank=4)
