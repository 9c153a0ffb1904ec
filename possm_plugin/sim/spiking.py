"""Shared machinery of the simulators: seeds, subjects, neuron pools, latent dynamics and spiking.

The three simulated tasks (:mod:`.motor`, :mod:`.handwriting`, :mod:`.phonemes`) describe *what the
subject does* (a behaviour time series and event times). This module turns that into spikes:

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

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from possm_plugin.errors import ConfigError

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

#: Resolution of behaviour and firing rates, seconds (100 Hz, the behaviour sampling rate).
DT_S = 0.01
#: Candidate neurons per subject. Sessions draw their units from the first ``pool_size`` of them.
POOL_MAX = 1024
#: Velocity scale of the tuning model: a unit's log rate changes by ``mod`` per this many cm/s.
VELOCITY_NORM_CM_S = 30.0
#: Upper limit of any firing rate, Hz (below 1 / (e * refractory) so the refractory spiking can reach it).
MAX_RATE_HZ = 150.0
MIN_SESSION_S = 5.0  # the shortest simulated session, s (room for a trial)


# --------------------------------------------------------------------------------------------------
# argument checks (shared by the task modules)
# --------------------------------------------------------------------------------------------------
def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, or :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_seed(seed) -> int:
    """A non-negative integer seed."""
    return check_int("seed", seed, minimum=0)


def check_subject(subject) -> str:
    """A non-empty subject string without '/' or whitespace (it becomes part of unit ids)."""
    if not isinstance(subject, str) or not subject or "/" in subject or any(c.isspace() for c in subject):
        raise ConfigError(f"subject must be a non-empty string without '/' or whitespace, got {subject!r}")
    return subject


def check_positive(name: str, value, *, minimum: float = 0.0, inclusive: bool = False) -> float:
    """A finite float greater than ``minimum`` (or equal to it, when ``inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if float(value) < minimum or (float(value) == minimum and not inclusive):
        raise ConfigError(f"{name} must be {'>=' if inclusive else '>'} {minimum:g}, got {float(value):g}")
    return float(value)


def check_range(name: str, value, *, minimum: float = 0.0, allow_equal: bool = True) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite floats with ``minimum <= low <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < minimum or hi < lo or (not allow_equal and hi == lo):
        raise ConfigError(f"{name} must satisfy {minimum} <= low <= high (finite), got {value!r}")
    return lo, hi


def check_n_units(n_units) -> int | tuple[int, int] | None:
    """None, an int >= 1, or a ``(min, max)`` pair of ints; else :class:`ConfigError`."""
    if n_units is None:
        return None
    if isinstance(n_units, (tuple, list)):
        if len(n_units) != 2:
            raise ConfigError(f"n_units must be an int, a (min, max) pair or None, got {n_units!r}")
        lo = check_int("n_units[0]", n_units[0], minimum=1, maximum=POOL_MAX)
        hi = check_int("n_units[1]", n_units[1], minimum=lo, maximum=POOL_MAX)
        return (lo, hi)
    return check_int("n_units", n_units, minimum=1, maximum=POOL_MAX)


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------
def make_rng(seed: int, *key: int | str | float) -> np.random.Generator:
    """A generator for the stream named by ``(seed, *key)``.

    The key is hashed (SHA-256 of its JSON form), so streams are independent of one another and of
    the order in which they are created: ``make_rng(0, "drift", "m0", 3)`` is the same generator in
    every process and on every platform.
    """
    digest = hashlib.sha256(json.dumps([int(seed), *key]).encode()).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence(words))


