"""NWB (Neurodata Without Borders) files -> :class:`~possm_plugin.data.session.Session`, through pynwb.

What is read:

* **spikes**: the Units table (``nwbfile.units``): every unit's ``spike_times``; the unit ids
  (``units.id``) and, when present, each unit's first electrode (``units.electrodes``) name the units;
  ``unit_where`` keeps units by column values (e.g. ``{"heldout": [False]}`` for NLB data sets);
* **behaviour**: one TimeSeries (or SpatialSeries) found by name anywhere in the file, typically in
  ``processing/behavior`` (e.g. ``hand_vel`` or ``Position/hand_pos``) or ``acquisition``; its
  ``timestamps`` (or ``starting_time`` + ``rate``) and data (optionally some columns only). A position
  series can be differentiated into velocity (``derive_velocity=True``, central differences over the
  timestamps). Samples with NaN are dropped (the gaps are interpolated across on the chunk grid, and
  their count is kept in ``meta``);
* **trials** (the intervals that are trained on and evaluated): the ``trials`` table, or any other
  TimeIntervals table (``intervals=``), with chosen start/stop columns plus offsets (for example
  ``start="move_onset_time", start_offset=-0.25, stop="move_onset_time", stop_offset=0.5``), filtered
  by column values (``trial_where={"split": ["train", "val"]}``); without a table the whole
  recording is one trial;
* **phase** (optional): behaviour samples between two trial columns
  (``reach=("move_onset_time", "stop_time")``) get the reach phase (loss weight 5 in POSSM training);
  every other sample is phase "other" (weight 1).

Install with ``pip install possm-plugin[nwb]``. See ``docs/data.md`` for DANDI examples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from possm_plugin.data.session import PHASE_OTHER, PHASE_REACH, Session
from possm_plugin.errors import ConfigError, DataError

__all__ = ["load_nwb", "nwb_series"]


def _pynwb():
    try:
        import pynwb
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError("reading NWB files needs pynwb: pip install 'possm-plugin[nwb]'") from None
    return pynwb


def _open(path: str | Path):
    pynwb = _pynwb()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"NWB file {str(path)!r} does not exist")
    try:
        io = pynwb.NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as exc:  # h5py / hdmf raise many kinds
        raise DataError(f"{str(path)!r} is not a readable NWB file ({type(exc).__name__}: {exc})") from None
    return io, nwb


def _obj_path(obj) -> str:
    parts = []
    while obj is not None and getattr(obj, "parent", None) is not None:
        parts.append(obj.name)
        obj = obj.parent
    return "/".join(reversed(parts))


def _all_series(nwb) -> list[tuple[str, object]]:
    """(path, TimeSeries) of every time series in acquisition and processing modules."""
    from pynwb import TimeSeries

    out = []
    for obj in nwb.objects.values():
        if isinstance(obj, TimeSeries):
            p = _obj_path(obj)
            top = nwb.acquisition.get(obj.name)
            if top is obj:
                p = f"acquisition/{obj.name}"
            elif not p.startswith(("acquisition", "processing", "stimulus", "analysis")):
                p = f"processing/{p}" if any(p.startswith(m + "/") or p == m for m in nwb.processing) else p
            out.append((p, obj))
    return sorted(out, key=lambda x: x[0])


def nwb_series(path: str | Path) -> list[dict]:
    """The time series of an NWB file, to choose a target: ``[{"path", "name", "shape", "unit"}]``."""
    io, nwb = _open(path)
    try:
        return [
            {"path": p, "name": s.name, "shape": tuple(s.data.shape), "unit": str(getattr(s, "unit", ""))}
            for p, s in _all_series(nwb)
        ]
    finally:
        io.close()


def _find_series(nwb, target: str):
    found = [(p, s) for p, s in _all_series(nwb) if s.name == target or p == target or p.endswith("/" + target)]
    if not found:
        names = [p for p, _ in _all_series(nwb)]
        raise DataError(f"no time series named {target!r} in the NWB file; it has {names}")
    if len(found) > 1:
        raise DataError(f"{target!r} matches several time series {[p for p, _ in found]}; pass the full path")
    return found[0]


def _timestamps(series) -> np.ndarray:
    if series.timestamps is not None:
        return np.asarray(series.timestamps[:], dtype=np.float64)
    n = series.data.shape[0]
    if series.rate is None:
        raise DataError(f"time series {series.name!r} has neither timestamps nor a rate")
    return float(series.starting_time or 0.0) + np.arange(n, dtype=np.float64) / float(series.rate)


def _column(table, name: str) -> np.ndarray:
    if name not in table.colnames and name not in ("start_time", "stop_time", "id"):
        raise DataError(f"table {table.name!r} has no column {name!r}; its columns are {list(table.colnames)}")
    if name == "id":
        return np.asarray(table.id.data[:])
    return np.asarray(table[name].data[:])


def _where(table, where: dict | None) -> np.ndarray:
    n = len(table)
    keep = np.ones(n, dtype=bool)
    for col, allowed in (where or {}).items():
        vals = _column(table, col)
        vals = np.asarray([v.decode() if isinstance(v, bytes) else v for v in vals], dtype=object)
        keep &= np.isin(vals, np.asarray(list(allowed), dtype=object))
    return keep


def _sanitize(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-")
    return s or "nwb"


def load_nwb(
    path: str | Path,
    *,
    target: str,
    columns: Sequence[int] | None = None,
    target_names: Sequence[str] | None = None,
    derive_velocity: bool = False,
    target_scale: float | None = None,
    intervals: str | None = "trials",
    start: str = "start_time",
    stop: str = "stop_time",
    start_offset: float = 0.0,
    stop_offset: float = 0.0,
    trial_where: dict[str, Sequence] | None = None,
    reach: tuple[str, str] | None = None,
    unit_where: dict[str, Sequence] | None = None,
    unit_label: str = "id",
    session_id: str | None = None,
    subject: str | None = None,
) -> Session:
    """Read an NWB file into a regression Session.

    Args:
        path: the ``.nwb`` file.
        target: the behaviour series: its name (``"hand_vel"``) or path
            (``"processing/behavior/Position/hand_pos"``); :func:`nwb_series` lists them.
        columns: which columns of the series to keep (default all; e.g. ``[0, 1]`` for x, y).
        target_names: output names (default ``vx, vy`` for 2-D velocity, ``x, y`` for 2-D position,
            else ``<series>_<i>``).
        derive_velocity: differentiate the series (position -> velocity) by central differences.
        target_scale: targets are divided by it for training; default: their RMS rounded to 2
            significant digits, so they are about unit size.
        intervals: the TimeIntervals table that defines the trials (``"trials"``, or the name of
            another table in ``intervals/``); None: the whole recording is one trial.
        start, stop: columns giving each trial's start and stop times.
        start_offset, stop_offset: seconds added to them.
        trial_where: keep trials whose column values are listed, e.g. ``{"split": ["train", "val"]}``.
        reach: ``(from_column, to_column)``: samples between them (within each trial) get the reach
            phase; otherwise every sample is phase "other".
        unit_where: keep units whose column values are listed, e.g. ``{"heldout": [False]}``.
        unit_label: ``"id"``: units are named ``<session_id>/<unit id>``; ``"electrode"``:
            ``<session_id>/e<electrode>-<unit id>`` (needs the ``electrodes`` column).
        session_id: default: the file name without its extension (cleaned of unsafe characters).
        subject: default: the file's ``subject.subject_id`` (or ``"unknown"``).

    Returns:
        A validated Session; ``meta["nwb"]`` records the choices and what was dropped.
    """
    if unit_label not in ("id", "electrode"):
        raise ConfigError(f"unit_label must be 'id' or 'electrode', got {unit_label!r}")
    path = Path(path)
    io, nwb = _open(path)
    try:
        return _load(
            nwb, path, target=target, columns=columns, target_names=target_names,
            derive_velocity=derive_velocity, target_scale=target_scale, intervals=intervals, start=start,
            stop=stop, start_offset=start_offset, stop_offset=stop_offset, trial_where=trial_where, reach=reach,
            unit_where=unit_where, unit_label=unit_label, session_id=session_id, subject=subject,
        )
    finally:
        io.close()


def _load(nwb, path: Path, **o) -> Session:
    sid = _sanitize(o["session_id"] if o["session_id"] is not None else path.stem)
    subject = o["subject"]
    if subject is None:
        subject = getattr(nwb.subject, "subject_id", None) if nwb.subject is not None else None
        subject = subject or "unknown"

    # ---- units --------------------------------------------------------------------------
    units = nwb.units
    if units is None or len(units) == 0:
        raise DataError(f"{str(path)!r} has no Units table (sorted spikes); threshold crossings in "
                        "acquisition must be converted to a Units table first")
    keep_u = _where(units, o["unit_where"])
    st = units["spike_times"]
    flat = np.asarray(st.target.data[:], dtype=np.float64)
    ends = np.asarray(st.data[:], dtype=np.int64)
    begins = np.concatenate([[0], ends[:-1]])
    ids = np.asarray(units.id.data[:])
    electrodes = None
    if "electrodes" in units.colnames:
        el = units["electrodes"]
        if hasattr(el, "target") and hasattr(el.target, "table"):  # ragged: several per unit
            e_flat = np.asarray(el.target.data[:])
            e_end = np.asarray(el.data[:], dtype=np.int64)
            e_beg = np.concatenate([[0], e_end[:-1]])
            electrodes = np.asarray([int(e_flat[b]) if e > b else -1 for b, e in zip(e_beg, e_end)])
        else:
            electrodes = np.asarray(el.data[:]).astype(np.int64).reshape(len(units), -1)[:, 0]
    if o["unit_label"] == "electrode" and electrodes is None:
        raise DataError("unit_label='electrode' needs an electrodes column in the Units table")
    sel = np.flatnonzero(keep_u)
    if not len(sel):
        raise DataError(f"no unit passes unit_where={o['unit_where']}")
    unit_ids, times_l, units_l = [], [], []
    for j, u in enumerate(sel):
        label = f"{ids[u]}" if o["unit_label"] == "id" else f"e{electrodes[u]}-{ids[u]}"
        unit_ids.append(f"{sid}/{label}")
        t = flat[begins[u] : ends[u]]
        times_l.append(t)
        units_l.append(np.full(len(t), j, dtype=np.int32))
    spike_times = np.concatenate(times_l) if times_l else np.zeros(0)
    spike_units = np.concatenate(units_l) if units_l else np.zeros(0, np.int32)
    n_bad = int((~np.isfinite(spike_times)).sum())
    ok = np.isfinite(spike_times)
    spike_times, spike_units = spike_times[ok], spike_units[ok]
    order = np.argsort(spike_times, kind="stable")
    spike_times, spike_units = spike_times[order], spike_units[order]

    # ---- behaviour ----------------------------------------------------------------------
    spath, series = _find_series(nwb, o["target"])
    tt = _timestamps(series)
    y = np.asarray(series.data[:], dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != len(tt):
        raise DataError(f"series {spath!r} has {y.shape[0]} samples but {len(tt)} timestamps")
    if o["columns"] is not None:
        cols = list(o["columns"])
        if not cols or min(cols) < 0 or max(cols) >= y.shape[1]:
            raise ConfigError(f"columns must index the {y.shape[1]} columns of {spath!r}, got {cols}")
        y = y[:, cols]
    order = np.argsort(tt, kind="stable")
    tt, y = tt[order], y[order]
    if o["derive_velocity"]:
        good = np.all(np.isfinite(y), axis=1)
        vel = np.full_like(y, np.nan)
        if good.sum() >= 2:
            vel[good] = np.gradient(y[good], tt[good], axis=0)
        y = vel
    finite = np.all(np.isfinite(y), axis=1) & np.isfinite(tt)
    n_nan = int((~finite).sum())
    tt, y = tt[finite], y[finite]
    keep_t = np.concatenate([[True], np.diff(tt) > 0]) if len(tt) else np.zeros(0, bool)
    n_dup = int((~keep_t).sum())
    tt, y = tt[keep_t], y[keep_t]
    if len(tt) < 2:
        raise DataError(f"series {spath!r} has fewer than 2 finite samples")
    names = o["target_names"]
    if names is None:
        c = y.shape[1]
        vel_like = o["derive_velocity"] or "vel" in series.name.lower()
        if c == 2:
            names = ["vx", "vy"] if vel_like else ["x", "y"]
        elif c == 3:
            names = ["vx", "vy", "vz"] if vel_like else ["x", "y", "z"]
        else:
            names = [f"{series.name}_{i}" for i in range(c)]
    names = list(names)
    if len(names) != y.shape[1]:
        raise ConfigError(f"target_names {names} must name each of the {y.shape[1]} target columns")
    scale = o["target_scale"]
    if scale is None:
        rms = float(np.sqrt(np.mean(y**2)))
        scale = float(f"{rms:.2g}") if rms > 0 else 1.0

    # ---- trials ---------------------------------------------------------------------------
    table = None
    if o["intervals"] is not None:
        table = nwb.trials if o["intervals"] == "trials" else (nwb.intervals.get(o["intervals"]) if nwb.intervals else None)
        if table is None:
            have = (["trials"] if nwb.trials is not None else []) + list(nwb.intervals or {})
            raise DataError(f"no intervals table {o['intervals']!r} in {str(path)!r}; it has {have}")
    reach_iv = None
    if table is not None:
        keep_tr = _where(table, o["trial_where"])
        t0 = _column(table, o["start"]).astype(np.float64) + o["start_offset"]
        t1 = _column(table, o["stop"]).astype(np.float64) + o["stop_offset"]
        keep_tr &= np.isfinite(t0) & np.isfinite(t1) & (t1 > t0)
        trials = np.stack([t0[keep_tr], t1[keep_tr]], axis=1)
        if o["reach"] is not None:
            r0 = _column(table, o["reach"][0]).astype(np.float64)[keep_tr]
            r1 = _column(table, o["reach"][1]).astype(np.float64)[keep_tr]
            reach_iv = (r0, r1)
        n_trials_dropped = int((~keep_tr).sum())
        order = np.argsort(trials[:, 0], kind="stable")
        trials = trials[order]
        if reach_iv is not None:
            reach_iv = (reach_iv[0][order], reach_iv[1][order])
        if not len(trials):
            raise DataError(f"no trial passes trial_where={o['trial_where']} with finite, increasing {o['start']}/{o['stop']}")
    else:
        lo = min(float(tt[0]), float(spike_times[0]) if len(spike_times) else float(tt[0]))
        hi = max(float(tt[-1]), float(spike_times[-1]) if len(spike_times) else float(tt[-1]))
        trials = np.asarray([[lo, hi]])
        n_trials_dropped = 0

    phase = np.full(len(tt), PHASE_OTHER, dtype=np.int8)
    if reach_iv is not None:
        for (a, b), ra, rb in zip(trials, *reach_iv):
            lo_r, hi_r = max(a, ra), min(b, rb)
            if np.isfinite(lo_r) and np.isfinite(hi_r) and hi_r > lo_r:
                phase[(tt >= lo_r) & (tt <= hi_r)] = PHASE_REACH

    meta = {
        "nwb": {
            "file": path.name,
            "identifier": str(nwb.identifier),
            "target": spath,
            "columns": None if o["columns"] is None else list(o["columns"]),
            "derive_velocity": bool(o["derive_velocity"]),
            "intervals": o["intervals"],
            "start": o["start"], "stop": o["stop"],
            "start_offset": float(o["start_offset"]), "stop_offset": float(o["stop_offset"]),
            "trial_where": {k: [str(v) for v in vs] for k, vs in (o["trial_where"] or {}).items()},
            "unit_where": {k: [str(v) for v in vs] for k, vs in (o["unit_where"] or {}).items()},
            "unit_ids_nwb": [int(i) if np.issubdtype(type(i), np.integer) else str(i) for i in ids[sel]],
            "electrodes": None if electrodes is None else [int(e) for e in electrodes[sel]],
            "dropped": {"nan_target_samples": n_nan, "duplicate_timestamps": n_dup,
                        "nonfinite_spikes": n_bad, "trials": n_trials_dropped},
        }
    }
    return Session(
        session_id=sid,
        spike_times=spike_times,
        spike_units=spike_units,
        unit_ids=unit_ids,
        target_times=tt,
        targets=y.astype(np.float32),
        trials=trials,
        subject=str(subject),
        task="regression",
        target_names=names,
        phase=phase,
        target_scale=scale,
        meta=meta,
    )
