"""Baseline decoders that POSSM is compared against, all on the same binned data path and metrics.

Every baseline is a :class:`BinnedDecoder`: ``fit(train, valid=None, *, ...)`` on sessions or
:class:`~possm_plugin.baselines.binning.TrialSubset` objects (learning only from the chunks of those trials),
``predict(session) -> (T, C)`` on the session's chunk grid (:func:`possm_plugin.baselines.binning.session_grid`,
in physical units), and ``r2(data)`` / ``r2_mean(data)`` on the chunks of the given trials.

=================  ====================================================================  ==========
name               model                                                                 needs
=================  ====================================================================  ==========
``wiener``         :class:`WienerFilter` - ridge regression on lagged counts (numpy)     numpy
``kalman``         :class:`KalmanFilter` - Kalman filter fit by least squares (numpy)    numpy
``mlp``            :class:`MLPDecoder` - MLP on lagged counts                            torch
``gru``            :class:`GRUDecoder` - GRU on binned counts, 1 s training windows      torch
``poyo``           :class:`POYODecoder` - POYO-style transformer re-reading 1 s of spikes torch
=================  ====================================================================  ==========
"""

from __future__ import annotations

from possm_plugin.baselines.base import BinnedDecoder
from possm_plugin.baselines.gru_binned import GRUDecoder
from possm_plugin.baselines.kalman import KalmanFilter
from possm_plugin.baselines.mlp import MLPDecoder
from possm_plugin.baselines.poyo import POYO, POYODecoder, POYOStream
from possm_plugin.baselines.wiener import WienerFilter

__all__ = [
    "BinnedDecoder",
    "WienerFilter",
    "KalmanFilter",
    "MLPDecoder",
    "GRUDecoder",
    "POYO",
    "POYODecoder",
    "POYOStream",
    "BASELINES",
    "make_baseline",
]

#: Baseline classes by name.
BASELINES: dict[str, type[BinnedDecoder]] = {
    "wiener": WienerFilter,
    "kalman": KalmanFilter,
    "mlp": MLPDecoder,
    "gru": GRUDecoder,
    "poyo": POYODecoder,
}


def make_baseline(name: str, **kwargs) -> BinnedDecoder:
    """A new, unfitted baseline by name (``kwargs`` go to its constructor)."""
    from possm_plugin.errors import ConfigError

    try:
        cls = BASELINES[name]
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}") from None
    return cls(**kwargs)
