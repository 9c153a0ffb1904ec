"""``possm-brand``: POSSM as a BRAND node (https://github.com/brandbci/brand), without BRAND itself.

Run as BRAND's supervisor runs every node::

    possm-brand -n NICKNAME -i HOST -p PORT [-s SOCKET]

(the command line is :mod:`possm_plugin.cli.brand_node`; ``main`` and ``build_parser`` stay importable
from here). The node

1. connects to Redis (``-s`` a unix socket, else ``-i``/``-p``; ACL user, password and TLS by option)
   and posts ``{code: 0, status: initialized}`` to ``NICKNAME_state``;
2. reads its parameters from the latest ``supergraph_stream`` entry (field ``data``, JSON,
   ``nodes[NICKNAME].parameters``) and checks them -- unknown keys, a checkpoint that does not load,
   ``n_channels`` against the session's unit count, unit ids the model does not know -- before reading
   any data; a problem is posted as ``{code: 1, status: error, message: ...}`` and logged, and the node
   exits with status 1;
3. runs :class:`~possm_plugin.realtime.runner.DecoderRunner` -- ``possm-lsl``'s loop -- on a
   :class:`~possm_plugin.adapters.redis_stream.RedisSource` reading ``input_stream`` from the entry
   after the newest one at start-up (as BRAND nodes read ``$``) and a
   :class:`~possm_plugin.adapters.redis_stream.RedisSink` writing ``output_stream``, both on the node's
   one connection: each iteration is one XREAD (what has arrived, up to 1000 entries), its entries
   turned into spike events (the one bins -> events conversion of
   :mod:`possm_plugin.realtime.binned_events`: a count in a bin is spread evenly over it, each event at
   the centre of its share) and decoded by the one decode call,
   :meth:`StreamingDecoder.decode <possm_plugin.realtime.streaming.StreamingDecoder.decode>`, which
   decodes every chunk they complete; their predictions are written at once, in one write. Live, a read
   holds the one or two entries that arrived since the last, so the entry that completes a chunk (the
   50th of a 50 ms chunk of 1 ms crossings) produces its prediction in the same iteration; a backlog
   (after a stall or a restart) decodes exactly as it would have entry by entry;
4. writes one entry per chunk to ``output_stream``: ``samples`` (float32 predictions, in the order of
   the checkpoint's output names), ``ts`` (uint64 ``time.monotonic_ns()`` at writing), ``i`` (uint64
   output counter), ``i_in`` (the ``i`` field of the input entry that completed the chunk, passed
   through; the node's uint64 input counter when the input has none), ``id_in`` (its Redis id),
   ``ts_in`` (its ``ts``, when it has one), ``t_end`` (float64 chunk end on the node's clock) and the
   input's ``sync`` field, passed through (:func:`~possm_plugin.adapters.redis_entries.prediction_entry`,
   as the generic ``redis`` sink writes them);
5. stops cleanly on SIGINT or SIGTERM, posting ``{code: 0, status: done, stats: JSON}``.

Crash recovery: a node that was killed (SIGKILL, OOM, power) left ``running`` as the last entry of
``NICKNAME_state``. When it starts again (``resume: true``, the default, with ``start: $``), it resumes
after the input entry that completed its last output chunk (the ``id_in`` of the newest entry of its
output stream, which is therefore also the durable record of its progress): the entries of the chunk
it had not finished and those that arrived while it was down are *replayed*, up to
``resume_max_seconds`` of input; a longer backlog is *skipped* (the node starts at the newest entry).
The output counter ``i`` and, with the tick clock, the chunk grid continue where they stopped; the
recurrent state is lost (decoding restarts from a fresh state). What it did is logged and posted:
``{status: running, message: "resumed after a crash: ...", resume: JSON}`` with ``after_id``,
``replayed``, ``skipped``, ``trimmed`` (entries after ``after_id`` were trimmed away while it was down:
their number is unknown) and ``outputs_before``.

Clock: by default (``clock: tick``) entry ``n`` (counted from the first one read) covers
``[n, n + 1)`` ms, so each 50 entries complete exactly one chunk, whatever the jitter of their arrival.
``clock: ts`` uses each entry's own ``ts`` field instead, ``clock: timestamps`` BRAND's 30 kHz sample
counter (``timestamps``).

Redis restarts: the node keeps the id of the last entry it processed and, after a dropped connection
or a restarted server, reconnects with backoff and resumes after that id; if the restarted stream's ids
went backwards (no persistence and explicit ids), it reads the new stream from its start. Predictions
made while the server is unreachable are queued and written when it is back. With the tick clock the
chunk grid simply continues. Malformed entries (missing field, wrong length or dtype, bad counts) are
counted, logged and treated as empty bins.

Online calibration: for a session the checkpoint does not know, set ``calibrate_seconds`` and
``label_stream`` (``label_field``, float32 per entry, e.g. cursor velocity): the node collects that many
seconds of spikes and labels, runs unit identification (:mod:`possm_plugin.realtime.calibration`) in the
background while it keeps reading (its input is not decoded meanwhile), then decodes from the next
entry on: calibration is a phase before the runner starts, as in ``possm-lsl --calibrate``.
"""

