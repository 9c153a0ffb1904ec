"""The simulated BCI user: sees the cursor late, intends a velocity toward the target.

Each chunk the user looks at the display as it was ``feedback_delay_s`` ago (cursor and target; a new
target is noticed only that late too) and intends, for the whole chunk, a velocity toward the target
whose speed slows near it: ``speed = max_speed * (1 - exp(-d / (max_speed / gain)))`` with ``d`` the
distance to the target centre (``gain`` 1/s is the slope near the target). To that it adds motor noise
(white per chunk, ``noise_cm_s`` per axis), a constant ``bias_cm_s`` and a ``drift`` (a random walk of
the bias, ``drift_cm_s_per_sqrt_s`` per axis). The intent is what the simulated cortex encodes
(:class:`~possm_plugin.sim.motor_stream.MotorSpikeStream`).

Units: cm, cm/s, seconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from possm_plugin.errors import ConfigError

__all__ = ["UserConfig", "SimulatedUser"]


@dataclass(frozen=True)
class UserConfig:
    """How the simulated user behaves (cm/s, s)."""

    feedback_delay_s: float = 0.15
    max_speed_cm_s: float = 20.0
    gain: float = 3.0
    noise_cm_s: float = 1.0
    bias_cm_s: tuple[float, float] = (0.0, 0.0)
    drift_cm_s_per_sqrt_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("feedback_delay_s", "noise_cm_s", "drift_cm_s_per_sqrt_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"user {name} must be a number >= 0, got {v!r}")
        for name in ("max_speed_cm_s", "gain"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"user {name} must be a positive number, got {v!r}")
        if len(self.bias_cm_s) != 2:
            raise ConfigError(f"user bias_cm_s must be an (x, y) pair, got {self.bias_cm_s!r}")


class SimulatedUser:
    """``observe(pos, target, trial)`` once per chunk end (what the display shows), ``intent()``
    for the next chunk: an ``(2,)`` velocity in cm/s computed from the observation ``delay_chunks`` old."""

    def __init__(self, config: UserConfig, *, chunk_s: float, rng: np.random.Generator) -> None:
        self.config = config
        self.chunk_s = float(chunk_s)
        self.delay_chunks = int(round(config.feedback_delay_s / self.chunk_s))
        self._rng = rng
        self._seen: deque = deque(maxlen=self.delay_chunks + 1)
        self._bias = np.asarray(config.bias_cm_s, dtype=np.float64).copy()
        self.trial_seen = -1  # the newest trial index the user has seen

    def observe(self, pos, target, trial: int) -> None:
        """What the display shows at a chunk end (the user sees it ``delay_chunks`` later)."""
        self._seen.append((np.asarray(pos, np.float64).copy(), np.asarray(target, np.float64).copy(), int(trial)))

    def seen(self):
        """The observation the user acts on now: the oldest kept (``delay_chunks`` ago, or the first)."""
        return self._seen[0]

    def intent(self) -> np.ndarray:
        c = self.config
        pos, target, _ = self.seen()
        d = target - pos
        dist = float(np.hypot(*d))
        speed = c.max_speed_cm_s * (1.0 - math.exp(-dist * c.gain / c.max_speed_cm_s))
        v = d / dist * speed if dist > 1e-9 else np.zeros(2)
        if c.drift_cm_s_per_sqrt_s:
            self._bias = self._bias + c.drift_cm_s_per_sqrt_s * math.sqrt(self.chunk_s) * self._rng.standard_normal(2)
        noise = c.noise_cm_s * self._rng.standard_normal(2) if c.noise_cm_s else np.zeros(2)
        return v + self._bias + noise
