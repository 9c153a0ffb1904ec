"""Binned views of a session on the chunk grid, and trial-based splits: the data path of the baselines.

A session is cut into chunks exactly as :mod:`possm_plugin.model.tokenize` cuts it for POSSM: chunk ``i``
covers ``[start_i, start_i + width)`` with ``start_i = t0 + i * step`` (from
:func:`~possm_plugin.model.tokenize.chunk_starts`; half-open, so a spike on a boundary belongs to the later
chunk). Instead of tokens, a baseline sees the spike count of every unit in every chunk. The label of
chunk ``i`` is the behaviour at the chunk's *end* (``np.interp`` of ``target_times``/``targets``;
the phase of the last behaviour sample at or before the end), so a causal decoder that has seen the
chunk predicts it, as POSSM's output query at the chunk end does.

A chunk belongs to trial ``k`` when its end lies in ``(start_k, end_k]``; chunks outside every trial
get trial ``-1`` and are never trained or evaluated on. Splits are made *by trials, never by bins*:
:func:`split_trials` and :func:`kfold_trials` return trial indices, and :class:`TrialSubset` pairs a
session with the trials a model may learn from (or is scored on).

Shape letters: T chunks, U units, C outputs, K trials, L lags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.tokenize import chunk_ends, chunk_starts, n_chunks_between

__all__ = [
    "BinnedSession",
    "TrialSubset",
    "session_t0",
    "session_grid",
    "bin_spikes",
    "chunk_ends",
    "chunk_trials",
    "bin_session",
    "split_trials",
    "kfold_trials",
    "as_subsets",
    "lagged",
]

DEFAULT_WIDTH = 0.05
DEFAULT_STEP = 0.05


@dataclass
class BinnedSession:
    """Counts, labels and trial membership of one session on its chunk grid.

    Attributes:
        session_id: the session's id.
        counts: (T, U) float32 spikes of each unit in each chunk.
        starts: (T,) float64 chunk start times.
        targets: (T, C) float32 behaviour at the chunk ends (physical units, e.g. cm/s).
        phase: (T,) int8 phase at the chunk ends (0 other, 1 hold, 2 reach).
        trial: (T,) int64 trial of each chunk (its end in ``(start, end]`` of the trial), -1 if none.
        unit_ids, target_names: as in the session.
        target_scale: the session's target scale (baselines train on ``targets / target_scale``).
        width, step: chunk width and step, seconds.
        next_start: start of the chunk after the last (ends snap to the next start, see :func:`chunk_ends`).
    """

    session_id: str
    counts: np.ndarray
    starts: np.ndarray
    targets: np.ndarray
    phase: np.ndarray
    trial: np.ndarray
    unit_ids: list[str]
    target_names: list[str]
    target_scale: float = 1.0
    width: float = DEFAULT_WIDTH
    step: float = DEFAULT_STEP
    next_start: float | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def ends(self) -> np.ndarray:
        """(T,) chunk end times: the times the labels and predictions are stamped with."""
        return chunk_ends(self.starts, self.width, self.next_start)

    def mask(self, trials: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(T,) bool: chunks inside ``trials`` (indices into the session's trials; None: any trial)."""
        if trials is None:
            return self.trial >= 0
        trials = np.asarray(trials, dtype=np.int64).reshape(-1)
        return np.isin(self.trial, trials) & (self.trial >= 0)


@dataclass(frozen=True)
class TrialSubset:
    """A session and the trials (indices into ``session.trials``) that a model may use from it."""

    session: Session
    trials: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        idx = np.asarray(self.trials, dtype=np.int64).reshape(-1)
        k = len(self.session.trials)
        if len(idx) and (idx.min() < 0 or idx.max() >= k):
            raise DataError(f"session {self.session.session_id!r}: trial indices must be in 0..{k - 1}, got {idx.min()}..{idx.max()}")
        object.__setattr__(self, "trials", idx)

    @classmethod
    def all(cls, session: Session) -> "TrialSubset":
        """Every trial of ``session``."""
        return cls(session, np.arange(len(session.trials)))


def as_subsets(data: Session | TrialSubset | Iterable[Session | TrialSubset] | None) -> list[TrialSubset]:
    """Normalise what ``fit`` accepts (a Session, a TrialSubset, or a list of them) to TrialSubsets.

    A bare Session stands for all its trials.
    """
    if data is None:
        return []
    if isinstance(data, (Session, TrialSubset)):
        data = [data]
    out = []
    for item in data:
        if isinstance(item, Session):
            out.append(TrialSubset.all(item))
        elif isinstance(item, TrialSubset):
            out.append(item)
        else:
            raise DataError(f"expected Session or TrialSubset objects, got {type(item).__name__}")
    return out


