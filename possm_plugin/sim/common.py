"""Constants, argument checks and seeded random streams shared by the simulators.

Every random stream is keyed by ``(seed, name, ...)`` through :func:`make_rng`, so a session depends
only on ``(seed, subject, session index, arguments)``, never on how many sessions were simulated
together or in which order.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers

import numpy as np

from possm_plugin.errors import ConfigError

__all__ = [
    "DT_S",
    "POOL_MAX",
    "VELOCITY_NORM_CM_S",
    "MAX_RATE_HZ",
    "MIN_SESSION_S",
    "make_rng",
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
