"""The 2-D cursor task: targets, a state machine per trial, and the events it records.

Trials run back to back on the chunk grid; the task is updated once per chunk with the cursor position
at the chunk's end. A trial:

1. ``onset``: the target appears (the cursor is wherever the previous trial left it);
2. ``enter``: the cursor enters the target (distance <= ``radius_cm``) - the first entry and every
   re-entry after leaving are ``enter`` events; ``entries`` counts them, ``reentries = entries - 1``;
3. ``leave``: the cursor leaves before the hold is complete (a broken hold; counted in ``breaks``);
4. ``success``: the cursor stayed inside for ``hold_s`` (measured from the ``enter`` of that hold);
   or ``timeout``: ``timeout_s`` passed since the onset without a completed hold (a failed trial).

Layouts: ``center_out`` (centre-out-and-back: the next target is the centre when the cursor is outside
the centre target, else one of the 8 outer targets, in a random order per cycle of 8; out and back
trials both count) and ``random`` (targets drawn uniformly in the disc of ``radius_cm``, at least
``min_distance_cm`` from the cursor). So no target ever appears around the cursor, and a cursor that
never moves acquires nothing.

Units: cm and seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from possm_plugin.errors import ConfigError

__all__ = ["TaskConfig", "Trial", "CursorTask", "LAYOUTS"]

LAYOUTS = ("center_out", "random")


@dataclass(frozen=True)
class TaskConfig:
    """The task's geometry and timing (cm, s)."""

    layout: str = "center_out"
    radius_cm: float = 10.0  # distance of the 8 outer targets from the centre
    target_radius_cm: float = 2.0
    hold_s: float = 0.5
    timeout_s: float = 6.0
    workspace_cm: float = 14.0  # the cursor is clamped to this disc; random targets lie within radius_cm
    min_distance_cm: float = 5.0  # random layout: least distance of a new target from the cursor

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("radius_cm", "target_radius_cm", "hold_s", "timeout_s", "workspace_cm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"task {name} must be a positive number, got {v!r}")
        if self.hold_s >= self.timeout_s:
            raise ConfigError(f"hold_s={self.hold_s} must be shorter than timeout_s={self.timeout_s}")
        if not self.target_radius_cm < self.min_distance_cm < self.radius_cm:
            raise ConfigError(f"min_distance_cm must be between target_radius_cm and radius_cm, got {self.min_distance_cm!r}")
        if self.target_radius_cm >= self.radius_cm / 2:
            raise ConfigError(f"target_radius_cm={self.target_radius_cm} must be under half of radius_cm={self.radius_cm}")


@dataclass
class Trial:
    """One trial's record (times in s on the loop clock, positions in cm)."""

    index: int
    target: np.ndarray
    start_pos: np.ndarray
    onset_s: float
    outcome: str = "running"  # running | success | timeout
    end_s: float | None = None
    first_entry_s: float | None = None
    hold_start_s: float | None = None  # the enter of the hold that succeeded
    entries: int = 0
    breaks: int = 0
    path_cm: float = 0.0  # path length from onset to hold_start (success) or end (timeout)
    hold_pos: np.ndarray | None = None  # cursor position at hold_start
    _path_at_entry: float = 0.0
    _pos_at_entry: np.ndarray | None = None

    @property
    def reentries(self) -> int:
        return max(0, self.entries - 1)

    def to_dict(self) -> dict:
        return {
            "index": self.index, "target": [float(x) for x in self.target], "start_pos": [float(x) for x in self.start_pos],
            "onset_s": self.onset_s, "outcome": self.outcome, "end_s": self.end_s, "first_entry_s": self.first_entry_s,
            "hold_start_s": self.hold_start_s, "entries": self.entries, "reentries": self.reentries, "breaks": self.breaks,
            "path_cm": self.path_cm, "hold_pos": None if self.hold_pos is None else [float(x) for x in self.hold_pos],
        }


class CursorTask:
    """The state machine. ``update(t, pos)`` once per chunk end; ``events`` lists
    ``(t, trial, kind, x, y)`` tuples; ``trials`` the :class:`Trial` records (the last may be running).

    Args:
        config: the task's geometry and timing.
        n_trials: trials to run; :attr:`done` turns True when the last one ends.
        rng: draws the outer-target order / random targets.
    """

    def __init__(self, config: TaskConfig, *, n_trials: int, rng: np.random.Generator, start_pos=(0.0, 0.0), t0: float = 0.0) -> None:
        if int(n_trials) < 1:
            raise ConfigError(f"n_trials must be >= 1, got {n_trials!r}")
        self.config = config
        self.n_trials = int(n_trials)
        self._rng = rng
        self._order: list[int] = []
        self.events: list[tuple[float, int, str, float, float]] = []
        self.trials: list[Trial] = []
        self._inside = False
        self._pos = np.asarray(start_pos, dtype=np.float64).copy()
        self._start(t0)

    # -- targets ------------------------------------------------------------------------------
    def _next_target(self) -> np.ndarray:
        c = self.config
        if c.layout == "center_out":
            if float(np.linalg.norm(self._pos)) > c.target_radius_cm:
                return np.zeros(2)
            if not self._order:
                self._order = list(self._rng.permutation(8))
            a = 2 * math.pi * self._order.pop() / 8
            return c.radius_cm * np.array([math.cos(a), math.sin(a)])
        for _ in range(1000):
            r, a = c.radius_cm * math.sqrt(self._rng.random()), 2 * math.pi * self._rng.random()
            p = np.array([r * math.cos(a), r * math.sin(a)])
            if np.linalg.norm(p - self._pos) >= c.min_distance_cm:
                return p
        return -self._pos  # pragma: no cover - a disc always has room

    def _start(self, t: float) -> None:
        trial = Trial(index=len(self.trials), target=self._next_target(), start_pos=self._pos.copy(), onset_s=float(t))
        self.trials.append(trial)
        self._inside = False
        self.events.append((float(t), trial.index, "onset", *trial.target))
        self._check_inside(t, trial)  # a target can appear around the cursor

    # -- state --------------------------------------------------------------------------------
    @property
    def current(self) -> Trial:
        return self.trials[-1]

    @property
    def done(self) -> bool:
        return len(self.trials) == self.n_trials and self.current.outcome != "running"

    def _event(self, t: float, kind: str) -> None:
        self.events.append((float(t), self.current.index, kind, float(self._pos[0]), float(self._pos[1])))

    def _check_inside(self, t: float, trial: Trial) -> None:
        inside = float(np.linalg.norm(self._pos - trial.target)) <= self.config.target_radius_cm
        if inside and not self._inside:
            trial.entries += 1
            if trial.first_entry_s is None:
                trial.first_entry_s = float(t)
            trial._path_at_entry, trial._pos_at_entry = trial.path_cm, self._pos.copy()
            trial.hold_start_s = float(t)
            self._event(t, "enter")
        elif not inside and self._inside:
            trial.breaks += 1
            trial.hold_start_s = None
            self._event(t, "leave")
        self._inside = inside

    def update(self, t: float, pos) -> str | None:
        """Move the cursor to ``pos`` at time ``t`` (a chunk end); returns ``"success"`` or
        ``"timeout"`` when the current trial ends (and starts the next one, if any), else None."""
        if self.done:
            return None
        pos = np.asarray(pos, dtype=np.float64)
        trial = self.current
        trial.path_cm += float(np.linalg.norm(pos - self._pos))
        self._pos = pos.copy()
        self._check_inside(t, trial)
        eps = 1e-9
        outcome = None
        if self._inside and t - trial.hold_start_s >= self.config.hold_s - eps:
            outcome = "success"
            trial.path_cm, trial.hold_pos = trial._path_at_entry, trial._pos_at_entry
        elif t - trial.onset_s >= self.config.timeout_s - eps:
            outcome = "timeout"
            trial.hold_start_s = None
        if outcome is None:
            return None
        trial.outcome, trial.end_s = outcome, float(t)
        self._event(t, outcome)
        if len(self.trials) < self.n_trials:
            self._start(t)
        return outcome

    @property
    def target(self) -> np.ndarray:
        return self.current.target