from __future__ import annotations

# the node: RedisSource + RedisSink + DecoderRunner (shared with possm-lsl --source redis --sink redis), plus
# BRAND's parts: parameters (brand_params), state posts (here), crash recovery (brand_resume), online
# calibration (brand_calibration, a phase before the runner)
import json
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from possm_plugin.adapters.brand_calibration import CalibrationMixin, _Calibration
from possm_plugin.adapters.brand_params import (
    MIN_CALIBRATION_S,
    SUPERGRAPH_STREAM,
    NodeParameters,
    read_node_parameters,
)
from possm_plugin.adapters.brand_resume import ResumeMixin
from possm_plugin.adapters.redis_entries import EntryParser
from possm_plugin.adapters.redis_io import (
    RedisConnection,
    RedisOptions,
    RedisUnavailable,
    StreamReader,
    StreamWriter,
)
from possm_plugin.adapters.redis_stream import RedisSink, RedisSource
from possm_plugin.errors import ConfigError
from possm_plugin.realtime.io import Prediction
from possm_plugin.realtime.unit_map import (
    default_session,
    new_unit_ids,
    session_units,
    unknown_units,
)

if TYPE_CHECKING:
    from possm_plugin.realtime.runner import DecoderRunner

__all__ = ["MIN_CALIBRATION_S", "SUPERGRAPH_STREAM", "BrandNode", "NodeParameters", "read_node_parameters"]

log = logging.getLogger("possm_plugin.adapters.brand")


