"""Simulated motor-cortex reaching sessions (regression of 2-D hand velocity).

Behaviour: trials run back to back on one clock that starts at 0 s. A trial is

* centre-out: (a return to the centre if the hand is elsewhere), a hold at the centre (0.3-0.6 s),
  a reach to one of 8 targets on a circle (0.5-0.9 s), a short hold at the target, a return to the
  centre;
* random-target: a hold where the hand is, a reach to a random point of the workspace, a short hold.

Reaches follow minimum-jerk (bell-shaped) speed profiles with a little curvature; peak speeds are
about 20-40 cm/s. A small smooth tremor (about 0.3 cm/s) is added everywhere, so holds have near-zero
but not exactly zero speed. Velocity is sampled at 100 Hz (``target_times`` every 10 ms from 0 s).

Neurons (see :mod:`.spiking`): each session records its own number of units, a subset of the
subject's pool with slight drift; units are cosine tuned to the velocity they lead by 40-160 ms, have
a speed term, load on a 2- or 4-D rotational latent kicked at each movement onset (the kick depends on
the movement direction), and carry private and shared slow noise; spikes are refractory Poisson.
"""

from __future__ import annotations

import math

import numpy as np

from possm_plugin.data.session import PHASE_HOLD, PHASE_OTHER, PHASE_REACH, Session
from possm_plugin.errors import ConfigError
from possm_plugin.sim.ids import sim_session_id
from possm_plugin.sim.spiking import (
    DT_S,
    MIN_SESSION_S,
    check_int,
    check_n_units,
    check_positive,
    check_range,
    check_seed,
    check_subject,
    make_rng,
    make_subject,
    minimum_jerk,
    rates_to_spikes,
    rotational_latent,
    session_units,
    smooth_noise,
    unit_log_rates,
)

__all__ = ["simulate_motor_session", "simulate_motor_sessions", "PARADIGMS", "TARGET_SCALE"]

#: Reaching paradigms: ``mixed`` picks centre-out or random-target for each trial with equal odds.
PARADIGMS = ("center_out", "random_target", "mixed")
#: Velocity (cm/s) is divided by this for training, so targets are about unit size.
TARGET_SCALE = 20.0
#: Lead of the latent's onset kick over movement onset, seconds (preparatory activity).
_PREP_S = 0.15
_TREMOR_CM_S = 0.3


