"""Spikes of a simulated motor session's units, driven causally by an *intended* velocity, chunk by chunk.

:func:`~possm_plugin.sim.motor.simulate_motor_session` knows the whole behaviour in advance; a
closed-loop user does not: the velocity it intends at time ``t`` depends on the cursor it saw a moment
ago, which depends on what a decoder made of its spikes. :class:`MotorSpikeStream` draws the same units
(``session_units`` with the same keys, so unit ``j`` of ``sim-{subject}-s{index}`` has the same
tuning as in ``possm simulate``) and the same rate model (:func:`~possm_plugin.sim.spiking.unit_log_rates`'
terms: cosine tuning, speed term, rotational latent, private and shared slow noise; refractory Poisson
spikes from :func:`~possm_plugin.sim.spiking.rates_to_spikes`), but one chunk at a time and from the past
only. It does not change what ``possm simulate`` produces.

Leads, causally. In the open-loop simulator unit ``u`` encodes the hand velocity ``lead_u`` seconds
ahead. Here the user's intent at time ``s`` is the velocity the hand (or cursor) should have at
``s + delay_s`` (``delay_s`` = the subject's longest lead), so unit ``u`` at time ``t`` encodes the intent
issued at ``t + lead_u - delay_s <= t``: the same relation between spikes and "hand" velocity as in
``possm simulate``, and nothing from the future. A decoder trained on that hand velocity therefore
returns the intent about ``delay_s`` late (the motor delay, part of the loop's latency).

Units: time in seconds, velocity in cm/s, one row of intent per 10 ms (:data:`~.spiking.DT_S`).
"""

from __future__ import annotations

import math

import numpy as np

from possm_plugin.errors import ConfigError
from possm_plugin.sim.spiking import (
    DT_S,
    MAX_RATE_HZ,
    VELOCITY_NORM_CM_S,
    check_int,
    check_n_units,
    check_seed,
    check_subject,
    make_rng,
    make_subject,
    rates_to_spikes,
    session_units,
)

__all__ = ["MotorSpikeStream"]


