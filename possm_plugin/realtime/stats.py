"""The counters and latency samples of a streaming decoder (:class:`DecoderStats`): what came in, what
was decoded, and every drop by its reason; see :mod:`possm_plugin.realtime.chunk_grid` for the rules
that fill them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DecoderStats"]


@dataclass
class DecoderStats:
    """Counters and latency samples of a decoder (all streams together)."""

    chunks_decoded: int = 0
    chunks_skipped: int = 0
    chunks_oversized: int = 0
    spikes_in: int = 0
    spikes_decoded: int = 0
    spikes_late: int = 0
    spikes_invalid: int = 0
    spikes_unknown: int = 0
    spikes_duplicate: int = 0
    spikes_future: int = 0
    spikes_truncated: int = 0
    spikes_skipped: int = 0
    watermarks_invalid: int = 0
    resets: int = 0
    prewarms: int = 0
    compute_ms: list[float] = field(default_factory=list)
    publish_ms: list[float] = field(default_factory=list)

    @property
    def spikes_dropped(self) -> int:
        return (
            self.spikes_late + self.spikes_invalid + self.spikes_unknown + self.spikes_duplicate
            + self.spikes_future + self.spikes_truncated + self.spikes_skipped
        )

    def summary(self) -> dict:
        def pct(xs: list[float]) -> dict:
            if not xs:
                return {"n": 0, "p50": None, "p99": None, "max": None}
            a = np.asarray(xs)
            return {"n": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}

        return {
            "chunks_decoded": self.chunks_decoded,
            "chunks_skipped": self.chunks_skipped,
            "chunks_oversized": self.chunks_oversized,
            "spikes_in": self.spikes_in,
            "spikes_decoded": self.spikes_decoded,
            "spikes_dropped": self.spikes_dropped,
            "spikes_late": self.spikes_late,
            "spikes_invalid": self.spikes_invalid,
            "spikes_unknown": self.spikes_unknown,
            "spikes_duplicate": self.spikes_duplicate,
            "spikes_future": self.spikes_future,
            "spikes_truncated": self.spikes_truncated,
            "spikes_skipped": self.spikes_skipped,
            "watermarks_invalid": self.watermarks_invalid,
            "resets": self.resets,
            "prewarms": self.prewarms,
            "compute_ms": pct(self.compute_ms),
            "publish_ms": pct(self.publish_ms),
        }
