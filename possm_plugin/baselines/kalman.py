"""Kalman filter decoder (Wu et al., 2003): the standard clinical decoder of intracortical BCIs.

State ``x_t``: the kinematics (the targets, e.g. velocity; optionally also position, integrated from
velocity along the chunk grid), centred. Observation ``y_t``: the units' counts (optionally several
lags stacked), centred. Model ``x_t = A x_{t-1} + w``, ``y_t = H x_t + q`` with ``w ~ N(0, W)`` and
``q ~ N(0, Q)``; A, W, H, Q are fit by least squares on the training chunks (transitions only between
consecutive training chunks). Decoding runs the filter over the whole chunk grid from the start of the
session, either with the steady-state gain (default; what clinical systems run) or the full
time-varying filter. The update is computed in information form, so only S x S matrices are inverted
(S state dimensions), however many units there are.
"""

from __future__ import annotations

import numpy as np

from possm_plugin.baselines.base import BinnedDecoder, Part
from possm_plugin.baselines.binning import DEFAULT_STEP, DEFAULT_WIDTH, lagged
from possm_plugin.errors import ConfigError

__all__ = ["KalmanFilter"]


class KalmanFilter(BinnedDecoder):
    """Kalman filter fit by least squares.

    Args:
        position: add position (integrated velocity, one per target) to the state.
        n_lags: chunks of counts stacked into the observation (1: the current chunk only).
        steady_state: use the converged (steady-state) gain; False runs the full filter.
        obs_ridge: added to Q's diagonal, relative to its mean variance (keeps Q invertible).
        width, step: the chunk grid (seconds).

    After :meth:`fit`: ``A`` (S, S), ``W`` (S, S), ``H`` (F, S), ``Q`` (F, F), ``gain`` (S, F, the
    steady-state gain), with S = C or 2C states and F = n_lags * U observations.
    """

    name = "kalman"

    def __init__(
        self,
        *,
        position: bool = False,
        n_lags: int = 1,
        steady_state: bool = True,
        obs_ridge: float = 1e-3,
        width: float = DEFAULT_WIDTH,
        step: float = DEFAULT_STEP,
    ) -> None:
        super().__init__(width=width, step=step)
        if int(n_lags) < 1:
            raise ConfigError(f"n_lags must be >= 1, got {n_lags!r}")
        if not obs_ridge >= 0:
            raise ConfigError(f"obs_ridge must be >= 0, got {obs_ridge!r}")
        self.position = bool(position)
        self.n_lags = int(n_lags)
        self.steady_state = bool(steady_state)
        self.obs_ridge = float(obs_ridge)
        self.A = self.W = self.H = self.Q = self.gain = None

    # -- data ----------------------------------------------------------------------------------
    def _states(self, part: Part) -> np.ndarray:
        v = self._scaled(part).astype(np.float64)
        if not self.position:
            return v
        return np.concatenate([v, np.cumsum(v, axis=0) * self.step], axis=1)

    def _obs(self, part: Part) -> np.ndarray:
        return lagged(part.counts.astype(np.float64), self.n_lags)

    # -- fit -----------------------------------------------------------------------------------
    def _fit(self, train: list[Part], valid: list[Part]) -> None:
        xs, ys, x_prev, x_next = [], [], [], []
        for p in train:
            x, y = self._states(p), self._obs(p)
            m = p.mask
            xs.append(x[m])
            ys.append(y[m])
            pair = m[1:] & m[:-1]
            x_prev.append(x[:-1][pair])
            x_next.append(x[1:][pair])
        x, y = np.concatenate(xs), np.concatenate(ys)
        xp, xn = np.concatenate(x_prev), np.concatenate(x_next)
        self.mx, self.my = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - self.mx, y - self.my
        xpc, xnc = xp - self.mx, xn - self.mx
        s = x.shape[1]
        if len(xp) <= s:
            raise ConfigError(f"too few consecutive training chunks ({len(xp)}) to fit the state transition")
        self.A = np.linalg.lstsq(xpc, xnc, rcond=None)[0].T
        r = xnc - xpc @ self.A.T
        self.W = r.T @ r / len(r) + 1e-9 * np.eye(s)
        self.H = np.linalg.lstsq(xc, yc, rcond=None)[0].T  # (F, S)
        e = yc - xc @ self.H.T
        q = e.T @ e / len(e)
        self.Q = q + self.obs_ridge * max(float(np.trace(q)) / len(q), 1e-12) * np.eye(len(q))
        self.P0 = xc.T @ xc / len(xc) + 1e-9 * np.eye(s)
        qi_h = np.linalg.solve(self.Q, self.H)  # Q^-1 H (F, S)
        self._ht_qi = qi_h.T  # H' Q^-1 (S, F)
        self._ht_qi_h = self.H.T @ qi_h  # H' Q^-1 H (S, S)
        self._ht_qi_h = 0.5 * (self._ht_qi_h + self._ht_qi_h.T)
        p = self.P0
        for _ in range(2000):  # Riccati iteration to the steady state
            p_pred = self.A @ p @ self.A.T + self.W
            p_new = np.linalg.inv(np.linalg.inv(p_pred) + self._ht_qi_h)
            if np.max(np.abs(p_new - p)) < 1e-12 * max(1.0, float(np.max(np.abs(p)))):
                p = p_new
                break
            p = p_new
        self.P_ss = p
        self.gain = p @ self._ht_qi  # (S, F)

    # -- decode --------------------------------------------------------------------------------
    def _predict_part(self, part: Part) -> np.ndarray:
        y = self._obs(part) - self.my
        n, s = len(y), len(self.A)
        out = np.zeros((n, s))
        x = np.zeros(s)
        if self.steady_state:
            m = (np.eye(s) - self.gain @ self.H) @ self.A
            drive = y @ self.gain.T  # K y_t for every t
            for t in range(n):
                x = m @ x + drive[t]
                out[t] = x
        else:
            p = self.P0
            for t in range(n):
                x_pred = self.A @ x
                p_pred = self.A @ p @ self.A.T + self.W
                p = np.linalg.inv(np.linalg.inv(p_pred) + self._ht_qi_h)
                x = x_pred + p @ (self._ht_qi @ (y[t] - self.H @ x_pred))
                out[t] = x
        out += self.mx
        return out[:, : self.n_outputs].astype(np.float32)
