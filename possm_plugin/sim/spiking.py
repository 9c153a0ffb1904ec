"""Shared machinery of the simulators: seeds, subjects, neuron pools, latent dynamics and spiking.

The three simulated tasks (:mod:`.motor`, :mod:`.handwriting`, :mod:`.phonemes`) describe *what the
subject does* (a behaviour time series and event times). This module and the two it builds on
(:mod:`.common`: seeds and checks; :mod:`.subjects`: subjects and sessions) turn that into spikes:

1. **Seeds.** Every random stream is keyed by ``(seed, name, ...)`` through :func:`make_rng`, so a
   session depends only on ``(seed, subject, session index, arguments)``, never on how many sessions
   were simulated together or in which order.
2. **Subjects.** :func:`make_subject` draws a :class:`SubjectProfile` (unit counts, baseline rates,
   tuning depths, leads, latent dynamics, noise) and a :class:`NeuronPool` of :data:`POOL_MAX`
   candidate neurons for one subject string. A different subject string gives different statistics.
3. **Sessions.** :func:`session_units` draws the units one session records: a random subset of the
   subject's pool, whose tuning has drifted slightly (a random walk over session indices), so sessions
   of one subject share structure the way recordings from one array on different days do.
4. **Rates.** :func:`unit_log_rates` gives each unit a log firing rate from cosine tuning to a
   velocity it *leads* by ``lead_s`` (plus a speed term), a low-dimensional latent (for example the
   :func:`rotational_latent` kicked at movement onset), an optional task-specific drive, and private
   and shared slow noise (Ornstein-Uhlenbeck processes).
5. **Spikes.** :func:`rates_to_spikes` draws inhomogeneous Poisson spikes from piecewise-constant rates
   and enforces an absolute refractory period per unit.

Units: time in seconds, rates in Hz (spikes per second), velocity in cm/s.
"""

from __future__ import annotations

import math

import numpy as np

from possm_plugin.sim.common import (  # seeds, constants and checks; their names stay importable from here
    DT_S,
    MAX_RATE_HZ,
    MIN_SESSION_S,
    POOL_MAX,
    VELOCITY_NORM_CM_S,
    check_int,
    check_n_units,
    check_positive,
    check_range,
    check_seed,
    check_subject,
    make_rng,
)
from possm_plugin.sim.subjects import NeuronPool, SubjectProfile, UnitParams, make_subject, session_units  # likewise

__all__ = [
    "DT_S",
    "POOL_MAX",
    "VELOCITY_NORM_CM_S",
    "MAX_RATE_HZ",
    "MIN_SESSION_S",
    "make_rng",
    "SubjectProfile",
    "NeuronPool",
    "UnitParams",
    "make_subject",
    "session_units",
    "rotational_latent",
    "ou_noise",
    "lead_velocity",
    "unit_log_rates",
    "rates_to_spikes",
    "minimum_jerk",
    "smooth_noise",
    "check_int",
    "check_n_units",
    "check_seed",
    "check_subject",
    "check_range",
    "check_positive",
]

