"""What every inference engine is: per-slot recurrent state it owns, and one step per chunk.

An engine decodes ``n_slots`` independent streams (slots). It keeps their state in its own arrays
(NumPy for the compiled and NumPy engines, torch tensors for the torch engines, laid out as
:meth:`POSSM.initial_state` lays it out) and each slot's session row; :meth:`Engine.step` decodes one
chunk of some or all slots and returns their outputs as a float32 NumPy array, with no conversion of
the state. Subclasses implement :meth:`Engine._run`, a pure function of tokens, session rows and a
state.

Shape letters: B slots in this step, N tokens per chunk, C outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Engine"]


class Engine:
    """Base class: slots' state and session rows; subclasses set ``name`` and implement ``_run``.

    Args:
        state: the initial state of all slots (one array per part, leading axis the slot).
        fresh: one slot's initial state (leading axis 1), copied into a slot by :meth:`reset`.
        sessions: each slot's session row (n_slots,), in the engine's array type.
    """

    name = "engine"

    def __init__(self, *, state: tuple, fresh: tuple, sessions) -> None:
        self._state = tuple(state)
        self._fresh = tuple(fresh)
        self._sessions = sessions

    @property
    def state(self) -> tuple:
        """The state of every slot (the engine's own arrays: read, do not keep across steps)."""
        return self._state

    @property
    def n_slots(self) -> int:
        return int(self._sessions.shape[0])

    def reset(self, slot: int | None = None) -> None:
        """Set one slot's state (or every slot's) back to the initial state."""
        idx = range(self.n_slots) if slot is None else (slot,)
        for i in idx:
            for x, f in zip(self._state, self._fresh):
                x[i] = f[0]

    def load_state(self, state: tuple) -> None:
        """Copy ``state`` (all slots, e.g. another engine's, NumPy arrays or CPU tensors) into this engine's."""
        for x, y in zip(self._state, state):
            x[...] = y.detach().cpu().numpy() if hasattr(y, "detach") else y

    def step(self, units: np.ndarray, times: np.ndarray, mask: np.ndarray, slots: Sequence[int] | None = None) -> np.ndarray:
        """Decode one chunk of each slot in ``slots`` (None: every slot, in order).

        Args:
            units: token unit rows (B, N) int64; times: seconds since the chunk start (B, N) float32;
                mask: real tokens (B, N) bool.
            slots: which slots the rows are, ascending (None: all).

        Returns:
            outputs (B, C) float32 (NumPy); the slots' state has advanced by one chunk.
        """
        if slots is None or len(slots) == self.n_slots:
            out, self._state = self._run(units, times, mask, self._sessions, self._state)
            return out
        sel = list(slots)
        out, new = self._run(units, times, mask, self._sessions[sel], tuple(x[sel] for x in self._state))
        for x, y in zip(self._state, new):
            x[sel] = y
        return out

    def warm(self, slot: int) -> None:
        """One throwaway step of a blank chunk on a copy of ``slot``'s state: outputs and state are
        untouched, the step's code and weights are in the CPU caches afterwards."""
        units, times, mask = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.float32), np.ones((1, 1), bool)
        self._run(units, times, mask, self._sessions[slot : slot + 1], tuple(x[slot : slot + 1] for x in self._state))

    def _run(self, units: np.ndarray, times: np.ndarray, mask: np.ndarray, sessions, state: tuple) -> tuple[np.ndarray, tuple]:
        """Tokens (B, N), session rows (B,) and a state of B slots -> outputs (B, C) and the new state
        (new arrays; ``state`` itself is not modified)."""
        raise NotImplementedError
