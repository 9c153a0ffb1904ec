"""Seeded, deterministic simulators of multi-session neural recordings.

* :func:`simulate_motor_sessions` - motor-cortex reaching (regression of hand velocity);
* :func:`simulate_handwriting_sessions` - handwriting-like character classification;
* :func:`simulate_phoneme_sessions` - phoneme sequences for CTC;
* :func:`write_sessions` - save sessions as ``<session_id>.npz`` files.

Every session depends only on ``(seed, subject, session index, arguments)``, and its id names the
first three: ``sim-m0-seed0-s000`` (:mod:`.ids`).
"""

from __future__ import annotations

from pathlib import Path

from possm_plugin.data.session import Session
from possm_plugin.errors import DataError
from possm_plugin.sim.handwriting import simulate_handwriting_session, simulate_handwriting_sessions
from possm_plugin.sim.ids import legacy_prefix, parse_sim_session_id, sim_session_id
from possm_plugin.sim.motor import simulate_motor_session, simulate_motor_sessions
from possm_plugin.sim.phonemes import simulate_phoneme_session, simulate_phoneme_sessions
from possm_plugin.sim.spiking import make_subject

__all__ = [
    "simulate_motor_session",
    "simulate_motor_sessions",
    "simulate_handwriting_session",
    "simulate_handwriting_sessions",
    "simulate_phoneme_session",
    "simulate_phoneme_sessions",
    "make_subject",
    "write_sessions",
    "sim_session_id",
    "parse_sim_session_id",
    "legacy_prefix",
]


def write_sessions(sessions: list[Session], out_dir: str | Path) -> list[Path]:
    """Save each session as ``out_dir/<session_id>.npz`` (creating ``out_dir``); returns the paths.

    Raises :class:`~possm_plugin.errors.DataError` if two sessions share an id (one would overwrite
    the other) or an item is not a :class:`~possm_plugin.data.session.Session`.
    """
    sessions = list(sessions)
    seen: set[str] = set()
    for s in sessions:
        if not isinstance(s, Session):
            raise DataError(f"write_sessions expects Session objects, got {type(s).__name__}")
        if s.session_id in seen:
            raise DataError(f"two sessions share the id {s.session_id!r}; each is saved as <session_id>.npz")
        seen.add(s.session_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [s.save(out / f"{s.session_id}.npz") for s in sessions]