# --------------------------------------------------------------------------------------------------
# time series
# --------------------------------------------------------------------------------------------------
def minimum_jerk(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-jerk position and velocity shapes at normalised time ``s`` in [0, 1].

    Position goes 0 -> 1 as ``10 s^3 - 15 s^4 + 6 s^5``; its derivative (per unit of ``s``) is the
    bell-shaped ``30 s^2 (1 - s)^2`` with peak 1.875 at ``s = 0.5``.
    """
    s = np.clip(s, 0.0, 1.0)
    pos = s**3 * (10.0 - 15.0 * s + 6.0 * s**2)
    vel = 30.0 * s**2 * (1.0 - s) ** 2
    return pos, vel


def ou_noise(rng: np.random.Generator, n_steps: int, n: int, *, tau_s: float, dt: float = DT_S) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck noise with unit variance, shape ``(n_steps, n)``.

    Computed as white noise filtered by a causal exponential kernel (FFT convolution), with a warm-up
    of five time constants so the first samples are already stationary.
    """
    a = math.exp(-dt / tau_s)
    warm = int(math.ceil(5 * tau_s / dt))
    length = n_steps + warm
    kernel = math.sqrt(1.0 - a * a) * a ** np.arange(length)
    white = rng.standard_normal((length, n))
    n_fft = 1 << int(math.ceil(math.log2(2 * length)))
    out = np.fft.irfft(np.fft.rfft(white, n_fft, axis=0) * np.fft.rfft(kernel, n_fft)[:, None], n_fft, axis=0)
    return out[warm:length]


def smooth_noise(rng: np.random.Generator, n_steps: int, n: int, *, width_s: float, dt: float = DT_S) -> np.ndarray:
    """White noise smoothed by a Gaussian of standard deviation ``width_s``, unit variance, ``(n_steps, n)``."""
    sigma = max(width_s / dt, 1e-6)
    half = int(math.ceil(4 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    k /= math.sqrt(np.sum(k**2))
    white = rng.standard_normal((n_steps + 2 * half, n))
    n_fft = 1 << int(math.ceil(math.log2(n_steps + 4 * half + 1)))
    out = np.fft.irfft(np.fft.rfft(white, n_fft, axis=0) * np.fft.rfft(k, n_fft)[:, None], n_fft, axis=0)
    return out[2 * half : 2 * half + n_steps]


def rotational_latent(
    n_steps: int,
    onset_s: np.ndarray,
    kicks: np.ndarray,
    *,
    rot_freq_hz: tuple[float, ...],
    decay_s: float,
    dt: float = DT_S,
) -> np.ndarray:
    """A latent that rotates and decays after each kick, shape ``(n_steps, 2 * len(rot_freq_hz))``.

    Plane ``p`` (dims ``2p, 2p+1``) follows ``dz/dt = (-1/decay_s + i 2 pi f_p) z`` (as a complex
    number); at time ``onset_s[k]`` it receives the kick ``kicks[k, 2p] + i kicks[k, 2p+1]``. Kicks add
    up linearly, so overlapping movements superpose.
    """
    d = 2 * len(rot_freq_hz)
    out = np.zeros((n_steps, d))
    onset_s = np.asarray(onset_s, dtype=np.float64).reshape(-1)
    kicks = np.asarray(kicks, dtype=np.float64).reshape(len(onset_s), d)
    length = int(math.ceil(6 * decay_s / dt)) + 1
    lam = np.array([complex(-1.0 / decay_s, 2 * np.pi * f) for f in rot_freq_hz])
    for t0, kick in zip(onset_s, kicks):
        i0 = int(math.ceil(t0 / dt - 1e-9))
        if i0 >= n_steps:
            continue
        first = max(i0, 0)
        tau = np.arange(first, min(n_steps, i0 + length)) * dt - t0  # >= 0 (up to rounding)
        z0 = kick[0::2] + 1j * kick[1::2]
        z = np.exp(np.maximum(tau, 0.0)[:, None] * lam[None, :]) * z0[None, :]
        out[first : first + len(tau), 0::2] += z.real
        out[first : first + len(tau), 1::2] += z.imag
    return out


def lead_velocity(velocity: np.ndarray, lead_s: np.ndarray, *, dt: float = DT_S) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit velocity ``v(t + lead_u)`` by linear interpolation: ``(vx, vy)`` each ``(T, U)``.

    Beyond the last sample the velocity holds its last value.
    """
    n = len(velocity)
    pos = np.arange(n)[:, None] + np.asarray(lead_s)[None, :] / dt
    pos = np.clip(pos, 0.0, n - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    i1 = np.minimum(i0 + 1, n - 1)
    vx = (1 - frac) * velocity[i0, 0] + frac * velocity[i1, 0]
    vy = (1 - frac) * velocity[i0, 1] + frac * velocity[i1, 1]
    return vx, vy


def unit_log_rates(
    units: UnitParams,
    profile: SubjectProfile,
    *,
    n_steps: int,
    rng: np.random.Generator,
    velocity: np.ndarray | None = None,
    latent: np.ndarray | None = None,
    extra: np.ndarray | None = None,
    dt: float = DT_S,
) -> np.ndarray:
    """Log firing rates (log Hz) of the session's units, shape ``(n_steps, U)``.

    ``log r_u(t) = log base_u + mod_u (v(t + lead_u) . pd_u) / V + g_u |v(t + lead_u)| / V
    + w_u . latent(t) + extra_u(t) + private_u(t) + shared(t) . s_u`` with ``V`` =
    :data:`VELOCITY_NORM_CM_S`, velocity in cm/s. The private and shared noises are slow
    Ornstein-Uhlenbeck processes, so a unit's rate is never an exact function of the behaviour.
    """
    u = units.n_units
    log_rate = np.broadcast_to(np.log(units.base_hz)[None, :], (n_steps, u)).copy()
    if velocity is not None:
        velocity = np.asarray(velocity, dtype=np.float64)
        vx, vy = lead_velocity(velocity, units.lead_s, dt=dt)
        proj = vx * np.cos(units.pd_rad)[None, :] + vy * np.sin(units.pd_rad)[None, :]
        speed = np.sqrt(vx * vx + vy * vy)
        log_rate += (units.mod[None, :] * proj + units.speed_gain[None, :] * speed) / VELOCITY_NORM_CM_S
    if latent is not None:
        log_rate += latent @ units.latent_w.T
    if extra is not None:
        log_rate += extra
    log_rate += ou_noise(rng, n_steps, u, tau_s=profile.noise_tau_s, dt=dt) * units.noise_sd[None, :]
    shared = ou_noise(rng, n_steps, 2, tau_s=profile.shared_noise_tau_s, dt=dt)
    log_rate += profile.shared_noise_sd * (shared @ units.shared_w.T)
    return log_rate


def rates_to_spikes(
    rates_hz: np.ndarray,
    *,
    rng: np.random.Generator,
    duration_s: float,
    dt: float = DT_S,
    refractory_s: float = 0.002,
) -> tuple[np.ndarray, np.ndarray]:
    """Refractory Poisson spikes from piecewise-constant rates.

    Args:
        rates_hz: ``(T, U)`` firing rates in Hz; row ``i`` holds during ``[i dt, (i + 1) dt)``.
        rng: the generator to draw from.
        duration_s: spikes at or after this time are dropped, seconds.
        dt: bin width of ``rates_hz``, seconds.
        refractory_s: absolute refractory period, seconds; a spike closer than this to the previous
            spike of the same unit is deleted. Rates are raised beforehand (``r_in e^{-r_in tau} = r``)
            so the output rate matches ``rates_hz`` (rates are capped at :data:`MAX_RATE_HZ`).

    Returns:
        ``(spike_times, spike_units)``: float64 seconds sorted ascending, and int32 unit indices.
    """
    rates = np.clip(np.asarray(rates_hz, dtype=np.float64), 0.0, MAX_RATE_HZ)
    if refractory_s > 0:
        r_in = rates.copy()
        for _ in range(4):  # fixed point of r_in = r exp(r_in tau)
            r_in = rates * np.exp(r_in * refractory_s)
        rates = r_in
    counts = rng.poisson(rates * dt)
    bins, units = np.nonzero(counts)
    reps = counts[bins, units]
    bins = np.repeat(bins, reps)
    units = np.repeat(units, reps).astype(np.int32)
    times = (bins + rng.random(len(bins))) * dt
    keep = times < duration_s
    times, units = times[keep], units[keep]
    if refractory_s > 0 and len(times) > 1:
        order = np.lexsort((times, units))
        t, un = times[order], units[order]
        bad = np.zeros(len(t), dtype=bool)
        bad[1:] = (un[1:] == un[:-1]) & (np.diff(t) < refractory_s)
        times, units = t[~bad], un[~bad]
    order = np.argsort(times, kind="stable")
    return times[order], units[order]
