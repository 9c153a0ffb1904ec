"""Cutting spike events into chunks of tokens: the one code path for training, replay and streaming.

A chunk ``i`` covers ``[start_i, start_i + width)`` with ``start_i = t0 + i * step`` (half-open: a
spike exactly on a boundary belongs to the later chunk). When ``step == width`` the chunks tile the
time line, but ``start_i + width`` and ``start_{i+1}`` are rounded separately and may differ by an ulp
at large clock values (e.g. unix time): a chunk's end within a few ulps of the next chunk's start is
taken to *be* that start, so a spike on a boundary is in exactly one chunk, never in none or two. A token is a spike: the row of its unit in
the model's unit vocabulary and its time relative to the chunk start. A chunk without spikes gets
one blank token (row 0, time 0). Within a chunk tokens are in time order.

Shapes: T chunks, N tokens (padded), B sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from possm_plugin.errors import ConfigError

__all__ = ["Chunks", "chunk_starts", "chunk_end", "chunk_ends", "tokenize", "tokenize_one", "collate", "n_chunks_between"]


@dataclass
class Chunks:
    """Tokens of T consecutive chunks of one sequence (numpy, padded to the busiest chunk).

    Attributes:
        units: (T, N) int64 rows in the unit vocabulary (0 = blank / padding).
        times: (T, N) float32 seconds since the chunk start.
        mask: (T, N) bool, True for real tokens (and the blank token of an empty chunk).
        starts: (T,) float64 chunk start times on the source clock.
        counts: (T,) int64 spikes per chunk (0 for an empty chunk).
        dropped: spikes dropped because a chunk exceeded ``max_tokens``.
    """

    units: np.ndarray
    times: np.ndarray
    mask: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.starts)


def chunk_starts(t0: float, n: int, step: float) -> np.ndarray:
    """Start times of ``n`` chunks from ``t0`` (float64, computed the same way everywhere)."""
    return t0 + np.arange(n, dtype=np.float64) * step


def n_chunks_between(t_start: float, t_end: float, *, width: float, step: float) -> int:
    """How many whole chunks fit in ``[t_start, t_end]``."""
    if t_end - t_start < width:
        return 0
    return int(np.floor((t_end - t_start - width) / step + 1e-9)) + 1


def tokenize(
    unit_rows: np.ndarray,
    times: np.ndarray,
    *,
    starts: np.ndarray,
    width: float,
    max_tokens: int | None = None,
    next_start: float | None = None,
) -> Chunks:
    """Tokenize spikes into the chunks beginning at ``starts``.

    Args:
        unit_rows: (S,) vocabulary rows of the spikes (>= 1).
        times: (S,) spike times, same clock as ``starts``; need not be sorted (a stable sort is applied).
        starts: (T,) chunk start times, ascending, evenly spaced by the chunk step.
        width: chunk width in seconds.
        max_tokens: keep at most this many spikes per chunk (the earliest); the rest are counted in
            ``dropped``.
        next_start: start of the chunk after the last one, on the same grid (``t0 + T * step``): the
            last chunk's end snaps to it like the others' (see the module docstring).

    Spikes outside every chunk are ignored.
    """
    unit_rows = np.asarray(unit_rows, dtype=np.int64).reshape(-1)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    if len(unit_rows) != len(times):
        raise ValueError(f"unit_rows ({len(unit_rows)}) and times ({len(times)}) differ in length")
    n = len(starts)
    if not (np.isfinite(width) and width > 0):
        raise ConfigError(f"chunk width must be a positive number of seconds, got {width!r}")
    if n > 1 and not np.all(np.diff(starts) > 0):
        raise ConfigError("chunk starts must be strictly increasing")
    if len(times) and not np.all(np.diff(times) >= 0):
        order = np.argsort(times, kind="stable")
        times, unit_rows = times[order], unit_rows[order]
    ends = chunk_ends(starts, width, next_start)
    # chunk range of each spike: first chunk whose end is after it, last chunk starting at or before it
    first = np.searchsorted(ends, times, side="right")
    last = np.searchsorted(starts, times, side="right") - 1
    per = np.maximum(last - first + 1, 0)
    total = int(per.sum())
    spike_sel = np.repeat(np.arange(len(times)), per)
    offs = np.arange(total) - np.repeat(np.cumsum(per) - per, per)
    chunk_idx = np.repeat(first, per) + offs
    order = np.argsort(chunk_idx, kind="stable")  # by chunk, then by time
    chunk_idx, spike_sel = chunk_idx[order], spike_sel[order]
    counts = np.bincount(chunk_idx, minlength=n).astype(np.int64)
    pos = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    dropped = 0
    if max_tokens is not None and total and counts.max() > max_tokens:
        keep = pos < max_tokens
        dropped = int((~keep).sum())
        chunk_idx, spike_sel, pos = chunk_idx[keep], spike_sel[keep], pos[keep]
        counts = np.minimum(counts, max_tokens)
    width_n = max(int(counts.max()) if n else 1, 1)
    units = np.zeros((n, width_n), dtype=np.int64)
    rel = np.zeros((n, width_n), dtype=np.float32)
    mask = np.zeros((n, width_n), dtype=bool)
    units[chunk_idx, pos] = unit_rows[spike_sel]
    rel[chunk_idx, pos] = (times[spike_sel] - starts[chunk_idx]).astype(np.float32)
    mask[chunk_idx, pos] = True
    mask[counts == 0, 0] = True  # blank token: row 0 at time 0
    return Chunks(units=units, times=rel, mask=mask, starts=starts, counts=counts, dropped=dropped)


def tokenize_one(
    unit_rows: np.ndarray, times: np.ndarray, *, start: float, end: float, max_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Tokens of the single chunk ``[start, end)`` from spikes already sorted by time: the streaming
    decoder's per-chunk path, equal to :func:`tokenize` with ``starts=[start]`` (tests check it) at a
    fraction of its cost (two binary searches and two slices).

    ``end`` is the chunk's end as :func:`chunk_ends` gives it. Returns ``(units (1, N) int64, times
    (1, N) float32, mask (1, N) bool, count, dropped)``; an empty chunk gets the blank token.
    """
    lo = int(np.searchsorted(times, start, side="left"))
    hi = int(np.searchsorted(times, end, side="left"))
    count = max(hi - lo, 0)
    dropped = 0
    if max_tokens is not None and count > max_tokens:
        dropped = count - max_tokens
        count = max_tokens
    if count == 0:
        return np.zeros((1, 1), np.int64), np.zeros((1, 1), np.float32), np.ones((1, 1), bool), 0, dropped
    units = np.asarray(unit_rows[lo : lo + count], dtype=np.int64).reshape(1, count)
    rel = (times[lo : lo + count] - start).astype(np.float32).reshape(1, count)
    return units, rel, np.ones((1, count), bool), count, dropped


