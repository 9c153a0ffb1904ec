"""``possm-brand`` crash recovery: resume after the input entry that completed the last output chunk.

See the module docstring of :mod:`possm_plugin.adapters.brand` ("Crash recovery") for the rules. A
mixin of :class:`~possm_plugin.adapters.brand.BrandNode`.
"""

from __future__ import annotations

import logging

import numpy as np
import redis

__all__ = ["ResumeMixin"]

log = logging.getLogger("possm_plugin.adapters.brand")


def _id(eid) -> tuple[int, int]:
    s = eid.decode() if isinstance(eid, bytes) else str(eid)
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)



class ResumeMixin:
    """``_resume`` of :class:`~possm_plugin.adapters.brand.BrandNode` (uses its params, conn, reader,
    parser, decoder, outputs and previous_state)."""

    def _resume(self) -> dict | None:
        """After a crash (our last state was ``running``): resume after the input entry that completed
        the last chunk written (see the module docstring). Returns what was done, or None."""
        p = self.params
        prev = self.previous_state or {}
        if not p.resume or p.start != "$" or prev.get(b"status") != b"running" or self.decoder is None:
            return None
        out_stream = p.output_stream or self.nickname
        last_out = self.conn.call(lambda r: r.xrevrange(out_stream, count=1))
        f = last_out[0][1] if last_out else {}
        if b"id_in" not in f:
            msg = "restarted after a crash, but the previous run left no output to resume after: starting at new entries"
            log.warning("%s", msg)
            return {"resumed": False, "message": msg}
        after = f[b"id_in"].decode()
        i_last = int(np.frombuffer(f[b"i"], np.uint64)[0]) if len(f.get(b"i", b"")) == 8 else None
        t_end = float(np.frombuffer(f[b"t_end"], np.float64)[0]) if len(f.get(b"t_end", b"")) == 8 else None
        stream = p.input_stream

        def head(r):
            try:
                info = r.xinfo_stream(stream)
            except redis.exceptions.ResponseError:  # no such stream: nothing to resume from
                return None
            lid = info.get("last-generated-id", info.get(b"last-generated-id"))
            return lid.decode() if isinstance(lid, bytes) else str(lid)

        top = self.conn.call(head)
        if top is None or _id(top) < _id(after):
            msg = (f"restarted after a crash, but input stream {stream!r} was reset (its newest id {top} is older than "
                   f"{after}, the last entry decoded): starting at new entries")
            log.warning("%s", msg)
            return {"resumed": False, "message": msg, "after_id": after}

        def count(r) -> tuple[int, bool]:
            n, cursor = 0, "(" + after
            while _id(top) > _id(after):
                batch = r.xrange(stream, min=cursor, max=top, count=10000)
                n += len(batch)
                if len(batch) < 10000:
                    break
                last = batch[-1][0]
                cursor = "(" + (last.decode() if isinstance(last, bytes) else str(last))
            first = r.xrange(stream, count=1)
            fid = first[0][0] if first else None
            trimmed = fid is not None and _id(fid) > _id(after) and not r.xrange(stream, min=after, max=after)
            return n, trimmed

        n, trimmed = self.conn.call(count)
        max_entries = int(p.resume_max_seconds / self.parser.bin_s)
        if n <= max_entries:
            self.reader.last_id, replayed, skipped = after, n, 0
        else:
            self.reader.last_id, replayed, skipped = top, 0, n
        if p.clock == "tick" and t_end is not None:  # the chunk grid continues where it stopped
            self.parser.n_entries = int(round(t_end / self.parser.bin_s)) + skipped
        if i_last is not None:
            self.outputs = i_last + 1
        parts = [f"resumed after a crash: after input entry {after}", f"{replayed} input entries replayed",
                 f"{skipped} skipped (more than resume_max_seconds={p.resume_max_seconds:g} s of backlog)" if skipped else "0 skipped",
                 "the recurrent state was lost (decoding restarts from a fresh state)"]
        if trimmed:
            parts.insert(3, "entries after it were trimmed from the input stream while the node was down (lost, number unknown)")
        msg = "; ".join(parts)
        log.warning("%s", msg)
        return {"resumed": True, "message": msg, "after_id": after, "replayed": replayed, "skipped": skipped,
                "trimmed": bool(trimmed), "outputs_before": self.outputs}
