"""A closed-loop experiment: calibrate every decoder on one open-loop block, run each in the loop on the
same seeds and sessions, and report the metrics (the JSON ``possm closed-loop`` and
``benchmarks/closed_loop.py`` print).

Per seed ``s``: session ``sim-{subject}-s{session_index + s:03d}`` (simulator seed 0, the subject the
bundled checkpoint was trained on; session indices it was not trained on), a calibration block of
``calibration_s`` seconds, then for each decoder a copy of the spike stream as the block left it and
``trials`` trials of the task with the same task and user seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from possm_plugin.closedloop.calibration import calibration_session, fit_kalman, fit_possm, fit_wiener
from possm_plugin.closedloop.decoders import BaselineLoopDecoder, LoopDecoder, OracleDecoder, PossmLoopDecoder
from possm_plugin.closedloop.metrics import summarize, trial_metrics
from possm_plugin.closedloop.runner import CHUNK_S, LoopResult, run_loop
from possm_plugin.closedloop.task import TaskConfig
from possm_plugin.closedloop.user import UserConfig
from possm_plugin.errors import ConfigError
from possm_plugin.sim.motor_stream import MotorSpikeStream

__all__ = ["ExperimentConfig", "DECODERS", "build_decoders", "run_experiment", "trajectories", "open_loop_r2", "closed_loop_r2", "closed_loop_gain"]

log = logging.getLogger("possm_plugin.closedloop")

#: decoders an experiment can run (``oracle``: the user's intent itself, the ceiling)
DECODERS = ("possm", "wiener", "kalman", "oracle")


@dataclass
class ExperimentConfig:
    """Everything an experiment depends on besides the seeds (JSON-able through :meth:`to_dict`)."""

    trials: int = 64
    subject: str = "m0"
    session_index: int = 10
    calibration_s: float = 120.0
    ui_epochs: int = 15
    checkpoint: str | None = None
    task: TaskConfig = field(default_factory=TaskConfig)
    user: UserConfig = field(default_factory=UserConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["user"]["bias_cm_s"] = list(d["user"]["bias_cm_s"])
        return d


def build_decoders(names, stream: MotorSpikeStream, cal, cfg: ExperimentConfig, *, seed: int) -> tuple[dict[str, LoopDecoder], dict]:
    """Fit the named decoders on the calibration session ``cal``; returns (decoders, fit info)."""
    out: dict[str, LoopDecoder] = {}
    info: dict = {}
    for name in names:
        t = time.perf_counter()
        if name == "possm":
            model, res = fit_possm(cal, checkpoint=cfg.checkpoint, epochs=cfg.ui_epochs, seed=seed)
            out[name] = PossmLoopDecoder(model, session=stream.session_id, unit_ids=stream.unit_ids)
            info[name] = {"calibration_r2": res.get("valid_r2"), "trainable_fraction": res["trainable_fraction"]}
        elif name in ("wiener", "kalman"):
            dec = fit_wiener(cal) if name == "wiener" else fit_kalman(cal)
            out[name] = BaselineLoopDecoder(dec, unit_ids=stream.unit_ids, chunk_s=CHUNK_S)
            info[name] = {}
        elif name == "oracle":
            out[name] = OracleDecoder()
            info[name] = {}
        else:
            raise ConfigError(f"unknown decoder {name!r}; choose from {DECODERS}")
        info[name]["fit_s"] = round(time.perf_counter() - t, 2)
    return out, info


def open_loop_r2(decoder: LoopDecoder, session) -> float:
    """R2 (mean of vx, vy) of ``decoder`` run chunk by chunk over an open-loop block ``session`` (from a
    fresh state at 0 s), against the cursor velocity at each chunk's end: what an offline evaluation
    reports, for comparison with the closed-loop metrics."""
    from possm_plugin.baselines.binning import bin_session
    from possm_plugin.training.metrics import r2_score

    b = bin_session(session, width=CHUNK_S, step=CHUNK_S)
    decoder.reset(float(b.starts[0]))
    order = np.argsort(session.spike_times, kind="stable")
    times, units = session.spike_times[order], session.spike_units[order]
    lo = np.searchsorted(times, b.starts, side="left")
    hi = np.searchsorted(times, b.starts + CHUNK_S, side="left")
    pred = np.stack([np.asarray(decoder.step(times[a:z], units[a:z], float(s + CHUNK_S), None), np.float64)
                     for a, z, s in zip(lo, hi, b.starts)])
    return float(np.mean(r2_score(b.targets, pred)))


def closed_loop_r2(res: LoopResult, delay_s: float) -> float:
    """R2 (mean of vx, vy) of the velocities decoded in the loop against the user's intent ``delay_s``
    earlier (the cursor velocity the spikes stand for; see :mod:`possm_plugin.sim.motor_stream`): how
    well the decoder reads the user while the user reacts to it, beside its open-loop R2."""
    from possm_plugin.training.metrics import r2_score

    d = int(round(delay_s / CHUNK_S))
    if len(res.decoded) <= d + 2:
        return float("nan")
    return float(np.mean(r2_score(res.intent[: len(res.intent) - d], res.decoded[d:])))


def closed_loop_gain(res: LoopResult, delay_s: float, *, max_speed: float | None = None) -> float:
    """Least-squares gain of the decoded velocity on the intent ``delay_s`` earlier (1: the decoder moves
    the cursor as fast as the user means; below 1: it damps what the user means), over the chunks whose
    delayed intent is slower than ``max_speed`` cm/s (None: all)."""
    d = int(round(delay_s / CHUNK_S))
    x, y = res.intent[: len(res.intent) - d], res.decoded[d:]
    if max_speed is not None:
        keep = np.hypot(x[:, 0], x[:, 1]) < max_speed
        x, y = x[keep], y[keep]
    den = float(np.sum(x * x))
    return float(np.sum(x * y) / den) if den > 0 else float("nan")


def trajectories(res: LoopResult, *, max_trials: int = 16) -> list[dict]:
    """Cursor paths of the first ``max_trials`` trials that start near the centre (centre-out reaches),
    from onset to end, rounded to 0.01 cm: ``[{"target": [x, y], "outcome": str, "xy": [[x, y], ...]}]``."""
    out = []
    for tr in res.trials:
        if tr.outcome == "running" or np.linalg.norm(tr.start_pos) > 3.0:
            continue
        sel = (res.t_end > tr.onset_s + 1e-9) & (res.t_end <= tr.end_s + 1e-9)
        xy = np.vstack([tr.start_pos[None, :], res.pos[sel]])
        out.append({"target": [round(float(v), 2) for v in tr.target], "outcome": tr.outcome,
                    "xy": np.round(xy, 2).tolist()})
        if len(out) >= max_trials:
            break
    return out


def _in_process(name, decoder, stream, *, seed, cfg, user):
    return run_loop(decoder, stream, n_trials=cfg.trials, seed=seed, task=cfg.task, user=user), None


def run_experiment(names, seeds, cfg: ExperimentConfig, *, progress=None, delays=(), loop=_in_process) -> dict:
    """Run every decoder in ``names`` on every seed; returns ``{"decoders": {name: metrics}, "seeds",
    "trials", "details"}`` (metrics pooled over the seeds' trials; ``details``: per seed metrics, fit
    info, counts, the first seed's trajectories and the configuration). ``delays``: feedback delays (s)
    to rerun every calibrated decoder at as well, into ``details["delay_sweep"][name][delay]``.
    ``loop(name, decoder, stream, *, seed, cfg, user) -> (LoopResult, extra)`` runs one block (default:
    :func:`~.runner.run_loop` in process; :mod:`.realtime` passes its own); a non-None ``extra`` is
    kept in ``details["loop"][seed][name]``."""
    names = list(names)
    for n in names:
        if n not in DECODERS:
            raise ConfigError(f"unknown decoder {n!r}; choose from {DECODERS}")
    seeds = [int(s) for s in seeds]
    pooled: dict[str, list] = {n: [] for n in names}
    details: dict = {"per_seed": {n: {} for n in names}, "fit": {}, "trajectories": {}, "config": cfg.to_dict(),
                     "counts": {n: {"trials": 0, "reentries": 0, "breaks": 0, "timeouts": 0} for n in names}}
    sweep: dict[str, dict[str, list]] = {n: {f"{d:g}": [] for d in delays} for n in names}
    t_all = time.perf_counter()
    for seed in seeds:
        stream = MotorSpikeStream(cfg.session_index + seed, subject=cfg.subject, noise_seed=seed)
        cal = calibration_session(stream, duration_s=cfg.calibration_s, seed=seed, radius_cm=cfg.task.radius_cm)
        decoders, info = build_decoders(names, stream, cal, cfg, seed=seed)
        held_out = calibration_session(MotorSpikeStream(cfg.session_index + seed, subject=cfg.subject, noise_seed=1000 + seed),
                                       duration_s=30.0, seed=1000 + seed, radius_cm=cfg.task.radius_cm)
        for name in names:
            if name != "oracle":
                info[name]["open_loop_r2"] = round(open_loop_r2(decoders[name], held_out), 4)
        details["fit"][str(seed)] = info
        for name in names:
            t = time.perf_counter()
            res, extra = loop(name, decoders[name], copy.deepcopy(stream), seed=seed, cfg=cfg, user=cfg.user)
            if extra is not None:
                details.setdefault("loop", {}).setdefault(str(seed), {})[name] = extra
            if name != "oracle":
                info[name]["closed_loop_r2"] = round(closed_loop_r2(res, stream.delay_s), 4)
                info[name]["closed_loop_gain"] = round(closed_loop_gain(res, stream.delay_s), 4)
                info[name]["closed_loop_gain_slow"] = round(closed_loop_gain(res, stream.delay_s, max_speed=10.0), 4)
            per = trial_metrics(res.trials, target_radius_cm=cfg.task.target_radius_cm)
            pooled[name] += per
            m = summarize(per)
            details["per_seed"][name][str(seed)] = m
            c = details["counts"][name]
            c["trials"] += len(per)
            c["reentries"] += sum(r["reentries"] for r in per)
            c["breaks"] += sum(r["breaks"] for r in per)
            c["timeouts"] += sum(not r["success"] for r in per)
            if seed == seeds[0]:
                details["trajectories"][name] = trajectories(res)
            msg = f"seed {seed} {name}: success {m['success_rate']:.2f}, {len(res.t_end)} chunks in {time.perf_counter() - t:.1f} s"
            log.info(msg)
            if progress:
                progress(msg)
            for d in delays:
                user = dataclasses.replace(cfg.user, feedback_delay_s=float(d))
                r, _ = loop(name, decoders[name], copy.deepcopy(stream), seed=seed, cfg=cfg, user=user)
                sweep[name][f"{d:g}"] += trial_metrics(r.trials, target_radius_cm=cfg.task.target_radius_cm)
    if delays:
        details["delay_sweep"] = {n: {d: summarize(v) for d, v in by.items()} for n, by in sweep.items()}
    details["wall_s"] = round(time.perf_counter() - t_all, 1)
    return {"decoders": {n: summarize(pooled[n]) for n in names}, "seeds": seeds, "trials": cfg.trials, "details": details}
