"""Scores shared by POSSM and the baselines: R2, accuracy, edit distance and CTC token error rate.

Plain numpy, no scikit-learn. Shape letters: M samples, C outputs (or classes), T time steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "r2_score",
    "r2_mean",
    "accuracy",
    "edit_distance",
    "token_error_rate",
    "ctc_greedy_decode",
]


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination of each output: ``1 - SS_res / SS_tot`` -> (C,) float64.

    Args:
        y_true, y_pred: (M,) or (M, C) arrays of the same shape.

    As in scikit-learn's ``r2_score(..., multioutput="raw_values")``: an output with zero variance
    scores 1.0 when predicted exactly and 0.0 otherwise. Predicting the mean scores 0; worse is negative.
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true {yt.shape} and y_pred {yp.shape} must have the same shape")
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    if yt.ndim != 2 or yt.shape[0] < 2:
        raise ValueError(f"need at least 2 samples of shape (M,) or (M, C), got {np.shape(y_true)}")
    ss_res = ((yt - yp) ** 2).sum(axis=0)
    ss_tot = ((yt - yt.mean(axis=0)) ** 2).sum(axis=0)
    out = np.empty(yt.shape[1], dtype=np.float64)
    const = ss_tot == 0
    out[~const] = 1.0 - ss_res[~const] / ss_tot[~const]
    out[const] = np.where(ss_res[const] == 0, 1.0, 0.0)
    return out


def r2_mean(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """R2 averaged over outputs (the paper's number: the mean of x and y velocity R2)."""
    return float(r2_score(y_true, y_pred).mean())


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction correct. ``y_pred`` is (M,) labels or (M, C) scores (argmax is taken)."""
    yt = np.asarray(y_true).reshape(-1)
    yp = np.asarray(y_pred)
    if yp.ndim == 2:
        yp = yp.argmax(axis=1)
    yp = yp.reshape(-1)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} labels but y_pred {len(yp)}")
    if not len(yt):
        raise ValueError("accuracy of zero samples is undefined")
    return float(np.mean(yt == yp))


def edit_distance(ref: Sequence[int] | np.ndarray, hyp: Sequence[int] | np.ndarray) -> int:
    """Levenshtein distance (substitutions, insertions, deletions each cost 1) between two sequences."""
    a = list(np.asarray(ref).reshape(-1).tolist())
    b = list(np.asarray(hyp).reshape(-1).tolist())
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def token_error_rate(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> float:
    """Total edit distance over total reference length (the phoneme / word error rate of CTC decoders)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(np.asarray(r).reshape(-1)) for r in refs)
    if total == 0:
        raise ValueError("token error rate needs at least one reference token")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def ctc_greedy_decode(logits: np.ndarray, *, blank: int = 0) -> np.ndarray:
    """Best-path CTC decoding: argmax per step, merge repeats, drop blanks.

    Args:
        logits: (T, C+1) scores (logits or log-probabilities) with the blank at column ``blank``.
        blank: the blank's column (POSSM's CTC readout puts it at 0).

    Returns:
        (L,) int64 class ids in the session's label space 0..C-1: column ``c`` maps to ``c - 1`` for
        ``c > blank`` and to ``c`` for ``c < blank`` (with ``blank=0``, column 1 is class 0).
    """
    x = np.asarray(logits)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"logits must be (T, C+1) with C >= 1, got shape {x.shape}")
    if not 0 <= blank < x.shape[1]:
        raise ValueError(f"blank must be a column of logits (0..{x.shape[1] - 1}), got {blank}")
    best = x.argmax(axis=1)
    if not len(best):
        return np.zeros(0, dtype=np.int64)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != blank
    cols = best[keep].astype(np.int64)
    return np.where(cols > blank, cols - 1, cols)