class BrandNode(ResumeMixin, CalibrationMixin):
    """One POSSM decoder node on a Redis server: a :class:`RedisSource`, a :class:`RedisSink` and a
    :class:`DecoderRunner`, plus BRAND's parameters, state posts, crash resume and online calibration.

    Args:
        nickname: the node's nickname in the graph.
        options: how to reach Redis.
        stop: an event that stops :meth:`run` (the signal handlers of :func:`main` set it).
    """

    def __init__(self, nickname: str, options: RedisOptions | None = None, *, stop: threading.Event | None = None) -> None:
        self.nickname = nickname
        self.stop = stop or threading.Event()
        self.conn = RedisConnection(options or RedisOptions(), stop=self.stop)
        self.state_writer = StreamWriter(self.conn, f"{nickname}_state", max_pending=1000)
        self.params: NodeParameters | None = None
        self.decoder = None
        self.session: str | None = None
        self.unit_ids: list[str] = []
        self.source: RedisSource | None = None
        self.sink: RedisSink | None = None
        self.runner: DecoderRunner | None = None
        self.calibration: _Calibration | None = None
        self.model = None
        self.calibration_metrics: dict | None = None
        self.previous_state: dict | None = None
        self.resume_info: dict | None = None
        self.latency_ms: list[float] = []
        self._reconnected = False
        self.conn.on_reconnect.append(self._on_reconnect)

    def _on_reconnect(self) -> None:
        self._reconnected = True

    # the source's and the sink's parts that resume, calibration and the tests use
    @property
    def parser(self) -> EntryParser | None:
        return None if self.source is None else self.source.parser

    @property
    def reader(self) -> StreamReader | None:
        return None if self.source is None else self.source.reader

    @property
    def writer(self) -> StreamWriter | None:
        return None if self.sink is None else self.sink.writer

    @property
    def outputs(self) -> int:
        """Output entries written (the next one's ``i``)."""
        return 0 if self.sink is None else self.sink.i

    @outputs.setter
    def outputs(self, i: int) -> None:
        self.sink.i = int(i)

    # -- state and setup -------------------------------------------------------------------------
    def post_state(self, status: str, *, code: int = 0, **extra: Any) -> None:
        entry: dict[str, Any] = {"code": code, "status": status}
        for k, v in extra.items():
            entry[k] = v if isinstance(v, (str, bytes, int, float)) else json.dumps(v)
        self.state_writer.add(entry)
        self.state_writer.flush()

    def connect(self, timeout: float = 10.0) -> None:
        """Wait for the server (``StreamError`` after ``timeout`` s) and post ``initialized``."""
        self.conn.wait_until_up(timeout)
        try:  # how the previous run of this node ended (``running``: it was killed) -- read before posting ours;
            # 'initialized' entries are skipped: a restart that died while loading its model changes nothing
            last = self.conn.call(lambda r: r.xrevrange(f"{self.nickname}_state", count=50))
            ended = [dict(f) for _, f in last if f.get(b"status") != b"initialized"]
            self.previous_state = ended[0] if ended else None
        except RedisUnavailable:
            self.previous_state = None
        self.post_state("initialized")

    def load_parameters(self) -> NodeParameters:
        raw = self.conn.call(lambda r: read_node_parameters(r, self.nickname))
        self.params = NodeParameters.from_dict(raw)
        return self.params

    def setup(self, params: NodeParameters | None = None) -> None:
        """Load the checkpoint and check everything against it (raises ConfigError/CheckpointError),
        then connect the source (``$`` resolved now: entries from this moment on are ours) and the sink."""
        from possm_plugin.model.checkpoint import load_checkpoint
        from possm_plugin.realtime.streaming import StreamingDecoder
        from possm_plugin.realtime.threads import set_cpu_threads

        p = params or self.params or self.load_parameters()
        self.params = p
        set_cpu_threads(p.threads)  # torch and BLAS: one stream decodes fastest on one thread
        model, doc = load_checkpoint(p.checkpoint)
        self.model = model
        sessions = model.session_vocab.ids
        calibrate = p.calibrate_seconds is not None
        need_calibration = False
        if p.session is not None and p.session not in model.session_vocab:
            need_calibration, why = True, f"session {p.session!r} is not in the checkpoint (known: {', '.join(sessions) or 'none'})"
            session = p.session
        else:
            session = default_session(model, p.session or doc.get("default_session"),
                                      hint="set calibrate_seconds and label_stream to calibrate one online")
            units = list(p.unit_ids) if p.unit_ids is not None else session_units(model, session, hint="set unit_ids")
            if p.n_channels is not None and p.n_channels != len(units):
                what = "unit_ids names" if p.unit_ids is not None else f"session {session!r} of the checkpoint has"
                raise ConfigError(
                    f"n_channels={p.n_channels} but {what} {len(units)} units; the input's channels map in order to "
                    f"the units, so the two must agree (fix n_channels, set unit_ids, or pick another session)"
                )
            unknown = unknown_units(model, units)
            if unknown:
                need_calibration = True
                why = f"{len(unknown)} unit id(s) are unknown to the checkpoint ({', '.join(map(repr, unknown[:5]))})"
                session = f"brand-{self.nickname}"
            else:
                self.unit_ids, self.session = units, session
                self.decoder = StreamingDecoder(model, session=session, unit_ids=units, device=p.device,
                                                prewarm=p.prewarm_ms / 1e3 if p.prewarm_ms else None)
        if need_calibration:
            if not calibrate:
                raise ConfigError(f"{why}; set calibrate_seconds and label_stream to calibrate online, or pick a known session")
            n = p.n_channels if p.n_channels is not None else (len(p.unit_ids) if p.unit_ids else None)
            if n is None:
                raise ConfigError("online calibration needs n_channels (or unit_ids) to know the input's channels")
            if p.unit_ids is not None and len(p.unit_ids) != n:
                raise ConfigError(f"n_channels={n} but unit_ids names {len(p.unit_ids)} units")
            if model.config.readout != "regression":
                raise ConfigError(f"online calibration needs a regression checkpoint (this one is {model.config.readout!r})")
            from possm_plugin.realtime.calibration import build_session, calibrate  # noqa: F401  (fail now if unavailable)

            self.session = session
            self.unit_ids = list(p.unit_ids) if p.unit_ids is not None else new_unit_ids(session, [f"ch{i:03d}" for i in range(n)])
            self.calibration = _Calibration(
                seconds=float(p.calibrate_seconds), label_reader=StreamReader(self.conn, p.label_stream, start="$"),
                label_field=p.label_field.encode(), label_dtype=np.dtype(p.label_dtype),
            )
        self._time_key_b = p.time_key.encode()
        self.source = RedisSource(
            p.input_stream, conn=self.conn, kind=p.input_kind, unit_ids=self.unit_ids, field=p.input_field, dtype=p.input_dtype,
            bin_size_ms=p.bin_size_ms, clock=p.clock, time_field=p.time_key, timestamps_rate=p.timestamps_rate, start=p.start,
            passthrough=[p.sync_key],
        )
        self.sink = RedisSink(p.output_stream or self.nickname, conn=self.conn, field=p.output_field, dtype=p.output_dtype,
                              maxlen=p.output_maxlen, time_key=p.time_key)
        self.source.connect()
        self.sink.connect(output_names=list(model.config.output_names), chunk_step=float(model.config.chunk_step))
        log.info(
            "POSSM node %r: %s %s (%d channels, %s) from %r -> %r; session %r; chunks %g ms; %s",
            self.nickname, p.input_kind, p.input_dtype or "default dtype", len(self.unit_ids), p.clock, p.input_stream,
            self.sink.stream, self.session, model.config.chunk_width * 1e3,
            "decoding" if self.decoder is not None else f"calibrating for {p.calibrate_seconds:g} s first",
        )

    # -- running: calibration (if asked), then the runner ------------------------------------------
    def run(self, *, block_ms: int = 100) -> dict:
        """Decode until :attr:`stop` is set; returns :meth:`stats`."""
        from possm_plugin.realtime.runner import DecoderRunner

        if self.source is None:
            self.setup()
        try:
            self.resume_info = self._resume()
        except RedisUnavailable:
            self.resume_info = None
        extra = {}
        if self.resume_info is not None:
            extra = {"message": self.resume_info["message"], "resume": {k: v for k, v in self.resume_info.items() if k != "message"}}
        self.post_state(self._status(), **extra)
        if self.calibration is not None:
            self._calibrate(poll=block_ms / 1e3)  # until the calibrated decoder is built (or stop)
        if self.decoder is None:  # stopped while calibrating
            self.sink.disconnect()
            return self.stats()
        self.runner = DecoderRunner(self.source, self.decoder, [self.sink], stop_event=self.stop, poll_timeout=block_ms / 1e3,
                                    on_predictions=self._record_latency, on_step=self._after_step)
        self.runner.run()
        return self.stats()

    def _status(self) -> str:
        return "running" if self.decoder is not None else "calibrating"

    def _after_step(self) -> None:
        """After every iteration: write what was queued while Redis was unreachable, and post the state
        again after a reconnection (a restarted server lost the state stream)."""
        if self.sink.writer.pending:
            self.sink.writer.flush()
        if self._reconnected and self.conn.is_up:
            self._reconnected = False
            self.post_state(self._status(), message="reconnected to Redis")

    def _record_latency(self, preds: list[Prediction]) -> None:  # noqa: ARG002
        """Read (the XREAD that returned the completing entry) -> predictions written, in ms."""
        self.latency_ms.append((time.perf_counter() - self.source.read_at) * 1e3)
        if len(self.latency_ms) > 100_000:
            del self.latency_ms[:50_000]

    # -- reporting -------------------------------------------------------------------------------
    def stats(self) -> dict:
        s: dict[str, Any] = {"outputs": self.outputs}
        if self.source is not None:
            s["input"] = self.source.parser.stats()
            s["stream_resets"] = self.reader.stream_resets if self.reader is not None else 0
        s["reconnects"] = self.conn.reconnects
        if self.writer is not None:
            s["outputs_dropped"] = self.writer.dropped
            s["outputs_pending"] = len(self.writer.pending)
        if self.decoder is not None:
            d = self.decoder.stats.summary()
            s["decoder"] = {k: d[k] for k in ("chunks_decoded", "chunks_skipped", "spikes_decoded", "spikes_dropped", "resets", "compute_ms")}
        if self.resume_info is not None:
            s["resume"] = {k: v for k, v in self.resume_info.items() if k != "message"}
        if self.calibration_metrics is not None:
            s["calibration"] = {k: v for k, v in self.calibration_metrics.items() if isinstance(v, (int, float, str))}
        if self.latency_ms:
            a = np.asarray(self.latency_ms)
            s["read_to_write_ms"] = {"n": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}
        return s

    def close(self) -> None:
        self.conn.close()


def __getattr__(name: str):
    """``main`` and ``build_parser`` (``possm-brand``'s CLI, now :mod:`possm_plugin.cli.brand_node`) stay
    importable from here, imported lazily: that module imports this one."""
    if name in ("main", "build_parser"):
        from possm_plugin.cli import brand_node

        return getattr(brand_node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    from possm_plugin.cli.brand_node import main

    sys.exit(main())
