"""Binned data -> spike events -> a :class:`~possm_plugin.data.session.Session`.

Many public data sets keep only spike counts per time bin. POSSM reads spike *events*, so the
importer puts each bin's count back as that many events inside the bin. Two placements:

* ``"even"`` (default): the ``n`` events of a bin at ``start + (j + 0.5) / n * bin_s`` (the centres of n
  equal slots): exactly where every live source puts them, by the same function
  (:func:`possm_plugin.realtime.binned_events.binned_to_events`), so a model sees binned data placed one
  way in training and live. No randomness; spike timing within a bin carries no information.
* ``"uniform"``: each event at an independent uniformly random time inside its bin, from a seeded
  generator (``seed``), so the same call always gives the same events. (The earlier default:
  a session file imported then keeps its spikes; re-importing the raw file under its old id needs
  ``placement="uniform"`` to match a checkpoint trained on it, or the identity check refuses it.)

Either way the events stay strictly inside their bin, so binning them again on the same grid gives
the original counts exactly. Training moves them again at random inside their bins in every window
(``bin_jitter``), whatever the placement, so the placement matters for validation windows and for a
session's fingerprint (:attr:`~possm_plugin.data.session.Session.fingerprint`), which covers its spike
times. Bad counts (NaN, negative, not whole) refuse the file
(``DataError``): an importer checks a file once, before any training, rather than dropping values.
Bin ``k`` starts at ``t0 + k * bin_s`` (:func:`~possm_plugin.model.tokenize.chunk_starts`). Whatever
happened inside a bin is lost: sub-bin timing in such a session is invented, and a model should not
be credited for it.

Behaviour is given per bin; it is stamped at the bin *end* by default (``label_at="end"``): a causal
decoder that has seen the bin's spikes decodes the bin's value, as the usual binned decoders do. Use
``label_at="center"`` when the value is a bin average and you prefer to place it mid-bin.

:func:`load_binned` reads any NPZ file in the layout below; :func:`load_chewie` applies it to the two
real recordings bundled with the package (:func:`bundled_files`, :func:`bundled_sessions`; their
README in ``possm_plugin/assets/data`` says where they come from).

The NPZ layout :func:`load_binned` reads (T bins, U units, C outputs):

==================  ==============  ===============================================================
key                 shape           meaning
==================  ==============  ===============================================================
``rates_hz``        (T, U)          firing rate in each bin (count / ``bin_s``), or
``counts``          (T, U)          spike counts (whole numbers); used when both are present
``velocity`` etc.   (T, C) or (T,)  the behaviour to decode, one row per bin (any key: ``target=``)
``bin_s``           scalar          bin width in seconds (or pass ``bin_s=``)
``trial_lengths``   (K,)            optional: bins per trial, back to back (must sum to T)
``target``          (T,)            optional: the reach target of each bin (kept per trial in meta)
==================  ==============  ===============================================================
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from possm_plugin.data.session import PHASE_OTHER, PHASE_REACH, Session
from possm_plugin.errors import ConfigError, DataError
from possm_plugin.model.tokenize import chunk_starts
from possm_plugin.realtime.binned_events import binned_to_events

__all__ = [
    "PLACEMENTS",
    "counts_to_events",
    "session_from_counts",
    "load_binned",
    "load_chewie",
    "chewie_session_id",
    "bundled_files",
    "bundled_sessions",
    "nice_scale",
    "CHEWIE_FILE",
    "CHEWIE_TARGET_SCALE",
]

PLACEMENTS = ("uniform", "even")
#: File name of the first bundled real session (Chewie, 2013-10-03).
CHEWIE_FILE = "chewie_m1_center_out_2013-10-03_100ms.npz"
#: Chewie's hand velocity has a standard deviation of 8.5 (2013-10-03) to 14 (2013-12-19) per axis;
#: divided by 10 it is about unit size (:func:`nice_scale` gives 10 for both files).
CHEWIE_TARGET_SCALE = 10.0
#: Where the bundled recordings live (shipped as package data).
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "assets" / "data"
#: Output names of the usual behaviour keys (x, y, z axes).
_AXES = {"velocity": "v", "position": "p", "acceleration": "a", "force": "f"}
#: Where the bundled Chewie files were taken from, by recording date.
_CHEWIE_SOURCES = {"2013-10-03": "nerdslab/myow", "2013-12-19": "nerdslab/myow-neuro"}
_MARGIN = 1e-6  # of a bin, kept free at both edges


def _as_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2:
        raise DataError(f"counts must be (bins, units), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or (c.size and c.min() < 0):
        raise DataError("counts must be finite and >= 0")
    r = np.round(c)
    if c.size and np.abs(c - r).max() > 1e-3:
        raise DataError(
            f"counts must be whole numbers (largest deviation {np.abs(c - r).max():.3g}); if you have rates, "
            "multiply them by the bin width first"
        )
    return r.astype(np.int64)


def counts_to_events(
    counts: np.ndarray,
    *,
    bin_s: float,
    t0: float = 0.0,
    placement: str = "even",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Spike events of binned counts.

    Args:
        counts: (T, U) non-negative whole numbers (float or int).
        bin_s: bin width, seconds; bin ``k`` is ``[t0 + k * bin_s, t0 + (k + 1) * bin_s)``.
        t0: start of the first bin.
        placement: ``"uniform"`` (random within the bin, seeded) or ``"even"`` (evenly spread).
        seed: seed of the uniform placement.

    Returns:
        times (S,) float64 sorted ascending and units (S,) int32 (column of ``counts``).
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not (np.isfinite(bin_s) and bin_s > 0):
        raise ConfigError(f"bin_s must be a positive number of seconds, got {bin_s!r}")
    c = _as_counts(counts)
    n_bins, n_units = c.shape
    starts = chunk_starts(float(t0), n_bins, float(bin_s))
    flat = c.reshape(-1)
    total = int(flat.sum())
    cell = np.repeat(np.arange(flat.size), flat)  # one entry per event: bin * U + unit
    bins, units = cell // n_units, (cell % n_units).astype(np.int32)
    if placement == "uniform":
        lo, span = _MARGIN * bin_s, (1 - 2 * _MARGIN) * bin_s
        times = starts[bins] + lo + np.random.default_rng(seed).random(total) * span
    else:  # the placement of every live source, by the same function (events come in the same cell order)
        _, times, _ = binned_to_events(c, starts, float(bin_s))
    # keep every event inside [start, start + bin_s) despite rounding
    times = np.minimum(np.maximum(times, starts[bins]), np.nextafter(starts[bins] + bin_s, -np.inf))
    order = np.argsort(times, kind="stable")
    return times[order], units[order]


def session_from_counts(
    counts: np.ndarray,
    *,
    bin_s: float,
    targets: np.ndarray,
    session_id: str,
    target_names: list[str] | None = None,
    trial_lengths: np.ndarray | None = None,
    unit_ids: list[str] | None = None,
    phase: np.ndarray | int = PHASE_OTHER,
    subject: str = "unknown",
    t0: float = 0.0,
    placement: str = "even",
    seed: int = 0,
    label_at: str = "end",
    target_scale: float = 1.0,
    meta: dict | None = None,
) -> Session:
    """A regression session from binned counts and per-bin behaviour.

    Args:
        counts: (T, U) spike counts per bin.
        bin_s: bin width, seconds.
        targets: (T, C) behaviour of each bin (e.g. hand velocity).
        session_id: the session id (unit ids become ``session_id/uNNN`` unless ``unit_ids`` is given).
        target_names: names of the C outputs (default ``vx, vy`` for 2, else ``y0, y1, ...``).
        trial_lengths: (K,) bins per trial, laid back to back from the first bin (must sum to T);
            None: the whole recording is one trial.
        unit_ids: full unit ids (``session/unit``), one per column.
        phase: (T,) phase of every bin, or one phase for all.
        subject: subject id.
        t0: start time of the first bin.
        placement, seed: how events are placed in their bins (see the module docstring).
        label_at: ``"end"`` (default) or ``"center"``: where each bin's behaviour is stamped.
        target_scale: targets are divided by it for training (pick it so they are about unit size).
        meta: extra JSON-able information; the importer adds its own choices under ``"import"``.
    """
    c = _as_counts(counts)
    n_bins, n_units = c.shape
    y = np.asarray(targets, dtype=np.float32)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != n_bins:
        raise DataError(f"targets has {y.shape[0]} rows but counts has {n_bins} bins")
    if target_names is None:
        target_names = ["vx", "vy"] if y.shape[1] == 2 else [f"y{i}" for i in range(y.shape[1])]
    if label_at not in ("end", "center"):
        raise ConfigError(f"label_at must be 'end' or 'center', got {label_at!r}")
    if unit_ids is None:
        unit_ids = [f"{session_id}/u{i:03d}" for i in range(n_units)]
    if len(unit_ids) != n_units:
        raise DataError(f"{len(unit_ids)} unit ids for {n_units} count columns")
    if trial_lengths is None:
        trial_lengths = np.asarray([n_bins])
    trial_lengths = np.asarray(trial_lengths, dtype=np.int64).reshape(-1)
    if trial_lengths.size and (trial_lengths.min() <= 0 or trial_lengths.sum() != n_bins):
        raise DataError(f"trial_lengths must be positive and sum to the {n_bins} bins, got sum {trial_lengths.sum()}")
    ph = np.asarray(phase, dtype=np.int8)
    ph = np.full(n_bins, int(ph), dtype=np.int8) if ph.ndim == 0 else ph.reshape(-1)
    if len(ph) != n_bins:
        raise DataError(f"phase has {len(ph)} entries but counts has {n_bins} bins")

    times, units = counts_to_events(c, bin_s=bin_s, t0=t0, placement=placement, seed=seed)
    edges = chunk_starts(float(t0), n_bins + 1, float(bin_s))  # bin k: [edges[k], edges[k + 1])
    label_times = edges[1:] if label_at == "end" else edges[:-1] + 0.5 * bin_s
    bounds = edges[np.concatenate([[0], np.cumsum(trial_lengths)])]
    trials = np.stack([bounds[:-1], bounds[1:]], axis=1)  # contiguous: trial k ends where k+1 starts
    info = {"source": "binned", "bin_s": float(bin_s), "placement": placement, "seed": int(seed), "label_at": label_at}
    meta = dict(meta or {})
    meta["import"] = info
    json.dumps(meta)  # must be JSON-able: raises TypeError early otherwise
    return Session(
        session_id=session_id,
        spike_times=times,
        spike_units=units,
        unit_ids=unit_ids,
        target_times=label_times,
        targets=y,
        trials=trials,
        subject=subject,
        task="regression",
        target_names=target_names,
        phase=ph,
        target_scale=target_scale,
        meta=meta,
    )


def nice_scale(values: np.ndarray) -> float:
    """The default ``target_scale``: the mean per-column standard deviation of ``values`` rounded to
    the nearest number of the 1-2-5 series (..., 1, 2, 5, 10, 20, ...; nearest on a log scale), so
    that ``values / scale`` are about unit size and the scale is a round number that is easy to quote.
    Chewie's velocity (std 8.5 and 13.7) gives 10. Constant or empty values give 1."""
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(len(v), -1) if v.ndim else v.reshape(1, 1)
    sd = float(np.mean(v.std(axis=0))) if v.size else 0.0
    if not (np.isfinite(sd) and sd > 0):
        return 1.0
    exp = math.floor(math.log10(sd))
    cands = [m * 10.0**e for e in (exp - 1, exp, exp + 1) for m in (1, 2, 5)]
    return float(min(cands, key=lambda c: abs(math.log(c / sd))))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"binned data file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{str(path)!r} is not a readable NPZ file ({exc})") from None


