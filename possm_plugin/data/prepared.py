"""Training and evaluation data: windows of chunks cut from sessions, through the one tokenizer.

Every session is laid on the chunk grid ``start_i = i * step`` (t0 = 0, the session clock). Targets
are read at chunk ends (linear interpolation of the behaviour), as the output query of chunk i is
stamped at its end. A regression window is ``window_chunks`` consecutive chunks starting at a random
chunk inside the training trials; classification and CTC windows start at a trial's start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from possm_plugin.data.session import Session
from possm_plugin.errors import DataError, UnknownUnitError
from possm_plugin.model.possm import POSSM
from possm_plugin.model.tokenize import Chunks, chunk_starts, collate, tokenize

__all__ = ["PreparedSession", "prepare_sessions", "WindowSampler", "Batch"]


@dataclass
class PreparedSession:
    """A session mapped onto a model's vocabularies and its chunk grid."""

    session: Session
    session_row: int
    rows: np.ndarray  # (S,) vocabulary row of every spike
    times: np.ndarray  # (S,) spike times
    split: dict[str, np.ndarray]
    width: float
    step: float
    bin_s: float | None = None  # binned import: spikes are known only to their bin of this width

    @property
    def sid(self) -> str:
        return self.session.session_id

    def chunk_range(self, t_start: float, t_end: float) -> tuple[int, int]:
        """Chunks [i0, i1) that lie inside [t_start, t_end]."""
        i0 = int(np.ceil(t_start / self.step - 1e-9))
        i1 = int(np.floor((t_end - self.width) / self.step + 1e-9)) + 1
        return i0, max(i0, i1)

    def split_span(self, name: str) -> tuple[float, float]:
        idx = self.split[name]
        if not len(idx):
            raise DataError(f"session {self.sid!r}: split {name!r} has no trials")
        return float(self.session.trials[idx[0], 0]), float(self.session.trials[idx[-1], 1])

    def chunks(self, i0: int, n: int, *, keep_units: np.ndarray | None = None, max_tokens: int | None = None,
               rng: np.random.Generator | None = None, jitter_s: float | None = None) -> Chunks:
        """Tokens of chunks ``[i0, i0 + n)``. With ``rng``, every spike is placed anew at a uniformly random
        time inside its bin: the session's own bins for a binned import (the import's placement is invented
        anyway), else bins of ``jitter_s`` seconds from 0 s (nothing moves without one)."""
        starts = chunk_starts(0.0, i0 + n, self.step)[i0:]
        a, b = starts[0], starts[-1] + self.width
        w = self.bin_s if self.bin_s is not None else jitter_s
        jitter = rng is not None and w is not None and w > 0
        if jitter:  # whole bins around the window: a spike may move across a chunk edge inside its bin
            a, b = np.floor(a / w + 1e-9) * w, np.ceil(b / w - 1e-9) * w
        lo = np.searchsorted(self.times, a, side="left")
        hi = np.searchsorted(self.times, b, side="left")
        rows, times = self.rows[lo:hi], self.times[lo:hi]
        if jitter:
            k = np.floor(times / w)
            times = (k + rng.uniform(1e-6, 1 - 1e-6, len(times))) * w
        if keep_units is not None:
            sel = keep_units[rows]
            rows, times = rows[sel], times[sel]
        return tokenize(rows, times, starts=starts, width=self.width, max_tokens=max_tokens)

    def targets_at(self, ends: np.ndarray, scale: float) -> np.ndarray:
        s = self.session
        return np.stack([np.interp(ends, s.target_times, s.targets[:, c]) for c in range(s.targets.shape[1])], -1).astype(np.float32) / scale

    def phase_at(self, ends: np.ndarray) -> np.ndarray:
        s = self.session
        i = np.clip(np.searchsorted(s.target_times, ends, side="right") - 1, 0, len(s.target_times) - 1)
        return s.phase[i]


def prepare_sessions(model: POSSM, sessions: list[Session], *, valid_fraction: float = 0.2, test_fraction: float = 0.0) -> list[PreparedSession]:
    """Map sessions onto the model (their units and session ids must be in its vocabularies, and a
    known session id must name the recording the model knows: :func:`~possm_plugin.data.identity.check_sessions`)."""
    from possm_plugin.data.identity import check_sessions

    check_sessions(model, sessions)
    out = []
    cfg = model.config
    for s in sessions:
        if s.session_id not in model.session_vocab:
            raise UnknownUnitError(
                f"session {s.session_id!r} is not in the model's session vocabulary; fine-tune with "
                f"`possm finetune --mode ui` to add it", [s.session_id]
            )
        unit_rows = model.unit_vocab.lookup(s.unit_ids)
        out.append(
            PreparedSession(
                session=s,
                session_row=model.session_vocab.index(s.session_id),
                rows=unit_rows[s.spike_units],
                times=s.spike_times,
                split=s.split_trials(valid_fraction=valid_fraction, test_fraction=test_fraction),
                width=cfg.chunk_width,
                step=cfg.chunk_step,
                bin_s=_bin_width(s),
            )
        )
    return out


def _bin_width(s: Session) -> float | None:
    """Bin width of a session imported from binned counts on a grid from 0 s (None otherwise)."""
    imp = s.meta.get("import", {}) if isinstance(s.meta, dict) else {}
    if imp.get("source") != "binned" or not imp.get("bin_s"):
        return None
    return float(imp["bin_s"])