# -- the grid ------------------------------------------------------------------------------------
def session_t0(session: Session) -> float:
    """Where a session's chunk grid starts: the earliest of its first trial start, first behaviour
    sample and first spike (0.0 for an empty session)."""
    cands = []
    if len(session.trials):
        cands.append(float(session.trials[:, 0].min()))
    if len(session.target_times):
        cands.append(float(session.target_times[0]))
    if len(session.spike_times):
        cands.append(float(session.spike_times[0]))
    return min(cands) if cands else 0.0


def _grid(
    session: Session, *, width: float, step: float, t0: float | None, t_end: float | None
) -> tuple[np.ndarray, float]:
    """Chunk starts and the start of the chunk after the last (same rounding as the starts)."""
    if not (np.isfinite(width) and width > 0 and 0 < step <= width):
        raise ConfigError(f"need 0 < step <= width, got width={width!r}, step={step!r}")
    t_end = session.duration if t_end is None else float(t_end)
    if t0 is not None:
        n = n_chunks_between(float(t0), t_end, width=width, step=step)
        full = chunk_starts(float(t0), n + 1, step)
        return full[:-1], float(full[-1])
    i0 = int(np.floor(session_t0(session) / step + 1e-9))
    i1 = max(i0, int(np.floor((t_end - width) / step + 1e-9)) + 1)  # chunks i < i1 end by t_end
    # float64 arange * step: identical to chunk_starts(0.0, i1, step)[i0:]
    full = np.arange(i0, i1 + 1, dtype=np.float64) * step + 0.0
    return full[:-1], float(full[-1])


def session_grid(
    session: Session,
    *,
    width: float = DEFAULT_WIDTH,
    step: float = DEFAULT_STEP,
    t0: float | None = None,
    t_end: float | None = None,
) -> np.ndarray:
    """(T,) start times of the whole chunks of a session's grid.

    With ``t0=None`` the grid is anchored at time 0 of the session clock, ``start_i = i * step`` as
    POSSM's training data path (:mod:`possm_plugin.data.prepared`) lays it, and runs from the chunk holding
    :func:`session_t0` to the last whole chunk before ``t_end`` (default: the session's end). With a
    number, ``t0`` is the first chunk start (:func:`~possm_plugin.model.tokenize.chunk_starts` from it).
    """
    return _grid(session, width=width, step=step, t0=t0, t_end=t_end)[0]


def bin_spikes(
    spike_times: np.ndarray,
    spike_units: np.ndarray,
    *,
    n_units: int,
    starts: np.ndarray,
    width: float,
    next_start: float | None = None,
) -> np.ndarray:
    """Count spikes per unit in chunks ``[start, end)`` -> (T, U) float32.

    The same half-open chunks as :func:`possm_plugin.model.tokenize.tokenize` (ends from
    :func:`chunk_ends`), so counts equal the tokens a chunk holds. Chunks may overlap (step < width).
    """
    times = np.asarray(spike_times, dtype=np.float64).reshape(-1)
    units = np.asarray(spike_units, dtype=np.int64).reshape(-1)
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    if len(times) != len(units):
        raise DataError(f"spike_times ({len(times)}) and spike_units ({len(units)}) differ in length")
    if len(units) and (units.min() < 0 or units.max() >= n_units):
        raise DataError(f"spike_units must be in 0..{n_units - 1}")
    ends = chunk_ends(starts, width, next_start)
    out = np.zeros((len(starts), n_units), dtype=np.float32)
    if not len(times) or not len(starts):
        return out
    order = np.lexsort((times, units))
    times, units = times[order], units[order]
    bounds = np.searchsorted(units, np.arange(n_units + 1), side="left")
    for u in range(n_units):
        tu = times[bounds[u] : bounds[u + 1]]
        if len(tu):
            out[:, u] = np.searchsorted(tu, ends, side="left") - np.searchsorted(tu, starts, side="left")
    return out


