"""Which session and which model units a stream's channels are: the one mapping every driver uses.

A stream names its channels (LSL channel labels, a BRAND graph's ``unit_ids``, a host's column names)
or only counts them. The decoder needs, for each channel in order, a unit id the model knows, and the
session whose embedding queries the output. The drivers (``possm-lsl``, ``possm-brand``, the pluggy
decoder node, online calibration, :class:`~possm_plugin.realtime.streaming.StreamingDecoder` itself) answer
with these functions; each adds its own hint (a CLI flag or a graph parameter) to the errors.
"""

from __future__ import annotations

from collections.abc import Sequence

from possm_plugin.errors import ConfigError

__all__ = ["default_session", "new_unit_ids", "pick_session", "session_units", "unknown_units"]


def default_session(model, preferred: str | None = None, *, hint: str = "") -> str:
    """``preferred`` (e.g. a checkpoint's ``default_session``), else the model's first session.

    Raises:
        ConfigError: the model knows no session (``hint`` says what to do).
    """
    sessions = model.session_vocab.ids
    session = preferred or (sessions[0] if sessions else None)
    if session is None:
        raise ConfigError(f"the checkpoint knows no session; {hint or 'calibrate one first (possm finetune --mode ui)'}")
    return session


def session_units(model, session: str, *, hint: str = "") -> list[str]:
    """The unit ids of ``session``, in the order its channels were recorded.

    Raises:
        ConfigError: the checkpoint has no unit list for it (``hint``: how to give one).
    """
    units = model.session_units.get(session)
    if not units:
        raise ConfigError(f"session {session!r} has no unit list in the checkpoint{'; ' + hint if hint else ''}")
    return list(units)


def unknown_units(model, unit_ids: Sequence[str]) -> list[str]:
    """The ids among ``unit_ids`` that ``model`` does not know (empty if all are known)."""
    return [u for u in unit_ids if u not in model.unit_vocab]


def pick_session(model, stream_units: Sequence[str], preferred: str | None = None) -> str | None:
    """The known session whose units contain every stream unit (``preferred`` first), or None."""
    want = set(stream_units)
    order = ([preferred] if preferred else []) + [s for s in model.session_vocab.ids if s != preferred]
    for sid in order:
        if want <= set(model.session_units.get(sid, ())):
            return sid
    return None


def new_unit_ids(session: str, labels: Sequence[str]) -> list[str]:
    """Unit ids for channels the model has never seen, to calibrate: ``SESSION/LABEL`` (unique to the
    new session, so they never collide with a known recording's units)."""
    return [f"{session}/{u}" for u in labels]