# --------------------------------------------------------------------------------------------------
# subjects and their neurons
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubjectProfile:
    """Statistics of one simulated subject (drawn from ``(seed, subject)``; JSON-able via :meth:`to_meta`).

    Attributes:
        subject: the subject string.
        n_units_range: (min, max) number of units a session records (inclusive).
        pool_size: neurons in the subject's pool that sessions sample from.
        base_rate_hz: (low, high) range of baseline rates, Hz (log-uniform).
        mod_depth: mean modulation depth, change of log rate per 30 cm/s along the preferred direction.
        speed_gain: mean change of log rate per 30 cm/s of speed (direction-independent).
        lead_s: (low, high) range of how far neural activity leads the behaviour, seconds.
        pd_axis_rad: axis along which preferred directions cluster (bimodal).
        pd_clustered: fraction of units whose preferred direction clusters around the axis.
        latent_dim: dimension of the rotational latent (2 or 4; pairs of dims rotate together).
        rot_freq_hz: rotation frequency of each latent plane, Hz.
        latent_decay_s: decay time constant of the latent, seconds.
        latent_gain: standard deviation of a unit's loading on each latent dimension (log-rate units).
        noise_sd: standard deviation of a unit's private slow log-rate noise.
        noise_tau_s: time constant of the private noise, seconds.
        shared_noise_sd: standard deviation of the shared (2-D) slow log-rate noise per unit.
        shared_noise_tau_s: time constant of the shared noise, seconds.
        drift: standard deviation of the per-session random-walk drift of preferred directions (rad)
            and of log baselines and log modulation depths.
    """

    subject: str
    n_units_range: tuple[int, int]
    pool_size: int
    base_rate_hz: tuple[float, float]
    mod_depth: float
    speed_gain: float
    lead_s: tuple[float, float]
    pd_axis_rad: float
    pd_clustered: float
    latent_dim: int
    rot_freq_hz: tuple[float, ...]
    latent_decay_s: float
    latent_gain: float
    noise_sd: float
    noise_tau_s: float
    shared_noise_sd: float
    shared_noise_tau_s: float
    drift: float

    def to_meta(self) -> dict:
        """The profile as plain JSON types (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class NeuronPool:
    """The :data:`POOL_MAX` candidate neurons of one subject (arrays indexed by pool index).

    ``latent_in`` maps a 3-vector ``[cos(direction), sin(direction), 1]`` of a movement to the kick it
    gives each latent plane at movement onset, shape ``(latent_dim, 3)``.
    """

    profile: SubjectProfile
    pd_rad: np.ndarray  # (P,) preferred direction, radians
    log_mod: np.ndarray  # (P,) log of the modulation depth
    speed_gain: np.ndarray  # (P,) log-rate change per VELOCITY_NORM_CM_S of speed
    log_base: np.ndarray  # (P,) log baseline rate (log Hz)
    lead_s: np.ndarray  # (P,) lead of neural activity over behaviour, s
    latent_w: np.ndarray  # (P, latent_dim) loadings on the rotational latent
    shared_w: np.ndarray  # (P, 2) loadings on the shared noise
    noise_sd: np.ndarray  # (P,) private noise sd (log-rate units)
    latent_in: np.ndarray  # (latent_dim, 3) onset kick per [cos, sin, 1]


@dataclass(frozen=True)
class UnitParams:
    """The units one session records (arrays indexed by unit, in the session's unit order)."""

    pool_index: np.ndarray  # (U,) int, index into the subject's pool
    pd_rad: np.ndarray
    mod: np.ndarray  # modulation depth (log-rate change per VELOCITY_NORM_CM_S)
    speed_gain: np.ndarray
    base_hz: np.ndarray
    lead_s: np.ndarray
    latent_w: np.ndarray
    shared_w: np.ndarray
    noise_sd: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.pool_index)