def _target_names(target: str, n: int) -> list[str]:
    if target in _AXES and n <= 3:
        return [f"{_AXES[target]}{a}" for a in "xyz"[:n]]
    return [f"{target}{i}" for i in range(n)]


def load_binned(
    path: str | Path,
    *,
    session_id: str,
    subject: str = "unknown",
    bin_s: float | None = None,
    target: str = "velocity",
    placement: str = "even",
    seed: int = 0,
    label_at: str = "end",
    target_scale: float | None = None,
    phase: int = PHASE_OTHER,
    meta: dict | None = None,
) -> Session:
    """A regression session from an NPZ file of binned counts (layout in the module docstring).

    Args:
        path: the ``.npz`` file.
        session_id: the session id; units are ``<session_id>/u000``, ``u001``, ... in column order.
            Two imports of one file under two ids are two sessions with their own unit embeddings.
        subject: subject id.
        bin_s: bin width in seconds, when the file has no ``bin_s`` (if both are given they must agree).
        target: the key of the behaviour to decode (``velocity``, ``position``, ...); its columns are
            named ``vx, vy`` (``px, py``, ...) for the usual keys, else ``<target>0, <target>1, ...``.
        placement, seed, label_at: how counts become events and where labels sit
            (:func:`session_from_counts`).
        target_scale: targets are divided by it for training; default :func:`nice_scale` of the target.
        phase: the phase of every bin (default "other"; loss weights by phase are then uniform).
        meta: extra JSON-able information (the file name, the key and the reach targets are added).

    Raises:
        DataError: a missing file or key, counts that are not whole numbers, inconsistent shapes.
    """
    path = Path(path)
    d = _read_npz(path)
    if "counts" not in d and "rates_hz" not in d:
        raise DataError(f"{str(path)!r} has neither 'counts' nor 'rates_hz' (bins x units); keys: {sorted(d)}")
    if target not in d:
        raise DataError(f"{str(path)!r} has no {target!r} array to decode (--target / target=); keys: {sorted(d)}")
    file_bin = float(f"{float(np.asarray(d['bin_s']).reshape(-1)[0]):.7g}") if "bin_s" in d else None  # float32 0.1000000015 -> 0.1
    if bin_s is None and file_bin is None:
        raise DataError(f"{str(path)!r} has no 'bin_s'; give the bin width in seconds (--bin-s / bin_s=)")
    if bin_s is not None and file_bin is not None and abs(float(bin_s) - file_bin) > 1e-6 * file_bin:
        raise DataError(f"bin_s={bin_s!r} disagrees with the file's bin_s={file_bin!r} ({str(path)!r}); drop the argument")
    width = float(bin_s) if bin_s is not None else file_bin
    if not (np.isfinite(width) and width > 0):
        raise DataError(f"bin_s must be a positive number of seconds, got {width!r}")
    counts = d["counts"].astype(np.float64) if "counts" in d else d["rates_hz"].astype(np.float64) * width
    y = np.asarray(d[target], dtype=np.float32)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2:
        raise DataError(f"{str(path)!r}: {target!r} must be (bins,) or (bins, C), got shape {y.shape}")
    lengths = d["trial_lengths"].astype(np.int64) if "trial_lengths" in d else None
    info = {"file": path.name, "target": target}
    reach = d.get("target")
    if reach is not None and target != "target" and reach.ndim == 1 and len(reach) == len(y):
        bounds = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths is not None else np.asarray([0])
        if lengths is None or lengths.sum() == len(y):
            info["reach_target"] = np.asarray(reach)[bounds].astype(np.int64).tolist()
    return session_from_counts(
        counts,
        bin_s=width,
        targets=y,
        target_names=_target_names(target, y.shape[1]),
        trial_lengths=lengths,
        session_id=session_id,
        phase=phase,
        subject=subject,
        placement=placement,
        seed=seed,
        label_at=label_at,
        target_scale=nice_scale(y) if target_scale is None else float(target_scale),
        meta={**info, **(meta or {})},
    )


