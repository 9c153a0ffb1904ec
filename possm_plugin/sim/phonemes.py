"""Simulated phoneme-sequence sessions for CTC decoding (``task="ctc"``).

Each trial (about 2-3 s) is a silence, 3-6 phoneme events separated by short gaps, and a silence;
trials are separated by inter-trial gaps. During an event of class ``c`` (150-250 ms), a 6-D
"articulatory" signal follows the class's own smooth trajectory (sine harmonics over the event, zero
at its edges); every unit loads on the articulatory dimensions, so each phoneme drives a distinct
spatio-temporal pattern of population activity. Each event onset also kicks the subject's rotational
latent (a condition-invariant onset signal). The phoneme inventory depends only on
``(seed, n_phonemes)``; a unit's loadings belong to the subject's neuron pool.

``label_seq`` / ``label_offsets`` hold each trial's phoneme ids (``0..n_phonemes-1``; the CTC blank is
the model's business), ``n_classes = n_phonemes``. There is no regression target: ``targets`` has shape
``(M, 0)`` and ``target_names`` is empty, but ``target_times`` (100 Hz) and ``phase`` (REACH during
events, HOLD in silences within a trial, OTHER between trials) are present.
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
    POOL_MAX,
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
    unit_log_rates,
)

__all__ = ["simulate_phoneme_session", "simulate_phoneme_sessions", "phoneme_inventory", "ARTICULATORY_DIM"]

#: Dimension of the articulatory signal that phonemes drive.
ARTICULATORY_DIM = 6
_HARMONICS = 3
_GRID = 100
#: RMS norm of the articulatory vector during an event.
_ART_RMS = 1.5
#: Standard deviation of a unit's loading on each articulatory dimension (log-rate units).
_LOADING_SD = 0.25


def _basis(tau: np.ndarray) -> np.ndarray:
    return np.sin(np.pi * np.outer(np.clip(tau, 0.0, 1.0), np.arange(1, _HARMONICS + 1)))


def phoneme_inventory(seed: int, n_phonemes: int) -> np.ndarray:
    """Coefficients of the phonemes' articulatory trajectories, shape ``(n_phonemes, ARTICULATORY_DIM, H)``.

    Phoneme ``c`` follows ``coef[c] @ basis(tau)`` over its normalised event time ``tau`` in [0, 1]
    (RMS norm 1.5); classes are chosen far apart by farthest-point selection among random candidates.
    """
    seed = check_seed(seed)
    n_phonemes = check_int("n_phonemes", n_phonemes, minimum=2, maximum=1000)
    rng = make_rng(seed, "phoneme-inventory", n_phonemes)
    n_cand = max(40 * n_phonemes, 200)
    coef = rng.standard_normal((n_cand, ARTICULATORY_DIM, _HARMONICS)) / np.arange(1, _HARMONICS + 1)
    traj = np.einsum("cdh,gh->cgd", coef, _basis(np.linspace(0.0, 1.0, _GRID)))
    rms = np.sqrt(np.mean(np.sum(traj**2, axis=2), axis=1))
    coef *= (_ART_RMS / rms)[:, None, None]
    flat = (traj * (_ART_RMS / rms)[:, None, None]).reshape(n_cand, -1)
    chosen = [0]
    dist = np.linalg.norm(flat - flat[0], axis=1)
    for _ in range(n_phonemes - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(flat - flat[nxt], axis=1))
    return coef[chosen]


def simulate_phoneme_session(
    session_index: int,
    *,
    seed: int = 0,
    subject: str = "p0",
    id_prefix: str | None = None,
    n_phonemes: int = 12,
    duration_s: float = 120.0,
    n_units: int | tuple[int, int] | None = None,
    events_per_trial: tuple[int, int] = (3, 6),
    event_s: tuple[float, float] = (0.15, 0.25),
    gap_s: tuple[float, float] = (0.08, 0.25),
    silence_s: tuple[float, float] = (0.4, 0.6),
    intertrial_s: tuple[float, float] = (0.3, 0.6),
    refractory_s: float = 0.002,
    drift_scale: float = 1.0,
) -> Session:
    """Simulate one phoneme-sequence session (``task="ctc"``).

    Args:
        session_index: non-negative session number; the id is ``sim-{subject}-seed{seed}-ph-s{index:03d}``
            (:mod:`possm_plugin.sim.ids`).
        seed: non-negative base seed (also selects the phoneme inventory, with ``n_phonemes``).
        subject: subject string (no '/' or whitespace): tuning statistics, unit counts, neuron pool.
        id_prefix: replaces ``sim-{subject}-seed{seed}`` (and the task tag) in the session id;
            :func:`~possm_plugin.sim.ids.legacy_prefix` gives the seedless ids of older files.
        n_phonemes: number of phoneme classes (>= 2).
        duration_s: session length, seconds (>= 5); only trials that end before it are listed.
        n_units: units recorded: an int, a ``(min, max)`` range, or None for the subject's range.
        events_per_trial: (min, max) phonemes per trial, inclusive.
        event_s: (min, max) duration of one phoneme event, seconds.
        gap_s: (min, max) gap between consecutive events, seconds.
        silence_s: (min, max) silence at the start and at the end of a trial, seconds.
        intertrial_s: (min, max) gap between trials, seconds.
        refractory_s: absolute refractory period, seconds.
        drift_scale: multiplies the subject's drift of tuning across session indices.
    """
    session_index = check_int("session_index", session_index, minimum=0)
    seed = check_seed(seed)
    subject = check_subject(subject)
    n_phonemes = check_int("n_phonemes", n_phonemes, minimum=2, maximum=1000)
    duration_s = check_positive("duration_s", duration_s, minimum=MIN_SESSION_S, inclusive=True)
    n_units = check_n_units(n_units)
    try:
        e_lo = check_int("events_per_trial[0]", events_per_trial[0], minimum=1)
        e_hi = check_int("events_per_trial[1]", events_per_trial[1], minimum=e_lo)
    except (TypeError, IndexError):
        raise ConfigError(f"events_per_trial must be a (min, max) pair, got {events_per_trial!r}") from None
    event_s = check_range("event_s", event_s, minimum=2 * DT_S)
    gap_s = check_range("gap_s", gap_s, minimum=0.0)
    silence_s = check_range("silence_s", silence_s, minimum=0.0)
    intertrial_s = check_range("intertrial_s", intertrial_s, minimum=0.0)
    refractory_s = float(refractory_s)
    if not 0.0 <= refractory_s <= 0.005:
        raise ConfigError(f"refractory_s must be between 0 and 0.005 s, got {refractory_s!r}")
    drift_scale = float(drift_scale)
    if not (math.isfinite(drift_scale) and drift_scale >= 0):
        raise ConfigError(f"drift_scale must be a finite number >= 0, got {drift_scale!r}")

    session_id = sim_session_id(session_index, seed=seed, subject=subject, task="phonemes", id_prefix=id_prefix)
    inventory = phoneme_inventory(seed, n_phonemes)
    pool = make_subject(seed, subject)
    profile = pool.profile
    loadings = _LOADING_SD * make_rng(seed, "phoneme-loadings", subject).standard_normal((POOL_MAX, ARTICULATORY_DIM))
    rng_beh = make_rng(seed, "phoneme-behaviour", subject, n_phonemes, session_index)
    rng_units = make_rng(seed, "phoneme-units", subject, session_index)
    rng_spk = make_rng(seed, "phoneme-spikes", subject, n_phonemes, session_index)

    n_steps = int(round(duration_s / DT_S))
    times = np.arange(n_steps) * DT_S
    art = np.zeros((n_steps, ARTICULATORY_DIM))
    phase = np.full(n_steps, PHASE_OTHER, dtype=np.int8)
    trials: list[tuple[float, float]] = []
    seqs: list[list[int]] = []
    onsets: list[float] = []
    bag: list[int] = []

    def idx(x: float) -> int:
        return int(math.ceil(x / DT_S - 1e-9))

    t = rng_beh.uniform(*intertrial_s)
    while True:
        n_ev = int(rng_beh.integers(e_lo, e_hi + 1))
        durs = rng_beh.uniform(*event_s, size=n_ev)
        gaps = rng_beh.uniform(*gap_s, size=n_ev - 1)
        lead, trail = rng_beh.uniform(*silence_s, size=2)
        amps = rng_beh.uniform(0.8, 1.2, size=n_ev)
        t_end = t + lead + durs.sum() + gaps.sum() + trail
        if t_end > duration_s:
            break
        seq = []
        for _ in range(n_ev):
            if not bag:
                bag = list(rng_beh.permutation(n_phonemes))
            seq.append(int(bag.pop()))
        phase[idx(t) : idx(t_end)] = PHASE_HOLD
        te = t + lead
        for k, c in enumerate(seq):
            i0, i1 = idx(te), idx(te + durs[k])
            tau = (times[i0:i1] - te) / durs[k]
            art[i0:i1] += amps[k] * (_basis(tau) @ inventory[c].T)
            phase[i0:i1] = PHASE_REACH
            onsets.append(te)
            te += durs[k] + (gaps[k] if k < n_ev - 1 else 0.0)
        trials.append((t, t_end))
        seqs.append(seq)
        t = t_end + rng_beh.uniform(*intertrial_s)
    if not trials:
        raise ConfigError(f"duration_s={duration_s} is too short for one trial")

    units = session_units(
        pool, seed=seed, session_index=session_index, rng=rng_units, n_units=n_units, drift_scale=drift_scale
    )
    kick = pool.latent_in @ np.array([0.0, 0.0, 1.0])
    latent = rotational_latent(
        n_steps,
        np.asarray(onsets) - 0.05,
        np.tile(0.6 * kick, (len(onsets), 1)),
        rot_freq_hz=profile.rot_freq_hz,
        decay_s=profile.latent_decay_s,
    )
    extra = art @ loadings[units.pool_index].T
    log_rate = unit_log_rates(units, profile, n_steps=n_steps, rng=rng_spk, latent=latent, extra=extra)
    spike_times, spike_units = rates_to_spikes(
        np.exp(log_rate), rng=rng_spk, duration_s=duration_s, refractory_s=refractory_s
    )
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    meta = {
        "simulator": "possm_plugin.sim.phonemes",
        "version": 1,
        "seed": seed,
        "subject": subject,
        "session_index": session_index,
        "duration_s": duration_s,
        "dt_s": DT_S,
        "n_phonemes": n_phonemes,
        "n_units": units.n_units,
        "events_per_trial": [e_lo, e_hi],
        "event_s": list(event_s),
        "gap_s": list(gap_s),
        "silence_s": list(silence_s),
        "intertrial_s": list(intertrial_s),
        "refractory_s": refractory_s,
        "drift_scale": drift_scale,
        "event_onsets_s": [round(float(x), 6) for x in onsets],
        "pool_units": units.pool_index.tolist(),
        "subject_profile": profile.to_meta(),
    }
    return Session(
        session_id=session_id,
        spike_times=spike_times,
        spike_units=spike_units,
        unit_ids=[f"{session_id}/u{j:03d}" for j in range(units.n_units)],
        target_times=times,
        targets=np.zeros((n_steps, 0), dtype=np.float32),
        trials=np.asarray(trials, dtype=np.float64),
        subject=subject,
        task="ctc",
        target_names=[],
        phase=phase,
        label_seq=np.asarray([c for s in seqs for c in s], dtype=np.int64),
        label_offsets=offsets,
        n_classes=n_phonemes,
        target_scale=1.0,
        meta=meta,
    )


def simulate_phoneme_sessions(
    n_sessions: int,
    *,
    seed: int = 0,
    subject: str = "p0",
    id_prefix: str | None = None,
    n_phonemes: int = 12,
    duration_s: float = 120.0,
    first_index: int = 0,
    n_units: int | tuple[int, int] | None = None,
    events_per_trial: tuple[int, int] = (3, 6),
    event_s: tuple[float, float] = (0.15, 0.25),
    gap_s: tuple[float, float] = (0.08, 0.25),
    silence_s: tuple[float, float] = (0.4, 0.6),
    intertrial_s: tuple[float, float] = (0.3, 0.6),
    refractory_s: float = 0.002,
    drift_scale: float = 1.0,
) -> list[Session]:
    """Simulate phoneme sessions ``first_index .. first_index + n_sessions - 1`` of one subject.

    Each equals :func:`simulate_phoneme_session` with the same arguments.
    """
    n_sessions = check_int("n_sessions", n_sessions, minimum=1)
    first_index = check_int("first_index", first_index, minimum=0)
    return [
        simulate_phoneme_session(
            first_index + i,
            seed=seed,
            subject=subject,
            id_prefix=id_prefix,
            n_phonemes=n_phonemes,
            duration_s=duration_s,
            n_units=n_units,
            events_per_trial=events_per_trial,
            event_s=event_s,
            gap_s=gap_s,
            silence_s=silence_s,
            intertrial_s=intertrial_s,
            refractory_s=refractory_s,
            drift_scale=drift_scale,
        )
        for i in range(n_sessions)
    ]