def make_subject(seed: int, subject: str) -> NeuronPool:
    """Draw the profile and neuron pool of ``subject`` (deterministic in ``(seed, subject)``)."""
    seed = check_seed(seed)
    subject = check_subject(subject)
    rng = make_rng(seed, "subject-profile", subject)
    n_lo = int(rng.integers(55, 86))
    n_hi = n_lo + int(rng.integers(40, 71))
    n_planes = int(rng.integers(1, 3))
    profile = SubjectProfile(
        subject=subject,
        n_units_range=(n_lo, n_hi),
        pool_size=int(round(n_hi * rng.uniform(1.25, 1.6))),
        base_rate_hz=(float(rng.uniform(3.0, 7.0)), float(rng.uniform(20.0, 32.0))),
        mod_depth=float(rng.uniform(0.42, 0.55)),
        speed_gain=float(rng.uniform(0.1, 0.3)),
        lead_s=(float(rng.uniform(0.04, 0.08)), float(rng.uniform(0.12, 0.16))),
        pd_axis_rad=float(rng.uniform(0.0, np.pi)),
        pd_clustered=float(rng.uniform(0.2, 0.5)),
        latent_dim=2 * n_planes,
        rot_freq_hz=tuple(float(f) for f in rng.uniform(1.2, 2.5, size=n_planes)),
        latent_decay_s=float(rng.uniform(0.15, 0.3)),
        latent_gain=float(rng.uniform(0.25, 0.4)),
        noise_sd=float(rng.uniform(0.3, 0.4)),
        noise_tau_s=float(rng.uniform(0.1, 0.3)),
        shared_noise_sd=float(rng.uniform(0.15, 0.3)),
        shared_noise_tau_s=float(rng.uniform(0.5, 1.0)),
        drift=float(rng.uniform(0.03, 0.06)),
    )

    rng = make_rng(seed, "subject-pool", subject)
    p = POOL_MAX
    clustered = rng.random(p) < profile.pd_clustered
    pd = rng.uniform(0.0, 2 * np.pi, size=p)
    axis = profile.pd_axis_rad + np.pi * rng.integers(0, 2, size=p)
    pd = np.where(clustered, axis + rng.vonmises(0.0, 2.0, size=p), pd) % (2 * np.pi)
    mod = profile.mod_depth * rng.gamma(3.0, 1.0 / 3.0, size=p)
    lo, hi = profile.base_rate_hz
    log_base = rng.uniform(np.log(lo), np.log(hi), size=p)
    d = profile.latent_dim
    pool = NeuronPool(
        profile=profile,
        pd_rad=pd,
        log_mod=np.log(np.maximum(mod, 1e-3)),
        speed_gain=profile.speed_gain + 0.15 * rng.standard_normal(p),
        log_base=log_base,
        lead_s=rng.uniform(*profile.lead_s, size=p),
        latent_w=profile.latent_gain * rng.standard_normal((p, d)),
        shared_w=rng.standard_normal((p, 2)) / np.sqrt(2.0),
        noise_sd=profile.noise_sd * rng.uniform(0.7, 1.3, size=p),
        latent_in=rng.standard_normal((d, 3)),
    )
    return pool


def _drift(pool: NeuronPool, seed: int, session_index: int, scale: float) -> tuple[np.ndarray, ...]:
    """Cumulative random-walk drift (pd, log base, log mod) of the pool at ``session_index``."""
    d_pd = np.zeros(POOL_MAX)
    d_base = np.zeros(POOL_MAX)
    d_mod = np.zeros(POOL_MAX)
    if scale > 0:
        sd = pool.profile.drift * scale
        for k in range(1, session_index + 1):
            steps = make_rng(seed, "drift", pool.profile.subject, k).standard_normal((3, POOL_MAX)) * sd
            d_pd += steps[0]
            d_base += steps[1]
            d_mod += steps[2]
    return d_pd, d_base, d_mod


def session_units(
    pool: NeuronPool,
    *,
    seed: int,
    session_index: int,
    rng: np.random.Generator,
    n_units: int | tuple[int, int] | None = None,
    drift_scale: float = 1.0,
) -> UnitParams:
    """The units session ``session_index`` records: a random subset of the pool, drifted.

    Args:
        pool: the subject's pool (:func:`make_subject`).
        seed: the simulation seed (keys the drift, which is shared by all tasks of a subject).
        session_index: non-negative session number; drift is a random walk over it.
        rng: the session's generator (draws the unit count and the subset).
        n_units: a fixed count, a ``(min, max)`` range, or ``None`` for the subject's range.
        drift_scale: multiplies the subject's per-session drift (0 disables drift).
    """
    lo, hi = pool.profile.n_units_range if n_units is None else (
        (n_units, n_units) if isinstance(n_units, numbers.Integral) else n_units
    )
    count = int(rng.integers(int(lo), int(hi) + 1))
    if not 1 <= count <= POOL_MAX:
        raise ConfigError(f"n_units must be between 1 and {POOL_MAX}, got {n_units!r}")
    active = max(pool.profile.pool_size, count)
    idx = rng.choice(active, size=count, replace=False)
    d_pd, d_base, d_mod = _drift(pool, seed, session_index, drift_scale)
    return UnitParams(
        pool_index=idx.astype(np.int64),
        pd_rad=(pool.pd_rad[idx] + d_pd[idx]) % (2 * np.pi),
        mod=np.exp(pool.log_mod[idx] + d_mod[idx]),
        speed_gain=pool.speed_gain[idx].copy(),
        base_hz=np.exp(pool.log_base[idx] + d_base[idx]),
        lead_s=pool.lead_s[idx].copy(),
        latent_w=pool.latent_w[idx].copy(),
        shared_w=pool.shared_w[idx].copy(),
        noise_sd=pool.noise_sd[idx].copy(),
    )


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
