"""Importers: recorded data in other formats -> :class:`~possm_plugin.session.Session`.

* :mod:`.binned` - spike counts per bin (counts turned into events inside each bin, seeded), and
  :func:`load_chewie` for the real session in ``shared/data``;
* :mod:`.nwb` - Neurodata Without Borders files (Units table, behaviour time series, trials), through
  pynwb (``pip install possm-plugin[nwb]``); imported lazily so that pynwb stays optional.
"""

from __future__ import annotations

from .binned import CHEWIE_FILE, CHEWIE_TARGET_SCALE, PLACEMENTS, counts_to_events, load_chewie, session_from_counts

__all__ = [
    "counts_to_events",
    "session_from_counts",
    "load_chewie",
    "CHEWIE_FILE",
    "CHEWIE_TARGET_SCALE",
    "PLACEMENTS",
    "load_nwb",
    "nwb_series",
]


def __getattr__(name: str):
    if name in ("load_nwb", "nwb_series"):
        from . import nwb

        return getattr(nwb, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