def chunk_trials(trials: np.ndarray, ends: np.ndarray, *, tol: float = 1e-9) -> np.ndarray:
    """(T,) index of the trial whose ``(start, end]`` holds each chunk end, -1 if none.

    Ends within ``tol`` seconds after a boundary count as on it (``k * 0.1 + 0.1`` and
    ``(k + 1) * 0.1`` differ in floating point). Overlapping trials: the one that starts last wins.
    """
    trials = np.asarray(trials, dtype=np.float64).reshape(-1, 2)
    ends = np.asarray(ends, dtype=np.float64).reshape(-1) - tol
    out = np.full(len(ends), -1, dtype=np.int64)
    if not len(trials):
        return out
    order = np.argsort(trials[:, 0], kind="stable")
    st, en = trials[order, 0], trials[order, 1]
    cand = np.searchsorted(st, ends, side="left") - 1  # last trial starting strictly before the end
    ok = cand >= 0
    ok[ok] = ends[ok] <= en[cand[ok]]
    out[ok] = order[cand[ok]]
    # a chunk end can fall in an earlier, longer trial when trials overlap; rare, handled exactly
    if np.any(np.diff(st) < 0) or (len(st) > 1 and np.any(en[:-1] > st[1:])):
        for i in np.flatnonzero(~ok):
            hit = np.flatnonzero((st < ends[i]) & (ends[i] <= en))
            if len(hit):
                out[i] = order[hit[-1]]
    return out


def bin_session(
    session: Session,
    *,
    width: float = DEFAULT_WIDTH,
    step: float = DEFAULT_STEP,
    t0: float | None = None,
    t_end: float | None = None,
) -> BinnedSession:
    """Counts, labels at chunk ends and trial membership of ``session`` on its chunk grid."""
    starts, next_start = _grid(session, width=width, step=step, t0=t0, t_end=t_end)
    ends = chunk_ends(starts, width, next_start)
    counts = bin_spikes(
        session.spike_times, session.spike_units, n_units=session.n_units, starts=starts, width=width,
        next_start=next_start,
    )
    n_out = session.targets.shape[1]
    targets = np.zeros((len(starts), n_out), dtype=np.float32)
    phase = np.zeros(len(starts), dtype=np.int8)
    if len(session.target_times):
        for c in range(n_out):
            targets[:, c] = np.interp(ends, session.target_times, session.targets[:, c])
        j = np.clip(np.searchsorted(session.target_times, ends, side="right") - 1, 0, len(session.target_times) - 1)
        phase = session.phase[j].astype(np.int8)
    return BinnedSession(
        session_id=session.session_id,
        counts=counts,
        starts=starts,
        targets=targets,
        phase=phase,
        trial=chunk_trials(session.trials, ends),
        unit_ids=list(session.unit_ids),
        target_names=list(session.target_names),
        target_scale=session.target_scale,
        width=float(width),
        step=float(step),
        next_start=next_start,
    )


# -- splits --------------------------------------------------------------------------------------
def split_trials(
    n_trials: int,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Trial indices for ``train``/``valid``/``test`` (sorted; disjoint; together every trial).

    ``seed=None`` makes contiguous blocks in time (train first, then valid, then test: no test trial
    precedes a training trial); an integer seed draws the trials at random (a shuffled split).
    """
    n_trials = int(n_trials)
    for name, v in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {v!r}")
    n_test = int(round(n_trials * test_fraction))
    n_valid = int(round(n_trials * valid_fraction))
    n_train = n_trials - n_valid - n_test
    if n_train <= 0:
        raise DataError(
            f"{n_trials} trials is too few for valid_fraction={valid_fraction} and test_fraction={test_fraction}"
        )
    idx = np.arange(n_trials) if seed is None else np.random.default_rng(seed).permutation(n_trials)
    return {
        "train": np.sort(idx[:n_train]),
        "valid": np.sort(idx[n_train : n_train + n_valid]),
        "test": np.sort(idx[n_train + n_valid :]),
    }


def kfold_trials(n_trials: int, k: int, *, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``k`` splits whose test sets are disjoint folds of the (shuffled) trials: ``train`` / ``test``."""
    n_trials, k = int(n_trials), int(k)
    if k < 2 or k > n_trials:
        raise ConfigError(f"k must be in 2..n_trials={n_trials}, got {k}")
    perm = np.random.default_rng(seed).permutation(n_trials)
    folds = np.array_split(perm, k)
    return [
        {"train": np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])), "test": np.sort(folds[i])}
        for i in range(k)
    ]


# -- features ------------------------------------------------------------------------------------
def lagged(x: np.ndarray, n_lags: int) -> np.ndarray:
    """Causal lag stack: (T, F) -> (T, L*F) with block ``l`` holding ``x[t - l]`` (zeros before 0).

    Lags run over the whole session grid, across trial boundaries, as a decoder running online sees them.
    """
    x = np.asarray(x)
    if n_lags < 1:
        raise ConfigError(f"n_lags must be >= 1, got {n_lags}")
    t, f = x.shape
    out = np.zeros((t, n_lags * f), dtype=x.dtype)
    for lag in range(min(n_lags, t)):
        out[lag:, lag * f : (lag + 1) * f] = x[: t - lag]
    return out