def chunk_end(start: float, width: float, next_start: float) -> float:
    """:func:`chunk_ends` of one chunk, in scalar arithmetic (the same result, bit for bit)."""
    end = float(start) + float(width)
    if abs(float(next_start) - end) <= 8 * float(np.spacing(abs(end))):
        return float(next_start)
    return end


def chunk_ends(starts: np.ndarray, width: float, next_start: float | None = None) -> np.ndarray:
    """Chunk ends ``starts + width``, each end within a few ulps of the following start moved onto it.

    When ``step == width`` the chunks tile time exactly although ``start_i + width`` and
    ``start_{i+1}`` are rounded separately, so a spike on a boundary is in exactly one chunk.
    ``next_start`` is the start after the last chunk.
    """
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    ends = starts + width
    nxt = np.append(starts[1:], np.nan if next_start is None else float(next_start))
    tol = 8 * np.spacing(np.abs(ends))
    snap = np.abs(nxt - ends) <= tol  # False where nxt is NaN
    ends[snap] = nxt[snap]
    return ends


def collate(items: list[Chunks], *, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of equally long chunk sequences into batch tensors (B, T, N)."""
    if not items:
        raise ValueError("collate needs at least one sequence")
    t = len(items[0])
    if any(len(c) != t for c in items):
        raise ValueError(f"all sequences must have the same number of chunks, got {[len(c) for c in items]}")
    n = max(c.units.shape[1] for c in items)
    b = len(items)
    units = np.zeros((b, t, n), dtype=np.int64)
    rel = np.zeros((b, t, n), dtype=np.float32)
    mask = np.zeros((b, t, n), dtype=bool)
    for i, c in enumerate(items):
        w = c.units.shape[1]
        units[i, :, :w] = c.units
        rel[i, :, :w] = c.times
        mask[i, :, :w] = c.mask
    return {
        "units": torch.from_numpy(units).to(device),
        "times": torch.from_numpy(rel).to(device),
        "mask": torch.from_numpy(mask).to(device),
    }