class MotorSpikeStream:
    """Causal spike generator for the units of reaching session ``session_index`` of ``subject``.

    Args:
        session_index, seed, subject, n_units, drift_scale, refractory_s: as in
            :func:`~possm_plugin.sim.motor.simulate_motor_session` (they select the same units).
        noise_seed: keys the stream's own noise and spikes (the units do not depend on it).
        session_id: the id its units are named under (default ``sim-{subject}-seed{seed}-s{index:03d}``).

    Call :meth:`step` with the intent of the next ``n`` rows of 10 ms; it returns the spikes of those
    rows (absolute times from 0 s, unit indices) and advances the clock by ``n * DT_S``. :meth:`kick`
    gives the rotational latent the push a movement onset gives it in the open-loop simulator.
    """

    def __init__(
        self,
        session_index: int,
        *,
        seed: int = 0,
        subject: str = "m0",
        n_units: int | tuple[int, int] | None = None,
        drift_scale: float = 1.0,
        refractory_s: float = 0.002,
        noise_seed: int = 0,
        session_id: str | None = None,
    ) -> None:
        session_index = check_int("session_index", session_index, minimum=0)
        seed = check_seed(seed)
        subject = check_subject(subject)
        n_units = check_n_units(n_units)
        self.pool = make_subject(seed, subject)
        self.profile = self.pool.profile
        self.units = session_units(
            self.pool, seed=seed, session_index=session_index,
            rng=make_rng(seed, "motor-units", subject, session_index), n_units=n_units, drift_scale=drift_scale,
        )
        self.session_id = session_id or f"sim-{subject}-seed{seed}-s{session_index:03d}"
        self.unit_ids = [f"{self.session_id}/u{j:03d}" for j in range(self.units.n_units)]
        self.refractory_s = float(refractory_s)
        #: seconds from an intent to the hand velocity it stands for (the subject's longest lead)
        self.delay_s = float(self.profile.lead_s[1])
        # rows of intent each unit lags behind the newest: (delay - lead_u) / dt (>= 0)
        self._lag_rows = np.maximum(self.delay_s - self.units.lead_s, 0.0) / DT_S
        self._pad = int(math.ceil(self._lag_rows.max())) + 2
        self._rng = make_rng(seed, "motor-stream", subject, session_index, int(noise_seed))
        u = self.units.n_units
        self._a_priv = math.exp(-DT_S / self.profile.noise_tau_s)
        self._a_shared = math.exp(-DT_S / self.profile.shared_noise_tau_s)
        self._priv = self._rng.standard_normal(u)  # stationary OU states (unit variance)
        self._shared = self._rng.standard_normal(2)
        self._lam = np.array([complex(-1.0 / self.profile.latent_decay_s, 2 * np.pi * f) for f in self.profile.rot_freq_hz])
        self._z = np.zeros(len(self._lam), dtype=np.complex128)
        self._hist = np.zeros((self._pad, 2))  # intent rows, the last one newest
        self._last_spike = np.full(u, -np.inf)
        self.rows = 0  # rows generated so far; the next row starts at rows * DT_S

    @property
    def n_units(self) -> int:
        return self.units.n_units

    @property
    def t(self) -> float:
        """Start time of the next row, seconds."""
        return self.rows * DT_S

    def kick(self, direction_rad: float, amplitude: float = 1.0) -> None:
        """Kick the rotational latent as a movement onset in ``direction_rad`` does (amplitude in
        units of the centre-out radius, capped at 1.5 like the open-loop simulator)."""
        drive = np.array([math.cos(direction_rad), math.sin(direction_rad), 1.0]) * min(float(amplitude), 1.5)
        k = self.pool.latent_in @ drive
        self._z += k[0::2] + 1j * k[1::2]

    def log_rates(self, intent: np.ndarray) -> np.ndarray:
        """Log rates (log Hz) of the next ``n`` rows for intent rows ``(n, 2)`` cm/s; advances the
        stream's noise, latent and intent history (but not the spike clock: :meth:`step` does both)."""
        intent = np.asarray(intent, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(intent)):
            raise ConfigError("intent must be finite (cm/s)")
        n, un = len(intent), self.units
        self._hist = np.concatenate([self._hist[-self._pad :], intent])
        newest = len(self._hist) - n + np.arange(n)  # history row of each new row
        pos = newest[:, None] - self._lag_rows[None, :]
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        vx = (1 - frac) * self._hist[i0, 0] + frac * self._hist[i0 + 1, 0]
        vy = (1 - frac) * self._hist[i0, 1] + frac * self._hist[i0 + 1, 1]
        proj = vx * np.cos(un.pd_rad)[None, :] + vy * np.sin(un.pd_rad)[None, :]
        speed = np.sqrt(vx * vx + vy * vy)
        log_rate = np.log(un.base_hz)[None, :] + (un.mod[None, :] * proj + un.speed_gain[None, :] * speed) / VELOCITY_NORM_CM_S
        latent = np.zeros((n, 2 * len(self._lam)))
        step = np.exp(self._lam * DT_S)
        priv = np.zeros((n, un.n_units))
        shared = np.zeros((n, 2))
        ep, es = self._rng.standard_normal((n, un.n_units)), self._rng.standard_normal((n, 2))
        cp, cs = math.sqrt(1 - self._a_priv**2), math.sqrt(1 - self._a_shared**2)
        for i in range(n):
            latent[i, 0::2], latent[i, 1::2] = self._z.real, self._z.imag
            self._z = self._z * step
            priv[i], shared[i] = self._priv, self._shared
            self._priv = self._a_priv * self._priv + cp * ep[i]
            self._shared = self._a_shared * self._shared + cs * es[i]
        log_rate += latent @ un.latent_w.T
        log_rate += priv * un.noise_sd[None, :]
        log_rate += self.profile.shared_noise_sd * (shared @ un.shared_w.T)
        return log_rate

    def step(self, intent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spikes of the next ``n`` rows for intent rows ``(n, 2)`` (cm/s): ``(times, units)``, times
        in ``[t, t + n * DT_S)`` sorted ascending, units int32 indices into :attr:`unit_ids`."""
        log_rate = self.log_rates(intent)
        n = len(log_rate)
        t0 = self.t
        times, units = rates_to_spikes(
            np.minimum(np.exp(log_rate), MAX_RATE_HZ), rng=self._rng, duration_s=n * DT_S, refractory_s=self.refractory_s
        )
        times = times + t0
        if self.refractory_s > 0 and len(times):  # refractory across the previous call's last spikes
            keep = times - self._last_spike[units] >= self.refractory_s
            times, units = times[keep], units[keep]
            np.maximum.at(self._last_spike, units, times)
        self.rows += n
        return times, units
