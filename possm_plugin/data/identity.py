"""Session identity: a session id the model knows must name the recording the model learnt.

A model learns one embedding per session id and one per unit id. Two different recordings under the
same session id (say ``possm simulate --seed 99`` and ``--seed 0`` of old, or one file imported twice
under one id after editing it) would share those embeddings silently: training would mix them,
fine-tuning would find nothing new to learn, and evaluation would decode one recording with the
other's embeddings. So every model records :attr:`~possm_plugin.data.session.Session.fingerprint` of each
session it was built for or adapted to (``POSSM.session_fingerprints``, saved in checkpoints next to
``session_units``), and :func:`check_sessions` refuses a session whose id the model knows but whose
content differs. Training (and resuming), fine-tuning, evaluation and calibration all call it.

Checkpoints written before fingerprints existed (the bundled default among them) know only each
session's unit list: a session whose unit ids differ from it is refused the same way, and one whose
unit ids agree is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

from possm_plugin.data.session import Session
from possm_plugin.errors import DataError
from possm_plugin.model.possm import POSSM

__all__ = ["check_sessions"]


def check_sessions(model: POSSM, sessions: Sequence[Session]) -> None:
    """Raise :class:`DataError` (one line naming the session id and both fingerprints) if a session
    id is known to ``model`` with other content; sessions the model does not know pass."""
    known = model.session_fingerprints
    for s in sessions:
        sid = s.session_id
        if sid not in model.session_vocab:
            continue
        want = known.get(sid)
        if want is not None:
            if want != s.identity:
                raise DataError(
                    f"session {sid!r} is not the recording the model knows under that id: its fingerprint is "
                    f"{s.identity}, the model's is {want}; give the new recording another session id "
                    "(e.g. `possm import ... --session-id`, `possm simulate --seed`)"
                )
            continue
        units = model.session_units.get(sid)
        if units is not None and list(units) != list(s.unit_ids):
            raise DataError(
                f"session {sid!r} is not the recording the model knows under that id: it has {s.n_units} units "
                f"(fingerprint {s.fingerprint}), the model's has {len(units)} other ones (no fingerprint recorded); "
                "give the new recording another session id"
            )
