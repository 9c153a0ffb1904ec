"""Simulated subjects and the units each session records.

:func:`make_subject` draws a :class:`SubjectProfile` (unit counts, baseline rates, tuning depths,
leads, latent dynamics, noise) and a :class:`NeuronPool` of :data:`~.common.POOL_MAX` candidate
neurons for one subject string; :func:`session_units` draws the :class:`UnitParams` one session
records: a random subset of the pool whose tuning has drifted slightly (a random walk over session
indices), so sessions of one subject share structure the way recordings from one array on
different days do.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from possm_plugin.errors import ConfigError
from possm_plugin.sim.common import POOL_MAX, check_seed, check_subject, make_rng

__all__ = ["SubjectProfile", "NeuronPool", "UnitParams", "make_subject", "session_units"]


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
