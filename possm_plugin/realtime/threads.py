"""Process-wide CPU settings for a real-time decoder.

A decoder step at batch 1 is a string of small matrix-vector products: one thread does them fastest,
and extra threads only add wake-up jitter to the p99. Both thread pools that can run them are set
here: torch's and the BLAS under NumPy (OpenBLAS, MKL or BLIS, through ``threadpoolctl``, which
finds the library actually loaded). The CLIs (``possm-lsl``, ``possm-brand``) and the benchmarks call
:func:`set_cpu_threads`; a host that embeds the decoder may call it too (it changes the whole process).
"""

from __future__ import annotations

import logging

from possm_plugin.errors import ConfigError

__all__ = ["set_cpu_threads"]

log = logging.getLogger("possm_plugin.realtime.threads")


def set_cpu_threads(n: int) -> dict:
    """Use ``n`` CPU threads in torch and in the BLAS libraries; returns what was set."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"CPU threads must be an integer >= 1, got {n!r}")
    try:  # load SciPy's BLAS (the compiled step's matrix products) so that the limit reaches it too
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:  # pragma: no cover - SciPy is a dependency
        pass
    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")  # kept for the life of the process
    blas = sorted({f"{i.get('internal_api')} ({i.get('num_threads')} threads)" for i in threadpool_info() if i.get("user_api") == "blas"})
    log.debug("CPU threads: torch %d, BLAS %s", torch.get_num_threads(), ", ".join(blas) or "none found")
    return {"torch": torch.get_num_threads(), "blas": blas}
