"""Importers: recorded data in other formats -> :class:`~possm_plugin.data.session.Session`.

* :mod:`.binned` - spike counts per bin (counts turned into events inside each bin, seeded):
  :func:`load_binned` for any NPZ file of binned counts, :func:`load_chewie` and
  :func:`bundled_sessions` for the two real recordings bundled with the package;
* :mod:`.nwb` - Neurodata Without Borders files (Units table, behaviour time series, trials), through
  pynwb (``pip install possm-plugin[nwb]``); imported lazily so that pynwb stays optional.
"""

from __future__ import annotations

from possm_plugin.data.importers.binned import (
    CHEWIE_FILE,
    CHEWIE_TARGET_SCALE,
    PLACEMENTS,
    bundled_files,
    bundled_sessions,
    chewie_session_id,
    counts_to_events,
    load_binned,
    load_chewie,
    nice_scale,
    session_from_counts,
)

__all__ = [
    "counts_to_events",
    "session_from_counts",
    "load_binned",
    "load_chewie",
    "chewie_session_id",
    "bundled_files",
    "bundled_sessions",
    "nice_scale",
    "CHEWIE_FILE",
    "CHEWIE_TARGET_SCALE",
    "PLACEMENTS",
    "load_nwb",
    "nwb_series",
]


def __getattr__(name: str):
    if name in ("load_nwb", "nwb_series"):
        from possm_plugin.data.importers import nwb

        return getattr(nwb, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