def chewie_session_id(path: str | Path) -> str:
    """``chewie-YYYYMMDD`` from the recording date in a Chewie file name (else ``chewie-<name>``)."""
    name = Path(path).stem
    m = re.search(r"(\d{4})-(\d{2})-(\d{2})", name)
    if m:
        return "chewie-" + "".join(m.groups())
    return "chewie-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def load_chewie(
    path: str | Path,
    *,
    target: str = "velocity",
    placement: str = "even",
    seed: int = 0,
    label_at: str = "end",
    target_scale: float = CHEWIE_TARGET_SCALE,
    session_id: str | None = None,
) -> Session:
    """A real Chewie M1 centre-out recording (e.g. a bundled one, :func:`bundled_files`) as a Session.

    Args:
        path: the ``.npz`` file, or a folder holding :data:`CHEWIE_FILE`.
        target: ``"velocity"`` (default), ``"position"``, ``"acceleration"`` or ``"force"`` (x, y).
        placement, seed, label_at: see :func:`session_from_counts`.
        target_scale: default :data:`CHEWIE_TARGET_SCALE` (velocity / 10 is about unit size).
        session_id: default ``chewie-YYYYMMDD`` from the date in the file name
            (:func:`chewie_session_id`); units are ``<session_id>/u000``, ...

    Counts are ``rates_hz * bin_s`` (whole numbers). Trials (the movement period of each reach) are
    laid back to back on one clock from 0 s, every bin is in the reach phase, the reach target (0-7)
    of each trial is kept in ``meta["reach_target"]``, and ``meta["dataset"]`` names the recording.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHEWIE_FILE
    if not path.is_file():
        raise DataError(f"Chewie data file {str(path)!r} does not exist; pass the path of a Chewie .npz file or its folder")
    if target not in _AXES:
        raise ConfigError(f"target must be one of {sorted(_AXES)}, got {target!r}")
    m = re.search(r"\d{4}-\d{2}-\d{2}", path.name)
    date = m.group(0) if m else "unknown date"
    source = _CHEWIE_SOURCES.get(date)
    dataset = f"Chewie M1 centre-out {date} (Miller lab, Dyer et al. 2017" + (f"; {source})" if source else ")")
    return load_binned(
        path, session_id=session_id or chewie_session_id(path), subject="chewie", target=target, placement=placement,
        seed=seed, label_at=label_at, target_scale=target_scale, phase=PHASE_REACH, meta={"dataset": dataset},
    )


def bundled_files() -> list[Path]:
    """The real recordings shipped with the package (Chewie 2013-10-03 and 2013-12-19), sorted by name."""
    files = sorted(BUNDLED_DIR.glob("*.npz"))
    if not files:
        raise DataError(f"no bundled recordings in {str(BUNDLED_DIR)!r}; the package data is missing (reinstall possm-plugin)")
    return files


def bundled_sessions(**kw) -> list[Session]:
    """The bundled recordings as sessions (``chewie-20131003``, ``chewie-20131219``); ``kw`` go to
    :func:`load_chewie` (``session_id`` excepted: each file keeps its own)."""
    if "session_id" in kw:
        raise ConfigError("bundled_sessions names each session from its file; load_chewie(path, session_id=...) renames one")
    return [load_chewie(f, **kw) for f in bundled_files()]