class _Schedule:
    """Piecewise behaviour: segments of straight(ish) minimum-jerk moves or holds."""

    def __init__(self) -> None:
        self.start: list[float] = []
        self.dur: list[float] = []
        self.p0: list[np.ndarray] = []
        self.p1: list[np.ndarray] = []
        self.curv: list[float] = []
        self.phase: list[int] = []
        self.t = 0.0

    def add(self, dur: float, p0: np.ndarray, p1: np.ndarray, phase: int, curv: float = 0.0) -> None:
        self.start.append(self.t)
        self.dur.append(dur)
        self.p0.append(np.asarray(p0, dtype=np.float64))
        self.p1.append(np.asarray(p1, dtype=np.float64))
        self.curv.append(curv)
        self.phase.append(phase)
        self.t += dur

    def evaluate(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Velocity (cm/s, ``(M, 2)``) and phase (``(M,)``) at ``times``; after the end: still, OTHER."""
        start = np.asarray(self.start)
        dur = np.asarray(self.dur)
        p0 = np.asarray(self.p0)
        p1 = np.asarray(self.p1)
        curv = np.asarray(self.curv)
        seg = np.clip(np.searchsorted(start, times, side="right") - 1, 0, len(start) - 1)
        s = (times - start[seg]) / dur[seg]
        inside = s < 1.0
        _, shape = minimum_jerk(s)
        delta = p1[seg] - p0[seg]
        dist = np.linalg.norm(delta, axis=1)
        normal = np.stack([-delta[:, 1], delta[:, 0]], axis=1) / np.maximum(dist, 1e-9)[:, None]
        vel = delta * (shape / dur[seg])[:, None]
        # curvature: lateral offset c (1 - cos 2 pi s) / 2, zero velocity at both ends
        vel += normal * (curv[seg] * np.pi * np.sin(2 * np.pi * np.clip(s, 0, 1)) / dur[seg])[:, None]
        vel[~inside] = 0.0
        phase = np.where(inside, np.asarray(self.phase, dtype=np.int8)[seg], PHASE_OTHER).astype(np.int8)
        return vel, phase


def simulate_motor_session(
    session_index: int,
    *,
    seed: int = 0,
    subject: str = "m0",
    id_prefix: str | None = None,
    duration_s: float = 120.0,
    paradigm: str = "mixed",
    n_units: int | tuple[int, int] | None = None,
    center_out_radius_cm: float = 10.0,
    workspace_radius_cm: float = 12.0,
    hold_s: tuple[float, float] = (0.3, 0.6),
    reach_s: tuple[float, float] = (0.5, 0.9),
    peak_speed_cm_s: tuple[float, float] = (20.0, 40.0),
    refractory_s: float = 0.002,
    drift_scale: float = 1.0,
) -> Session:
    """Simulate one reaching session.

    Args:
        session_index: non-negative session number; the id is ``sim-{subject}-seed{seed}-s{index:03d}``
            (:mod:`possm_plugin.sim.ids`).
        seed: non-negative base seed. The session depends only on ``(seed, subject, session_index)``
            and the other arguments.
        subject: subject string (no '/' or whitespace); it selects the tuning statistics, unit counts
            and neuron pool, shared by all sessions of the subject.
        id_prefix: replaces ``sim-{subject}-seed{seed}`` (and the task tag) in the session id;
            :func:`~possm_plugin.sim.ids.legacy_prefix` gives the seedless ids of older files.
        duration_s: session length, seconds (>= 5). Only trials that end before it are listed.
        paradigm: ``"center_out"``, ``"random_target"`` or ``"mixed"`` (per trial, 50/50).
        n_units: units recorded: an int, a ``(min, max)`` range, or None for the subject's range.
        center_out_radius_cm: distance of the 8 centre-out targets from the centre, cm.
        workspace_radius_cm: random targets lie within this distance of the centre, cm.
        hold_s: (min, max) hold duration before a reach, seconds.
        reach_s: (min, max) reach duration, seconds.
        peak_speed_cm_s: (min, max) peak speed of random-target reaches, cm/s (centre-out reaches
            have peak speed 1.875 * radius / duration).
        refractory_s: absolute refractory period, seconds (0 disables it).
        drift_scale: multiplies the subject's drift of tuning across session indices (0: none).

    Returns:
        A validated :class:`~possm_plugin.data.session.Session` with ``task="regression"``, targets
        ``["vx", "vy"]`` in cm/s at 100 Hz, phases, one trial per reach and ``target_scale=20``.
    """
    session_index = check_int("session_index", session_index, minimum=0)
    seed = check_seed(seed)
    subject = check_subject(subject)
    duration_s = check_positive("duration_s", duration_s, minimum=MIN_SESSION_S, inclusive=True)
    if paradigm not in PARADIGMS:
        raise ConfigError(f"paradigm must be one of {PARADIGMS}, got {paradigm!r}")
    n_units = check_n_units(n_units)
    radius = check_positive("center_out_radius_cm", center_out_radius_cm)
    workspace = check_positive("workspace_radius_cm", workspace_radius_cm)
    hold_s = check_range("hold_s", hold_s, minimum=DT_S)
    reach_s = check_range("reach_s", reach_s, minimum=0.1)
    peak = check_range("peak_speed_cm_s", peak_speed_cm_s, minimum=1e-3)
    refractory_s = float(refractory_s)
    if not 0.0 <= refractory_s <= 0.005:
        raise ConfigError(f"refractory_s must be between 0 and 0.005 s, got {refractory_s!r}")
    drift_scale = float(drift_scale)
    if not (math.isfinite(drift_scale) and drift_scale >= 0):
        raise ConfigError(f"drift_scale must be a finite number >= 0, got {drift_scale!r}")

    session_id = sim_session_id(session_index, seed=seed, subject=subject, task="motor", id_prefix=id_prefix)
    pool = make_subject(seed, subject)
    profile = pool.profile
    rng_beh = make_rng(seed, "motor-behaviour", subject, session_index)
    rng_units = make_rng(seed, "motor-units", subject, session_index)
    rng_spk = make_rng(seed, "motor-spikes", subject, session_index)

    # ---- behaviour schedule ------------------------------------------------------------------
    sched = _Schedule()
    pos = np.zeros(2)
    trials: list[tuple[float, float]] = []
    onsets: list[float] = []
    directions: list[float] = []
    amplitudes: list[float] = []
    kinds: list[str] = []
    co_order: list[int] = []

    def move(p_from, p_to, dur, phase, curv_sd=0.05):
        dist = float(np.linalg.norm(p_to - p_from))
        onsets.append(sched.t)
        directions.append(math.atan2(p_to[1] - p_from[1], p_to[0] - p_from[0]))
        amplitudes.append(dist / radius)
        sched.add(dur, p_from, p_to, phase, curv=curv_sd * dist * rng_beh.standard_normal())

    while sched.t < duration_s:
        co = paradigm == "center_out" or (paradigm == "mixed" and rng_beh.random() < 0.5)
        t_start = sched.t
        if co:
            if np.linalg.norm(pos) > 1e-9:  # back to the centre first
                move(pos, np.zeros(2), rng_beh.uniform(0.5, 0.8), PHASE_OTHER)
                pos = np.zeros(2)
            sched.add(rng_beh.uniform(*hold_s), pos, pos, PHASE_HOLD)
            if not co_order:
                co_order = list(rng_beh.permutation(8))
            angle = 2 * np.pi * co_order.pop() / 8
            target = radius * np.array([math.cos(angle), math.sin(angle)])
            move(pos, target, rng_beh.uniform(*reach_s), PHASE_REACH)
            sched.add(rng_beh.uniform(0.1, 0.3), target, target, PHASE_OTHER)
            move(target, np.zeros(2), rng_beh.uniform(0.5, 0.8), PHASE_OTHER)
            pos = np.zeros(2)
        else:
            sched.add(rng_beh.uniform(*hold_s), pos, pos, PHASE_HOLD)
            dur = rng_beh.uniform(*reach_s)
            v_peak = rng_beh.uniform(*peak)
            dist = v_peak * dur / 1.875
            angles = rng_beh.uniform(0, 2 * np.pi, size=16)
            ends = pos[None, :] + dist * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            ok = np.linalg.norm(ends, axis=1) <= workspace
            if ok.any():
                target = ends[np.flatnonzero(ok)[0]]
            else:  # too far for the workspace from here: a shorter reach through the centre
                r = float(np.linalg.norm(pos))
                way = -pos / r if r > 1e-6 else np.array([math.cos(angles[0]), math.sin(angles[0])])
                dist = min(dist, r + 0.9 * workspace)
                target = pos + dist * way
                dur = float(np.clip(1.875 * dist / v_peak, *reach_s))
            move(pos, target, dur, PHASE_REACH)
            sched.add(rng_beh.uniform(0.1, 0.3), target, target, PHASE_OTHER)
            pos = target
        kinds.append("center_out" if co else "random_target")
        if sched.t <= duration_s:
            trials.append((t_start, sched.t))

    n_steps = int(round(duration_s / DT_S))
    target_times = np.arange(n_steps) * DT_S
    velocity, phase = sched.evaluate(target_times)
    velocity += _TREMOR_CM_S * smooth_noise(rng_beh, n_steps, 2, width_s=0.05)

    # ---- neurons ------------------------------------------------------------------------------
    units = session_units(
        pool, seed=seed, session_index=session_index, rng=rng_units, n_units=n_units, drift_scale=drift_scale
    )
    onsets_a = np.asarray(onsets) - _PREP_S
    drive = np.stack([np.cos(directions), np.sin(directions), np.ones(len(directions))], axis=1)
    kicks = (drive @ pool.latent_in.T) * np.minimum(np.asarray(amplitudes), 1.5)[:, None]
    latent = rotational_latent(
        n_steps, onsets_a, kicks, rot_freq_hz=profile.rot_freq_hz, decay_s=profile.latent_decay_s
    )
    log_rate = unit_log_rates(units, profile, n_steps=n_steps, rng=rng_spk, velocity=velocity, latent=latent)
    spike_times, spike_units = rates_to_spikes(
        np.exp(log_rate), rng=rng_spk, duration_s=duration_s, refractory_s=refractory_s
    )

    meta = {
        "simulator": "possm_plugin.sim.motor",
        "version": 1,
        "seed": seed,
        "subject": subject,
        "session_index": session_index,
        "duration_s": duration_s,
        "dt_s": DT_S,
        "paradigm": paradigm,
        "n_units": units.n_units,
        "center_out_radius_cm": radius,
        "workspace_radius_cm": workspace,
        "hold_s": list(hold_s),
        "reach_s": list(reach_s),
        "peak_speed_cm_s": list(peak),
        "refractory_s": refractory_s,
        "drift_scale": drift_scale,
        "trial_kinds": kinds[: len(trials)],
        "pool_units": units.pool_index.tolist(),
        "subject_profile": profile.to_meta(),
    }
    return Session(
        session_id=session_id,
        spike_times=spike_times,
        spike_units=spike_units,
        unit_ids=[f"{session_id}/u{j:03d}" for j in range(units.n_units)],
        target_times=target_times,
        targets=velocity.astype(np.float32),
        trials=np.asarray(trials, dtype=np.float64).reshape(-1, 2),
        subject=subject,
        task="regression",
        target_names=["vx", "vy"],
        phase=phase,
        target_scale=TARGET_SCALE,
        meta=meta,
    )


def simulate_motor_sessions(
    n_sessions: int,
    *,
    seed: int = 0,
    subject: str = "m0",
    id_prefix: str | None = None,
    duration_s: float = 120.0,
    first_index: int = 0,
    paradigm: str = "mixed",
    n_units: int | tuple[int, int] | None = None,
    center_out_radius_cm: float = 10.0,
    workspace_radius_cm: float = 12.0,
    hold_s: tuple[float, float] = (0.3, 0.6),
    reach_s: tuple[float, float] = (0.5, 0.9),
    peak_speed_cm_s: tuple[float, float] = (20.0, 40.0),
    refractory_s: float = 0.002,
    drift_scale: float = 1.0,
) -> list[Session]:
    """Simulate sessions ``first_index .. first_index + n_sessions - 1`` of one subject.

    Each session equals ``simulate_motor_session(index, ...)`` with the same arguments, so the
    result does not depend on how many sessions are simulated together. See
    :func:`simulate_motor_session` for the arguments.
    """
    n_sessions = check_int("n_sessions", n_sessions, minimum=1)
    first_index = check_int("first_index", first_index, minimum=0)
    return [
        simulate_motor_session(
            first_index + i,
            seed=seed,
            subject=subject,
            id_prefix=id_prefix,
            duration_s=duration_s,
            paradigm=paradigm,
            n_units=n_units,
            center_out_radius_cm=center_out_radius_cm,
            workspace_radius_cm=workspace_radius_cm,
            hold_s=hold_s,
            reach_s=reach_s,
            peak_speed_cm_s=peak_speed_cm_s,
            refractory_s=refractory_s,
            drift_scale=drift_scale,
        )
        for i in range(n_sessions)
    ]
