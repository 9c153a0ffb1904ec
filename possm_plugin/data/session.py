"""One recorded (or simulated) session: spike events plus behaviour, and its on-disk format.

The on-disk format is one NPZ file per session (``<session_id>.npz``, no pickled objects) with:

======================  ==================  =================================================
key                     dtype / shape       meaning
======================  ==================  =================================================
``session_id``          str scalar          e.g. ``"sim-m0-s003"``; unit ids are ``session/unit``
``subject``             str scalar          animal / participant id
``task``                str scalar          ``regression`` | ``classification`` | ``ctc``
``spike_times``         float64 (S,)        seconds, sorted ascending
``spike_units``         int32 (S,)          index into ``unit_ids``
``unit_ids``            str (U,)            full unit ids, unique
``target_times``        float64 (M,)        seconds, sorted, the behaviour clock (same as spikes)
``targets``             float32 (M, C)      regression targets (e.g. hand velocity); (M, 0) otherwise
``target_names``        str (C,)            e.g. ``["vx", "vy"]``
``phase``               int8 (M,)           0 other/return, 1 hold, 2 reach (loss weights)
``trials``              float64 (K, 2)      start and end time of each trial
``trial_labels``        int64 (K,)          class of each trial (classification), else -1
``label_seq``           int64 (L,)          concatenated label sequences (ctc)
``label_offsets``       int64 (K + 1,)      trial k owns ``label_seq[off[k]:off[k+1]]``
``n_classes``           int64 scalar        classes (classification/ctc, excluding CTC blank)
``target_scale``        float32 scalar      targets are divided by it for training
``meta``                str scalar          JSON with anything else (simulator parameters)
``fingerprint``         str scalar          :attr:`Session.fingerprint` when saved; checked on load
======================  ==================  =================================================

Identity: a session id names a recording, and :attr:`Session.fingerprint` (a short sha256 over the
unit count and the spikes) says which one. Files written by :meth:`Session.save` carry it and
:meth:`Session.load` refuses a file whose content no longer matches it (files without it load and
compute it). Checkpoints record the fingerprint of every session they were trained on, and training,
fine-tuning, evaluation and calibration refuse a session whose id the model knows but whose content
differs (:func:`possm_plugin.data.identity.check_sessions`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from possm_plugin.errors import DataError

__all__ = ["Session", "load_sessions", "PHASE_OTHER", "PHASE_HOLD", "PHASE_REACH", "TASKS"]

# what Session.load accepts for each key (numpy dtype kinds; "scalar": a single value)
_NUMERIC = ("spike_times", "spike_units", "target_times", "targets", "phase", "trials", "trial_labels", "label_seq", "label_offsets")
_NUMERIC_SCALARS = ("n_classes", "target_scale")
_STRING_SCALARS = ("session_id", "subject", "task", "meta", "fingerprint", "origin")
_STRING_LISTS = ("unit_ids", "target_names")
_INTEGERS = ("spike_units", "phase", "trial_labels", "label_seq", "label_offsets", "n_classes")

PHASE_OTHER, PHASE_HOLD, PHASE_REACH = 0, 1, 2
TASKS = ("regression", "classification", "ctc")


@dataclass
class Session:
    """Spikes and behaviour of one session. See the module docstring for each field."""

    session_id: str
    spike_times: np.ndarray
    spike_units: np.ndarray
    unit_ids: list[str]
    target_times: np.ndarray
    targets: np.ndarray
    trials: np.ndarray
    subject: str = "unknown"
    task: str = "regression"
    target_names: list[str] = field(default_factory=lambda: ["vx", "vy"])
    phase: np.ndarray | None = None
    trial_labels: np.ndarray | None = None
    label_seq: np.ndarray | None = None
    label_offsets: np.ndarray | None = None
    n_classes: int = 0
    target_scale: float = 1.0
    meta: dict = field(default_factory=dict)
    origin: str | None = None

    def __post_init__(self) -> None:
        self.spike_times = np.asarray(self.spike_times, dtype=np.float64).reshape(-1)
        self.spike_units = np.asarray(self.spike_units, dtype=np.int32).reshape(-1)
        self.unit_ids = [str(u) for u in self.unit_ids]
        self.target_times = np.asarray(self.target_times, dtype=np.float64).reshape(-1)
        self.targets = np.asarray(self.targets, dtype=np.float32)
        if self.targets.ndim == 1:
            self.targets = self.targets.reshape(-1, 1 if self.targets.size else 0)
        self.trials = np.asarray(self.trials, dtype=np.float64).reshape(-1, 2)
        self.target_names = [str(n) for n in self.target_names]
        n_t = len(self.target_times)
        self.phase = (
            np.zeros(n_t, dtype=np.int8) if self.phase is None else np.asarray(self.phase, dtype=np.int8)
        )
        k = len(self.trials)
        self.trial_labels = (
            np.full(k, -1, dtype=np.int64)
            if self.trial_labels is None
            else np.asarray(self.trial_labels, dtype=np.int64)
        )
        self.label_seq = np.zeros(0, np.int64) if self.label_seq is None else np.asarray(self.label_seq, np.int64)
        self.label_offsets = (
            np.zeros(k + 1, np.int64) if self.label_offsets is None else np.asarray(self.label_offsets, np.int64)
        )
        self.n_classes = int(self.n_classes)
        self.target_scale = float(self.target_scale)
        self.validate()

    # -- checks ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`DataError` naming the first inconsistency."""
        sid = self.session_id

        def bad(msg: str) -> DataError:
            return DataError(f"session {sid!r}: {msg}")

        if not sid or "/" in sid:
            raise bad("session_id must be a non-empty string without '/'")
        if self.task not in TASKS:
            raise bad(f"task must be one of {TASKS}, got {self.task!r}")
        if len(self.spike_times) != len(self.spike_units):
            raise bad(f"spike_times ({len(self.spike_times)}) and spike_units ({len(self.spike_units)}) differ in length")
        if not np.all(np.isfinite(self.spike_times)):
            raise bad("spike_times contains NaN or inf")
        if len(self.spike_times) > 1 and np.any(np.diff(self.spike_times) < 0):
            raise bad("spike_times must be sorted ascending")
        n_units = len(self.unit_ids)
        if len(set(self.unit_ids)) != n_units:
            raise bad("unit_ids are not unique")
        if len(self.spike_units) and (self.spike_units.min() < 0 or self.spike_units.max() >= n_units):
            raise bad(f"spike_units must index unit_ids (0..{n_units - 1})")
        if self.targets.shape[0] != len(self.target_times):
            raise bad(f"targets has {self.targets.shape[0]} rows but target_times has {len(self.target_times)}")
        if self.task == "regression":
            if self.targets.shape[1] != len(self.target_names):
                raise bad(f"targets has {self.targets.shape[1]} columns but target_names {self.target_names}")
            if not np.all(np.isfinite(self.targets)):
                raise bad("targets contains NaN or inf")
        if len(self.phase) != len(self.target_times):
            raise bad("phase must have one entry per target time")
        if len(self.target_times) > 1 and np.any(np.diff(self.target_times) <= 0):
            raise bad("target_times must be strictly increasing")
        if np.any(self.trials[:, 1] < self.trials[:, 0]):
            raise bad("each trial must end after it starts")
        if len(self.trial_labels) != len(self.trials):
            raise bad("trial_labels must have one entry per trial")
        if len(self.label_offsets) != len(self.trials) + 1:
            raise bad("label_offsets must have len(trials) + 1 entries")
        if self.task in ("classification", "ctc") and self.n_classes <= 0:
            raise bad(f"task {self.task!r} needs n_classes > 0")
        if not np.isfinite(self.target_scale) or self.target_scale <= 0:
            raise bad(f"target_scale must be positive, got {self.target_scale}")

    # -- views -----------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    @property
    def fingerprint(self) -> str:
        """16 hex digits of the sha256 over the unit count, ``spike_units`` (int32 little-endian) and
        ``spike_times`` (float64 little-endian): two sessions with the same id but other units or
        spikes have different fingerprints. Behaviour, trials and names are not part of it."""
        h = hashlib.sha256(b"possm-session-v1")
        h.update(np.int64(self.n_units).astype("<i8").tobytes())
        h.update(np.ascontiguousarray(self.spike_units, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(self.spike_times, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    @property
    def identity(self) -> str:
        """The fingerprint of the recording this session is: :attr:`origin` for a part cut from a
        recording (:meth:`cut`), else its own :attr:`fingerprint`. Models record and check this."""
        return self.origin or self.fingerprint

    def cut(self, trials: np.ndarray) -> "Session":
        """The given trials only, laid back to back from 0 s in the given order (spikes, behaviour
        samples in ``(start, end]`` and phases shifted; same session and unit ids). The part keeps the
        recording's :attr:`identity` (its ``origin``): the held-out trials of a recording decode with
        the embeddings learnt on its other trials."""
        trials = np.asarray(trials, dtype=np.int64).reshape(-1)
        times, units, tt, tg, ph, tr = [], [], [], [], [], []
        clock = 0.0
        for k in trials:
            a, b = self.trials[k]
            lo, hi = np.searchsorted(self.spike_times, [a, b], side="left")
            times.append(self.spike_times[lo:hi] - a + clock)
            units.append(self.spike_units[lo:hi])
            sel = (self.target_times > a) & (self.target_times <= b)
            tt.append(self.target_times[sel] - a + clock)
            tg.append(self.targets[sel])
            ph.append(self.phase[sel])
            tr.append((clock, clock + (b - a)))
            clock += b - a
        seqs = [self.trial_labels_seq(int(k)) for k in trials]
        offsets = np.concatenate([[0], np.cumsum([len(q) for q in seqs])]).astype(np.int64)
        cat = lambda xs, like: np.concatenate(xs) if xs else like[:0]  # noqa: E731
        return Session(
            session_id=self.session_id, spike_times=cat(times, self.spike_times), spike_units=cat(units, self.spike_units),
            unit_ids=list(self.unit_ids), target_times=cat(tt, self.target_times), targets=cat(tg, self.targets),
            trials=np.asarray(tr, dtype=np.float64).reshape(-1, 2), subject=self.subject, task=self.task,
            target_names=list(self.target_names), phase=cat(ph, self.phase), trial_labels=self.trial_labels[trials],
            label_seq=cat(seqs, self.label_seq), label_offsets=offsets, n_classes=self.n_classes,
            target_scale=self.target_scale, meta=dict(self.meta), origin=self.identity,
        )

    @property
    def duration(self) -> float:
        ends = [self.trials[-1, 1] if len(self.trials) else 0.0]
        if len(self.spike_times):
            ends.append(self.spike_times[-1])
        if len(self.target_times):
            ends.append(self.target_times[-1])
        return float(max(ends))

    def spike_unit_ids(self) -> np.ndarray:
        """The unit id string of every spike (object array)."""
        return np.asarray(self.unit_ids, dtype=object)[self.spike_units]

    def trial_labels_seq(self, k: int) -> np.ndarray:
        return self.label_seq[self.label_offsets[k] : self.label_offsets[k + 1]]

    def split_trials(self, *, valid_fraction: float = 0.2, test_fraction: float = 0.0) -> dict[str, np.ndarray]:
        """Trial indices for train/valid/test: contiguous blocks in time (valid and test at the end)."""
        k = len(self.trials)
        n_test = int(round(k * test_fraction))
        n_valid = int(round(k * valid_fraction))
        n_train = k - n_valid - n_test
        if n_train <= 0:
            raise DataError(f"session {self.session_id!r}: {k} trials is too few to split")
        idx = np.arange(k)
        return {"train": idx[:n_train], "valid": idx[n_train : n_train + n_valid], "test": idx[n_train + n_valid :]}

    # -- disk ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path / f"{self.session_id}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            session_id=np.str_(self.session_id),
            subject=np.str_(self.subject),
            task=np.str_(self.task),
            spike_times=self.spike_times,
            spike_units=self.spike_units,
            unit_ids=np.asarray(self.unit_ids, dtype=np.str_),
            target_times=self.target_times,
            targets=self.targets,
            target_names=np.asarray(self.target_names, dtype=np.str_),
            phase=self.phase,
            trials=self.trials,
            trial_labels=self.trial_labels,
            label_seq=self.label_seq,
            label_offsets=self.label_offsets,
            n_classes=np.int64(self.n_classes),
            target_scale=np.float32(self.target_scale),
            meta=np.str_(json.dumps(self.meta)),
            fingerprint=np.str_(self.fingerprint),
            **({"origin": np.str_(self.origin)} if self.origin else {}),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Session":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"session file {str(path)!r} does not exist")
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # our handle: closed even when numpy fails
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DataError(f"session file {str(path)!r} is not a readable NPZ file ({exc})") from None
        required = ("session_id", "spike_times", "spike_units", "unit_ids", "target_times", "targets", "trials")
        missing = [k for k in required if k not in d]
        if missing:
            raise DataError(f"session file {str(path)!r} lacks {missing}")
        for key, v in d.items():
            numeric = key in _NUMERIC or key in _NUMERIC_SCALARS
            if key in _NUMERIC or key in _NUMERIC_SCALARS or key in _STRING_SCALARS or key in _STRING_LISTS:
                if v.dtype.kind not in ("biuf" if numeric else "US"):
                    want = "real numbers" if numeric else "strings"
                    raise DataError(f"session file {str(path)!r}: {key!r} holds {v.dtype} values, expected {want}")
                if (key in _NUMERIC_SCALARS or key in _STRING_SCALARS) and v.size != 1:
                    raise DataError(f"session file {str(path)!r}: {key!r} must be a single value, got shape {v.shape}")
                if key in _INTEGERS and v.dtype.kind == "f" and not (np.isfinite(v).all() and (v == np.round(v)).all()):
                    raise DataError(f"session file {str(path)!r}: {key!r} must hold whole numbers")
                if key in _STRING_LISTS and v.ndim != 1:
                    raise DataError(f"session file {str(path)!r}: {key!r} must be a 1-d list of strings, got shape {v.shape}")

        def opt(key, default=None):
            if key not in d:
                return default
            return d[key].reshape(-1)[0] if key in _STRING_SCALARS or key in _NUMERIC_SCALARS else d[key]

        try:
            meta = json.loads(str(opt("meta", "{}")))
        except json.JSONDecodeError as exc:
            raise DataError(f"session file {str(path)!r}: meta is not JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise DataError(f"session file {str(path)!r}: meta must be a JSON object, got {type(meta).__name__}")
        try:
            session = cls._from_arrays(d, opt, meta)
        except DataError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # shapes that do not fit together, absurd values
            raise DataError(f"session file {str(path)!r} is malformed: {exc}") from None
        stored = opt("fingerprint")
        if stored is not None and str(stored) != session.fingerprint:
            raise DataError(
                f"session file {str(path)!r}: its spikes do not match the fingerprint stored with them "
                f"(stored {str(stored)}, computed {session.fingerprint}); the file was modified or is corrupt"
            )
        return session

    @classmethod
    def _from_arrays(cls, d: dict, opt, meta: dict) -> "Session":
        return cls(
            session_id=str(opt("session_id")),
            subject=str(opt("subject", "unknown")),
            task=str(opt("task", "regression")),
            spike_times=d["spike_times"],
            spike_units=d["spike_units"],
            unit_ids=[str(u) for u in d["unit_ids"]],
            target_times=d["target_times"],
            targets=d["targets"],
            target_names=[str(n) for n in opt("target_names", np.asarray(["vx", "vy"]))],
            phase=opt("phase"),
            trials=d["trials"],
            trial_labels=opt("trial_labels"),
            label_seq=opt("label_seq"),
            label_offsets=opt("label_offsets"),
            n_classes=int(opt("n_classes", 0)),
            target_scale=float(opt("target_scale", 1.0)),
            meta=meta,
            origin=str(opt("origin")) if opt("origin") is not None else None,
        )


def load_sessions(path: str | Path, *, pattern: str = "*.npz") -> list[Session]:
    """Every session in a directory (sorted by file name), or the one file ``path`` names."""
    path = Path(path)
    if path.is_file():
        return [Session.load(path)]
    if not path.is_dir():
        raise DataError(f"data path {str(path)!r} is neither a session file nor a directory")
    files = sorted(path.glob(pattern))
    if not files:
        raise DataError(f"no session files ({pattern}) in {str(path)!r}; create some with `possm simulate`")
    return [Session.load(f) for f in files]
