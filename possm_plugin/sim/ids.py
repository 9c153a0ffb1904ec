"""Session ids of simulated sessions.

A simulated session is fixed by ``(seed, subject, task, session index)`` (and the simulator's
arguments), so its id carries all four: ``sim-{subject}-seed{seed}-s{index:03d}`` for reaching,
``sim-{subject}-seed{seed}-hw-s{index:03d}`` for handwriting and ``sim-{subject}-seed{seed}-ph-s{index:03d}``
for phonemes; e.g. ``sim-m0-seed0-s000`` and ``sim-m0-seed99-s000`` are two different sessions (the
unit ids follow: ``<session id>/u000``, ...). The content fingerprint
(:attr:`~possm_plugin.data.session.Session.fingerprint`) tells apart what the id still does not, such as
two durations.

``id_prefix`` replaces everything before ``-s{index:03d}``: ``id_prefix="sim-m0"`` gives the ids of
simulated sessions written before the seed was part of them (``sim-m0-s000``), which the bundled
checkpoint was trained on (:func:`legacy_prefix`).
"""

from __future__ import annotations

import re

from possm_plugin.errors import ConfigError

__all__ = ["default_prefix", "legacy_prefix", "sim_session_id", "parse_sim_session_id"]

_TAGS = {"motor": "", "handwriting": "-hw", "phonemes": "-ph"}


def default_prefix(subject: str, seed: int, task: str = "motor") -> str:
    """``sim-{subject}-seed{seed}`` plus the task tag (``-hw``, ``-ph``; none for reaching)."""
    return f"sim-{subject}-seed{int(seed)}{_TAGS[task]}"


def legacy_prefix(subject: str, task: str = "motor") -> str:
    """The prefix of ids without the seed (``sim-m0`` -> ``sim-m0-s000``), as in the bundled checkpoint."""
    return f"sim-{subject}{_TAGS[task]}"


def sim_session_id(session_index: int, *, seed: int, subject: str, task: str = "motor", id_prefix: str | None = None) -> str:
    """The id of simulated session ``session_index``: ``{prefix}-s{index:03d}``."""
    prefix = default_prefix(subject, seed, task) if id_prefix is None else id_prefix
    if not isinstance(prefix, str) or not prefix or "/" in prefix or any(c.isspace() for c in prefix):
        raise ConfigError(f"id_prefix={id_prefix!r} must be a non-empty string without '/' or whitespace")
    return f"{prefix}-s{int(session_index):03d}"


def parse_sim_session_id(session_id: str) -> dict | None:
    """``{"subject", "seed" (None for a legacy id), "task", "index", "id_prefix"}`` of a reaching,
    handwriting or phoneme session id made by the simulator, or None."""
    m = re.fullmatch(r"sim-(?P<subject>[^/\s]+?)(?:-seed(?P<seed>\d+))?(?P<tag>-hw|-ph)?-s(?P<index>\d{3,})", session_id)
    if not m:
        return None
    task = {"": "motor", "-hw": "handwriting", "-ph": "phonemes"}[m.group("tag") or ""]
    return {"subject": m.group("subject"), "seed": None if m.group("seed") is None else int(m.group("seed")), "task": task,
            "index": int(m.group("index")), "id_prefix": session_id.rsplit("-s", 1)[0]}
