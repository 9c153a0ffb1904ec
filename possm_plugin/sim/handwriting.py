"""Simulated handwriting-like sessions: classify which of ``n_classes`` characters a trial writes.

The "alphabet" is ``n_classes`` smooth 2-D pen-velocity templates (sums of sine harmonics over the
writing time, so velocity is zero at the start and end of a character), chosen far apart from one
another. It depends only on ``(seed, n_classes)``, so every subject writes the same characters.

A trial is a short pause (hand still, phase HOLD) followed by about 1 s of writing one character
(phase REACH), with per-trial variability in duration (speed), size, slant and timing. Trials run back
to back from 0 s; ``trials`` spans pause + writing, ``trial_labels`` holds the character of each trial
(classes come in shuffled blocks, so all appear once there are ``n_classes`` trials). The pen velocity
(cm/s, 100 Hz) is also stored as ``targets`` (``["vx", "vy"]``) so it can be regressed.

Neurons are tuned to pen velocity as in :mod:`.motor` (cosine tuning with leads, a rotational latent
kicked at writing onset, slow noise, refractory Poisson spiking), from the same subject pool machinery.
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
    rates_to_spikes,
    rotational_latent,
    session_units,
    smooth_noise,
    unit_log_rates,
)

__all__ = ["simulate_handwriting_session", "simulate_handwriting_sessions", "character_templates"]

_HARMONICS = 4
_GRID = 200
#: Root-mean-square pen speed of a character written in 1 s at size 1, cm/s.
_RMS_SPEED_CM_S = 14.0
_TARGET_SCALE = 20.0
_PREP_S = 0.15


def _basis(tau: np.ndarray) -> np.ndarray:
    """Sine harmonics ``sin(pi k tau)``, k = 1..H, shape ``(len(tau), H)``; zero at tau = 0 and 1."""
    return np.sin(np.pi * np.outer(np.clip(tau, 0.0, 1.0), np.arange(1, _HARMONICS + 1)))


def character_templates(seed: int, n_classes: int) -> np.ndarray:
    """Coefficients of the ``n_classes`` pen-velocity templates, shape ``(n_classes, 2, H)``.

    Template ``c`` has velocity ``coef[c] @ basis(tau)`` (cm/s for a 1 s, size-1 character) at
    normalised writing time ``tau`` in [0, 1]; its RMS speed is 14 cm/s. Templates are picked from
    many random candidates by farthest-point selection so that classes are distinct.
    """
    seed = check_seed(seed)
    n_classes = check_int("n_classes", n_classes, minimum=2, maximum=1000)
    rng = make_rng(seed, "handwriting-alphabet", n_classes)
    n_cand = max(40 * n_classes, 200)
    coef = rng.standard_normal((n_cand, 2, _HARMONICS)) / np.arange(1, _HARMONICS + 1) ** 0.7
    b = _basis(np.linspace(0.0, 1.0, _GRID))  # (G, H)
    vel = np.einsum("cdh,gh->cgd", coef, b)  # (n_cand, G, 2)
    rms = np.sqrt(np.mean(np.sum(vel**2, axis=2), axis=1))
    coef *= (_RMS_SPEED_CM_S / rms)[:, None, None]
    flat = (vel * (_RMS_SPEED_CM_S / rms)[:, None, None]).reshape(n_cand, -1)
    chosen = [0]
    dist = np.linalg.norm(flat - flat[0], axis=1)
    for _ in range(n_classes - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(flat - flat[nxt], axis=1))
    return coef[chosen]


def simulate_handwriting_session(
    session_index: int,
    *,
    seed: int = 0,
    subject: str = "h0",
    id_prefix: str | None = None,
    n_classes: int = 10,
    duration_s: float = 120.0,
    n_units: int | tuple[int, int] | None = None,
    writing_s: tuple[float, float] = (0.8, 1.2),
    pause_s: tuple[float, float] = (0.3, 0.6),
    size_range: tuple[float, float] = (0.8, 1.2),
    refractory_s: float = 0.002,
    drift_scale: float = 1.0,
) -> Session:
    """Simulate one handwriting session (``task="classification"``).

    Args:
        session_index: non-negative session number; the id is ``sim-{subject}-seed{seed}-hw-s{index:03d}``
            (:mod:`possm_plugin.sim.ids`).
        seed: non-negative base seed (also selects the alphabet, with ``n_classes``).
        subject: subject string (no '/' or whitespace): tuning statistics, unit counts, neuron pool.
        id_prefix: replaces ``sim-{subject}-seed{seed}`` (and the task tag) in the session id;
            :func:`~possm_plugin.sim.ids.legacy_prefix` gives the seedless ids of older files.
        n_classes: number of characters (>= 2).
        duration_s: session length, seconds (>= 5); only trials that end before it are listed.
        n_units: units recorded: an int, a ``(min, max)`` range, or None for the subject's range.
        writing_s: (min, max) time to write one character, seconds.
        pause_s: (min, max) pause before each character, seconds.
        size_range: (min, max) size factor of a character (scales pen velocity).
        refractory_s: absolute refractory period, seconds.
        drift_scale: multiplies the subject's drift of tuning across session indices.

    Returns:
        A validated :class:`~possm_plugin.data.session.Session`: ``trial_labels`` in ``0..n_classes-1``,
        ``targets`` = pen velocity in cm/s at 100 Hz (``target_scale`` 20), phase HOLD during pauses
        and REACH while writing.
    """
    session_index = check_int("session_index", session_index, minimum=0)
    seed = check_seed(seed)
    subject = check_subject(subject)
    n_classes = check_int("n_classes", n_classes, minimum=2, maximum=1000)
    duration_s = check_positive("duration_s", duration_s, minimum=MIN_SESSION_S, inclusive=True)
    n_units = check_n_units(n_units)
    writing_s = check_range("writing_s", writing_s, minimum=0.1)
    pause_s = check_range("pause_s", pause_s, minimum=DT_S)
    size_range = check_range("size_range", size_range, minimum=1e-3)
    refractory_s = float(refractory_s)
    if not 0.0 <= refractory_s <= 0.005:
        raise ConfigError(f"refractory_s must be between 0 and 0.005 s, got {refractory_s!r}")
    drift_scale = float(drift_scale)
    if not (math.isfinite(drift_scale) and drift_scale >= 0):
        raise ConfigError(f"drift_scale must be a finite number >= 0, got {drift_scale!r}")

    session_id = sim_session_id(session_index, seed=seed, subject=subject, task="handwriting", id_prefix=id_prefix)
    coef = character_templates(seed, n_classes)
    pool = make_subject(seed, subject)
    profile = pool.profile
    rng_beh = make_rng(seed, "handwriting-behaviour", subject, n_classes, session_index)
    rng_units = make_rng(seed, "handwriting-units", subject, session_index)
    rng_spk = make_rng(seed, "handwriting-spikes", subject, n_classes, session_index)

    n_steps = int(round(duration_s / DT_S))
    times = np.arange(n_steps) * DT_S
    velocity = np.zeros((n_steps, 2))
    phase = np.full(n_steps, PHASE_OTHER, dtype=np.int8)
    trials: list[tuple[float, float]] = []
    labels: list[int] = []
    onsets: list[float] = []
    directions: list[float] = []
    bag: list[int] = []
    t = 0.0
    while True:
        pause = rng_beh.uniform(*pause_s)
        dur = rng_beh.uniform(*writing_s)
        t_write, t_end = t + pause, t + pause + dur
        if t_end > duration_s:
            break
        if not bag:
            bag = list(rng_beh.permutation(n_classes))
        c = int(bag.pop())
        size = rng_beh.uniform(*size_range)
        rot = rng_beh.normal(0.0, math.radians(8.0))
        warp = rng_beh.uniform(-0.3, 0.3)
        i_p, i_w, i_e = (int(math.ceil(x / DT_S - 1e-9)) for x in (t, t_write, t_end))
        phase[i_p:i_w] = PHASE_HOLD
        s = (times[i_w:i_e] - t_write) / dur
        tau = s + warp * np.sin(2 * np.pi * s) / (2 * np.pi)  # monotonic time warp
        dtau = 1.0 + warp * np.cos(2 * np.pi * s)
        v = (_basis(tau) @ coef[c].T) * (size * dtau / dur)[:, None]
        cr, sr = math.cos(rot), math.sin(rot)
        velocity[i_w:i_e] = v @ np.array([[cr, sr], [-sr, cr]])
        phase[i_w:i_e] = PHASE_REACH
        v0 = _basis(np.array([0.1])) @ coef[c].T
        trials.append((t, t_end))
        labels.append(c)
        onsets.append(t_write)
        directions.append(math.atan2(v0[0, 1], v0[0, 0]) + rot)
        t = t_end
    if not trials:
        raise ConfigError(f"duration_s={duration_s} is too short for one trial")
    velocity[phase == PHASE_REACH] += 1.0 * smooth_noise(rng_beh, n_steps, 2, width_s=0.05)[phase == PHASE_REACH]
    velocity += 0.3 * smooth_noise(rng_beh, n_steps, 2, width_s=0.05)

    units = session_units(
        pool, seed=seed, session_index=session_index, rng=rng_units, n_units=n_units, drift_scale=drift_scale
    )
    drive = np.stack([np.cos(directions), np.sin(directions), np.ones(len(directions))], axis=1)
    latent = rotational_latent(
        n_steps,
        np.asarray(onsets) - _PREP_S,
        drive @ pool.latent_in.T,
        rot_freq_hz=profile.rot_freq_hz,
        decay_s=profile.latent_decay_s,
    )
    log_rate = unit_log_rates(units, profile, n_steps=n_steps, rng=rng_spk, velocity=velocity, latent=latent)
    spike_times, spike_units = rates_to_spikes(
        np.exp(log_rate), rng=rng_spk, duration_s=duration_s, refractory_s=refractory_s
    )
    meta = {
        "simulator": "possm_plugin.sim.handwriting",
        "version": 1,
        "seed": seed,
        "subject": subject,
        "session_index": session_index,
        "duration_s": duration_s,
        "dt_s": DT_S,
        "n_classes": n_classes,
        "n_units": units.n_units,
        "writing_s": list(writing_s),
        "pause_s": list(pause_s),
        "size_range": list(size_range),
        "refractory_s": refractory_s,
        "drift_scale": drift_scale,
        "pool_units": units.pool_index.tolist(),
        "subject_profile": profile.to_meta(),
    }
    return Session(
        session_id=session_id,
        spike_times=spike_times,
        spike_units=spike_units,
        unit_ids=[f"{session_id}/u{j:03d}" for j in range(units.n_units)],
        target_times=times,
        targets=velocity.astype(np.float32),
        trials=np.asarray(trials, dtype=np.float64),
        subject=subject,
        task="classification",
        target_names=["vx", "vy"],
        phase=phase,
        trial_labels=np.asarray(labels, dtype=np.int64),
        n_classes=n_classes,
        target_scale=_TARGET_SCALE,
        meta=meta,
    )


def simulate_handwriting_sessions(
    n_sessions: int,
    *,
    seed: int = 0,
    subject: str = "h0",
    id_prefix: str | None = None,
    n_classes: int = 10,
    duration_s: float = 120.0,
    first_index: int = 0,
    n_units: int | tuple[int, int] | None = None,
    writing_s: tuple[float, float] = (0.8, 1.2),
    pause_s: tuple[float, float] = (0.3, 0.6),
    size_range: tuple[float, float] = (0.8, 1.2),
    refractory_s: float = 0.002,
    drift_scale: float = 1.0,
) -> list[Session]:
    """Simulate handwriting sessions ``first_index .. first_index + n_sessions - 1`` of one subject.

    Each equals :func:`simulate_handwriting_session` with the same arguments.
    """
    n_sessions = check_int("n_sessions", n_sessions, minimum=1)
    first_index = check_int("first_index", first_index, minimum=0)
    return [
        simulate_handwriting_session(
            first_index + i,
            seed=seed,
            subject=subject,
            id_prefix=id_prefix,
            n_classes=n_classes,
            duration_s=duration_s,
            n_units=n_units,
            writing_s=writing_s,
            pause_s=pause_s,
            size_range=size_range,
            refractory_s=refractory_s,
            drift_scale=drift_scale,
        )
        for i in range(n_sessions)
    ]