@dataclass
class Batch:
    units: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    session: torch.Tensor
    targets: torch.Tensor | None = None  # (B, T, C) regression
    weights: torch.Tensor | None = None  # (B, T)
    labels: torch.Tensor | None = None  # (B,) classification
    last: torch.Tensor | None = None  # (B,) index of the chunk whose output classifies the trial
    label_seqs: list[np.ndarray] | None = None  # CTC
    lengths: torch.Tensor | None = None  # (B,) valid chunks (CTC)

    def to(self, device) -> "Batch":
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self


class WindowSampler:
    """Random training windows over prepared sessions.

    Args:
        sessions: prepared sessions (all of one readout task).
        readout: ``regression``, ``classification`` or ``ctc``.
        window_chunks: chunks per regression / classification window (20 = 1 s).
        unit_dropout: keep a random fraction in [unit_dropout, 1] of each window's units (1 disables).
        phase_weights: loss weight of (other, hold, reach) chunks.
        target_scale: targets are divided by it.
        split: which trials to sample from.
    """

    def __init__(
        self, sessions: list[PreparedSession], *, readout: str, window_chunks: int = 20, unit_dropout: float = 0.6,
        phase_weights: tuple[float, float, float] = (1.0, 0.1, 5.0), target_scale: float = 1.0, split: str = "train",
        n_units: int = 0, max_tokens: int | None = None, seed: int = 0, bin_jitter: bool = False, jitter_s: float = 0.0,
    ) -> None:
        if not sessions:
            raise DataError("no sessions to sample windows from")
        self.sessions = sessions
        self.readout = readout
        self.window_chunks = window_chunks
        self.unit_dropout = float(unit_dropout)
        self.phase_weights = np.asarray(phase_weights, dtype=np.float32)
        self.target_scale = float(target_scale)
        self.split = split
        self.n_rows = n_units + 1
        self.max_tokens = max_tokens
        self.rng = np.random.default_rng(seed)
        self.bin_jitter = bool(bin_jitter)
        self.jitter_s = float(jitter_s)
        # candidate windows: (session, first chunk, n chunks, trial)
        self.items: list[tuple[int, int, int, int]] = []
        for si, ps in enumerate(sessions):
            if readout == "regression":
                a, b = ps.split_span(split)
                i0, i1 = ps.chunk_range(a, b)
                for i in range(i0, i1 - window_chunks + 1, max(1, window_chunks // 2)):
                    self.items.append((si, i, window_chunks, -1))
            else:
                for k in ps.split[split]:
                    ta, tb = ps.session.trials[k]
                    i0, i1 = ps.chunk_range(ta, tb)
                    n = i1 - i0 if readout == "ctc" else min(window_chunks, i1 - i0)
                    if n > 0:
                        self.items.append((si, i0, n, int(k)))
        if not self.items:
            raise DataError(f"no {split} windows of {window_chunks} chunks in the given sessions")

    def __len__(self) -> int:
        return len(self.items)

    def epoch(self, batch_size: int) -> list[list[int]]:
        order = self.rng.permutation(len(self.items))
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def _keep(self) -> np.ndarray | None:
        if self.unit_dropout >= 1.0:
            return None
        frac = self.rng.uniform(self.unit_dropout, 1.0)
        keep = self.rng.random(self.n_rows) < frac
        keep[0] = True
        return keep

    def batch(self, idx: list[int], *, augment: bool = True) -> Batch:
        chunks, sess = [], []
        targets, weights, labels, lasts, seqs, lengths = [], [], [], [], [], []
        t_max = max(self.items[i][2] for i in idx)
        for i in idx:
            si, c0, n, k = self.items[i]
            ps = self.sessions[si]
            if self.readout == "regression" and augment:
                c0 = min(c0 + int(self.rng.integers(0, max(1, self.window_chunks // 2))), self._last_start(si, c0))
            keep = self._keep() if augment else None
            move = self.bin_jitter if ps.bin_s is not None else self.jitter_s > 0
            ch = ps.chunks(c0, t_max, keep_units=keep, max_tokens=self.max_tokens,
                           rng=self.rng if (augment and move) else None, jitter_s=self.jitter_s)
            chunks.append(ch)
            sess.append(ps.session_row)
            ends = ch.starts + ps.width
            if self.readout == "regression":
                targets.append(ps.targets_at(ends, self.target_scale))
                weights.append(self.phase_weights[ps.phase_at(ends)])
            elif self.readout == "classification":
                labels.append(int(ps.session.trial_labels[k]))
                lasts.append(n - 1)
            else:
                seqs.append(ps.session.trial_labels_seq(k))
                lengths.append(n)
        t = collate(chunks)
        b = Batch(units=t["units"], times=t["times"], mask=t["mask"], session=torch.tensor(sess))
        if self.readout == "regression":
            b.targets = torch.from_numpy(np.stack(targets))
            b.weights = torch.from_numpy(np.stack(weights))
        elif self.readout == "classification":
            b.labels = torch.tensor(labels)
            b.last = torch.tensor(lasts)
        else:
            b.label_seqs = seqs
            b.lengths = torch.tensor(lengths)
        return b

    def _last_start(self, si: int, c0: int) -> int:
        ps = self.sessions[si]
        a, b = ps.split_span(self.split)
        _, i1 = ps.chunk_range(a, b)
        return max(c0, i1 - self.window_chunks)
