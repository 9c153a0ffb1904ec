"""``possm-brand``: POSSM as a BRAND node (https://github.com/brandbci/brand), without BRAND itself.

Run as BRAND's supervisor runs every node::

    possm-brand -n NICKNAME -i HOST -p PORT [-s SOCKET]

The node

1. connects to Redis (``-s`` a unix socket, else ``-i``/``-p``; ACL user, password and TLS by option)
   and posts ``{code: 0, status: initialized}`` to ``NICKNAME_state``;
2. reads its parameters from the latest ``supergraph_stream`` entry (field ``data``, JSON,
   ``nodes[NICKNAME].parameters``) and checks them -- unknown keys, a checkpoint that does not load,
   ``n_channels`` against the session's unit count, unit ids the model does not know -- before reading
   any data; a problem is posted as ``{code: 1, status: error, message: ...}`` and logged, and the node
   exits with status 1;
3. reads ``input_stream`` from the entry after the newest one at start-up (as BRAND nodes read ``$``),
   turns every entry into spike events (:mod:`possm_plugin.adapters.redis_stream`: a count in a bin is
   spread evenly over it, each event at the centre of its share), pushes them into a
   :class:`~possm_plugin.streaming.StreamingDecoder` and advances the watermark entry by entry, so the
   entry that completes a chunk (the 50th of a 50 ms chunk of 1 ms crossings) produces its prediction
   at once;
4. writes one entry per chunk to ``output_stream``: ``samples`` (float32 predictions, in the order of
   the checkpoint's output names), ``ts`` (uint64 ``time.monotonic_ns()`` at writing), ``i`` (uint64
   output counter), ``i_in`` (the ``i`` field of the input entry that completed the chunk, passed
   through; the node's uint64 input counter when the input has none), ``id_in`` (its Redis id),
   ``ts_in`` (its ``ts``, when it has one), ``t_end`` (float64 chunk end on the node's clock) and the
   input's ``sync`` field, passed through;
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
seconds of spikes and labels, runs unit identification (:mod:`possm_plugin.calibration`) in the
background while it keeps reading (its input is not decoded meanwhile), then decodes from the next
entry on.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from possm_plugin.adapters.redis_io import RedisConnection, RedisOptions, RedisUnavailable, StreamReader, StreamWriter
from possm_plugin.adapters.redis_stream import CLOCKS, INPUT_DTYPES, KINDS, EntryParser, ParsedEntry, batch_of, prediction_entry
from possm_plugin.errors import ConfigError, PossmError, StreamError

__all__ = ["NodeParameters", "BrandNode", "read_node_parameters", "build_parser", "main"]

log = logging.getLogger("possm_plugin.adapters.brand")

SUPERGRAPH_STREAM = "supergraph_stream"
#: shortest online calibration: possm_plugin.calibration cuts 2 s pseudo-trials and needs 5 of them
MIN_CALIBRATION_S = 11.0


# -- parameters -----------------------------------------------------------------------------------
@dataclass
class NodeParameters:
    """The node's parameters, as named in the graph YAML (see docs/brand.md for each)."""

    input_stream: str = "thresh_cross"
    input_field: str | None = None
    input_dtype: str | None = None
    input_kind: str = "crossings"
    bin_size_ms: float | None = None
    n_channels: int | None = None
    checkpoint: str | None = None
    session: str | None = None
    unit_ids: list[str] | None = None
    output_stream: str | None = None
    output_field: str = "samples"
    output_dtype: str = "float32"
    output_maxlen: int | None = None
    device: str = "cpu"
    threads: int = 1
    prewarm_ms: float = 1.5
    calibrate_seconds: float | None = None
    label_stream: str | None = None
    label_field: str = "samples"
    label_dtype: str = "float32"
    calibrate_epochs: int = 30
    calibrated_checkpoint: str | None = None
    clock: str = "tick"
    timestamps_rate: float = 30000.0
    sync_key: str = "sync"
    time_key: str = "ts"
    start: str = "$"
    resume: bool = True
    resume_max_seconds: float = 30.0
    log: str = "INFO"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "NodeParameters":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} in the graph; possm-brand knows {sorted(known)}")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d or d[f.name] is None:
                continue
            v = d[f.name]
            try:
                if f.name in ("n_channels", "output_maxlen", "calibrate_epochs", "threads"):
                    if isinstance(v, bool) or int(v) != float(v) or int(v) <= 0:
                        raise ValueError
                    v = int(v)
                elif f.name == "prewarm_ms":
                    v = float(v)
                    if not 0 <= v < 50:
                        raise ValueError
                elif f.name in ("bin_size_ms", "calibrate_seconds", "timestamps_rate", "resume_max_seconds"):
                    v = float(v)
                    if not v > 0:
                        raise ValueError
                elif f.name == "resume":
                    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                        v = v.strip().lower() in ("true", "yes", "on", "1")
                    elif isinstance(v, bool) or v in (0, 1):
                        v = bool(v)
                    else:
                        raise ValueError
                elif f.name == "unit_ids":
                    v = [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else [str(u) for u in v]
                else:
                    v = str(v)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"parameter {f.name}={d[f.name]!r} has the wrong type or value (expected {f.type})") from None
            kw[f.name] = v
        p = cls(**kw)
        if p.input_kind not in KINDS:
            raise ConfigError(f"parameter input_kind={p.input_kind!r} must be one of {KINDS}")
        if p.input_dtype is not None and p.input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"parameter input_dtype={p.input_dtype!r} must be one of {INPUT_DTYPES}")
        if p.input_kind == "binned" and p.bin_size_ms is None:
            raise ConfigError("parameter input_kind='binned' needs bin_size_ms (the width of one input entry's bin, ms)")
        if p.clock not in CLOCKS:
            raise ConfigError(f"parameter clock={p.clock!r} must be one of {CLOCKS}")
        if p.output_dtype not in ("float32", "float64"):
            raise ConfigError(f"parameter output_dtype={p.output_dtype!r} must be float32 (BRAND's) or float64")
        if p.calibrate_seconds is not None and not p.label_stream:
            raise ConfigError("parameter calibrate_seconds needs label_stream (the Redis stream with the behaviour to calibrate on)")
        if p.calibrate_seconds is not None and p.calibrate_seconds < MIN_CALIBRATION_S:
            raise ConfigError(
                f"parameter calibrate_seconds={p.calibrate_seconds:g} is too short: unit identification needs at least "
                f"{MIN_CALIBRATION_S:g} s of spikes and behaviour (60-120 s calibrates well)"
            )
        if p.label_dtype not in ("int8", "int16", "int32", "float32", "float64"):
            raise ConfigError(f"parameter label_dtype={p.label_dtype!r} must be int8, int16, int32, float32 or float64")
        return p


def read_node_parameters(client, nickname: str) -> dict[str, Any]:
    """``nodes[nickname].parameters`` of the latest ``supergraph_stream`` entry (ConfigError if absent)."""
    entries = client.xrevrange(SUPERGRAPH_STREAM, "+", "-", count=1)
    if not entries:
        raise ConfigError(
            f"no supergraph in {SUPERGRAPH_STREAM!r}: start the graph through BRAND's supervisor "
            f"(XADD supervisor_ipstream * commands startGraph file GRAPH.yaml), or XADD the supergraph JSON yourself"
        )
    eid, flds = entries[0]
    raw = flds.get(b"data")
    if raw is None:
        raise ConfigError(f"the latest {SUPERGRAPH_STREAM!r} entry ({eid!r}) has no 'data' field")
    try:
        graph = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the latest {SUPERGRAPH_STREAM!r} entry's 'data' is not JSON ({exc})") from None
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes, dict):
        raise ConfigError(f"the supergraph has no 'nodes' mapping (keys: {sorted(graph) if isinstance(graph, dict) else type(graph).__name__})")
    node = nodes.get(nickname)
    if node is None:  # BRAND's own nodes match on the 'nickname' field
        node = next((n for n in nodes.values() if isinstance(n, dict) and n.get("nickname") == nickname), None)
    if node is None:
        raise ConfigError(f"node {nickname!r} is not in the supergraph (its nodes: {sorted(nodes)})")
    if not isinstance(node, dict):
        raise ConfigError(f"nodes[{nickname!r}] in the supergraph is a {type(node).__name__}, not a mapping")
    params = node.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"nodes[{nickname!r}].parameters is not a mapping")
    return params


# -- the node ---------------------------------------------------------------------------------------
@dataclass
class _Calibration:
    """Spikes and labels collected for online calibration, then the background job."""

    seconds: float
    label_reader: StreamReader
    label_field: bytes
    label_dtype: np.dtype
    channels: list = field(default_factory=list)
    times: list = field(default_factory=list)
    label_times: list = field(default_factory=list)
    label_values: list = field(default_factory=list)
    offsets: list = field(default_factory=list)  # node clock - entry ts, to put labels on the node clock
    t_first: float | None = None
    t_last: float | None = None
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    label_errors: int = 0


class BrandNode:
    """One POSSM decoder node on a Redis server.

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
        self.parser: EntryParser | None = None
        self.reader: StreamReader | None = None
        self.writer: StreamWriter | None = None
        self.calibration: _Calibration | None = None
        self.model = None
        self.calibration_metrics: dict | None = None
        self.outputs = 0
        self.previous_state: dict | None = None
        self.resume_info: dict | None = None
        self.latency_ms: list[float] = []
        self._reconnected = False
        self.conn.on_reconnect.append(self._on_reconnect)

    def _on_reconnect(self) -> None:
        self._reconnected = True

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
        """Load the checkpoint and check everything against it (raises ConfigError/CheckpointError)."""
        from possm_plugin.checkpoint import load_checkpoint
        from possm_plugin.runtime import set_cpu_threads
        from possm_plugin.streaming import StreamingDecoder

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
            session = p.session or doc.get("default_session") or (sessions[0] if sessions else None)
            if session is None:
                raise ConfigError("the checkpoint knows no session; set calibrate_seconds and label_stream to calibrate one online")
            units = list(p.unit_ids) if p.unit_ids is not None else list(model.session_units.get(session, []))
            if not units:
                raise ConfigError(f"session {session!r} has no unit list in the checkpoint; set unit_ids")
            if p.n_channels is not None and p.n_channels != len(units):
                what = "unit_ids names" if p.unit_ids is not None else f"session {session!r} of the checkpoint has"
                raise ConfigError(
                    f"n_channels={p.n_channels} but {what} {len(units)} units; the input's channels map in order to "
                    f"the units, so the two must agree (fix n_channels, set unit_ids, or pick another session)"
                )
            unknown = StreamingDecoder.check_units(model, units)
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
            from possm_plugin.calibration import build_session, calibrate  # noqa: F401  (fail now if unavailable)

            self.session = session
            self.unit_ids = list(p.unit_ids) if p.unit_ids is not None else [f"{session}/ch{i:03d}" for i in range(n)]
            self.calibration = _Calibration(
                seconds=float(p.calibrate_seconds), label_reader=StreamReader(self.conn, p.label_stream, start="$"),
                label_field=p.label_field.encode(), label_dtype=np.dtype(p.label_dtype),
            )
        n = len(self.unit_ids)
        self.parser = EntryParser(
            kind=p.input_kind, n_channels=n, field=p.input_field, dtype=p.input_dtype, bin_size_ms=p.bin_size_ms,
            clock=p.clock, time_field=p.time_key, timestamps_rate=p.timestamps_rate,
        )
        self.reader = StreamReader(self.conn, p.input_stream, start=p.start)
        self.writer = StreamWriter(self.conn, p.output_stream or self.nickname, maxlen=p.output_maxlen)
        self._out_field = p.output_field
        self._out_dtype = np.dtype(p.output_dtype)
        self._time_key = p.time_key
        self._passthrough = (p.sync_key.encode(),)
        self._time_key_b = p.time_key.encode()
        log.info(
            "POSSM node %r: %s %s (%d channels, %s) from %r -> %r; session %r; chunks %g ms; %s",
            self.nickname, p.input_kind, p.input_dtype or "default dtype", n, p.clock, p.input_stream,
            p.output_stream or self.nickname, self.session, model.config.chunk_width * 1e3,
            "decoding" if self.decoder is not None else f"calibrating for {p.calibrate_seconds:g} s first",
        )

    # -- the loop --------------------------------------------------------------------------------
    def run(self, *, block_ms: int = 100) -> dict:
        """Decode until :attr:`stop` is set; returns :meth:`stats`."""
        if self.parser is None:
            self.setup()
        assert self.reader is not None and self.writer is not None and self.parser is not None
        try:
            self.resume_info = self._resume()
        except RedisUnavailable:
            self.resume_info = None
        try:
            self.reader.position()  # resolve '$' now (unless resuming): entries from this moment on are ours
        except RedisUnavailable:
            pass
        if self.calibration is not None:
            try:
                self.calibration.label_reader.position()
            except RedisUnavailable:
                pass
        extra = {}
        if self.resume_info is not None:
            extra = {"message": self.resume_info["message"], "resume": {k: v for k, v in self.resume_info.items() if k != "message"}}
        self.post_state("running" if self.decoder is not None else "calibrating", **extra)
        while not self.stop.is_set():
            entries = self.reader.read(block_ms)
            t_read = time.perf_counter()
            for eid, flds in entries:
                pe = self.parser.parse(eid, flds)
                if self.decoder is None:
                    self._collect(pe)
                    continue
                self._decode(pe, t_read)
            if self.calibration is not None:
                self._poll_calibration()
            if self.writer.pending:
                self.writer.flush()
            if self._reconnected and self.conn.is_up:  # a restarted server lost the state stream: post it again
                self._reconnected = False
                self.post_state("running" if self.decoder is not None else "calibrating", message="reconnected to Redis")
        self.writer.flush()
        return self.stats()

    def _decode(self, pe: ParsedEntry, t_read: float) -> None:
        preds = self.decoder.decode(batch_of([pe], passthrough=self._passthrough, time_field=self._time_key_b))
        if not preds:
            return
        for pred in preds:
            self.writer.add(prediction_entry(pred, field=self._out_field, dtype=self._out_dtype, i=self.outputs, time_key=self._time_key))
            self.outputs += 1
        self.writer.flush()
        ms = (time.perf_counter() - t_read) * 1e3
        self.latency_ms.append(ms)
        if len(self.latency_ms) > 100_000:
            del self.latency_ms[:50_000]

    # -- crash recovery --------------------------------------------------------------------------
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

    # -- online calibration ----------------------------------------------------------------------
    def _collect(self, pe: ParsedEntry) -> None:
        cal = self.calibration
        if cal is None or cal.thread is not None:
            return  # unit identification is running: input is not decoded meanwhile
        if pe.t_start is None:
            return
        if cal.t_first is None:
            cal.t_first = pe.t_start
        cal.t_last = pe.watermark
        if len(pe.times):
            cal.channels.append(pe.channels)
            cal.times.append(pe.times)
        ts = pe.fields.get(self._time_key_b)
        if ts is not None and len(ts) == 8 and pe.watermark is not None:
            cal.offsets.append(pe.watermark - int(np.frombuffer(ts, np.uint64)[0]) * 1e-9)

    def _poll_calibration(self) -> None:
        cal = self.calibration
        if cal.thread is None:
            width = self.model.config.output_dim
            for eid, flds in cal.label_reader.read(None):
                raw, ts = flds.get(cal.label_field), flds.get(self._time_key_b)
                if raw is None or ts is None or len(ts) != 8 or len(raw) != width * cal.label_dtype.itemsize:
                    cal.label_errors += 1
                    if cal.label_errors in (1, 100, 10000):
                        log.warning("label entry %s skipped (%d so far): needs %r with %d %s values and a uint64 %r",
                                    eid, cal.label_errors, cal.label_field.decode(), width, cal.label_dtype.name, self._time_key)
                    continue
                cal.label_times.append(int(np.frombuffer(ts, np.uint64)[0]) * 1e-9)
                cal.label_values.append(np.frombuffer(raw, cal.label_dtype).astype(np.float32))
            if cal.t_first is not None and cal.t_last is not None and cal.t_last - cal.t_first >= cal.seconds:
                self._start_calibration()
            return
        if cal.thread.is_alive():
            return
        if cal.error is not None:
            self.post_state("error", code=1, message=f"calibration failed: {cal.error}")
            raise cal.error
        self._finish_calibration()

    def _start_calibration(self) -> None:
        cal = self.calibration
        if not cal.label_values:
            log.warning("no labels from %r yet after %.1f s of spikes; still waiting", self.params.label_stream, cal.t_last - cal.t_first)
            cal.t_first = cal.t_last  # collect a fresh window
            cal.channels.clear()
            cal.times.clear()
            cal.offsets.clear()
            return
        offset = float(np.median(cal.offsets)) if cal.offsets else 0.0
        channels = np.concatenate(cal.channels) if cal.channels else np.zeros(0, np.int64)
        times = np.concatenate(cal.times) if cal.times else np.zeros(0, np.float64)
        lt = np.asarray(cal.label_times) + offset
        lv = np.stack(cal.label_values)
        t0, t1 = cal.t_first, cal.t_last
        log.info("calibrating session %r on %.1f s: %d spikes, %d labels; unit identification runs in the background",
                 self.session, t1 - t0, len(times), len(lt))
        self.post_state("calibrating", message=f"unit identification on {t1 - t0:.1f} s")

        cfg = self.model.config

        def job() -> None:
            from possm_plugin.calibration import build_session, calibrate

            try:
                session = build_session(
                    self.session, self.unit_ids, channels, times, lt, lv, target_names=cfg.output_names, target_scale=cfg.target_scale,
                )
                cal.result = calibrate(self.model, session, epochs=self.params.calibrate_epochs, stop_event=self.stop)
            except BaseException as exc:  # reported to the main loop
                cal.error = exc

        cal.thread = threading.Thread(target=job, name="possm-brand-calibration", daemon=True)
        cal.thread.start()

    def _finish_calibration(self) -> None:
        from possm_plugin.streaming import StreamingDecoder

        metrics = self.calibration.result or {}  # unit identification extended self.model in place
        if self.params.calibrated_checkpoint:
            from possm_plugin.checkpoint import save_checkpoint

            path = save_checkpoint(self.model, self.params.calibrated_checkpoint, default_session=self.session,
                                   meta={"calibration": {k: v for k, v in metrics.items() if k != "history"}})
            log.info("calibrated checkpoint written to %s", path)
        self.decoder = StreamingDecoder(self.model, session=self.session, unit_ids=self.unit_ids, device=self.params.device,
                                        prewarm=self.params.prewarm_ms / 1e3 if self.params.prewarm_ms else None)
        self.calibration_metrics = {k: v for k, v in metrics.items() if k != "history"}
        self.calibration = None
        r2 = metrics.get("valid_r2")
        log.info("calibration done; decoding session %r (calibration R2 %s)", self.session, "n/a" if r2 is None else f"{r2:.3f}")
        self.post_state("running", calibration_r2="n/a" if r2 is None else f"{r2:.4f}")

    # -- reporting -------------------------------------------------------------------------------
    def stats(self) -> dict:
        s: dict[str, Any] = {"outputs": self.outputs}
        if self.parser is not None:
            s["input"] = self.parser.stats()
        if self.reader is not None:
            s["stream_resets"] = self.reader.stream_resets
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


def _id(eid) -> tuple[int, int]:
    s = eid.decode() if isinstance(eid, bytes) else str(eid)
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


# -- command line -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="possm-brand",
        description="POSSM decoder as a BRAND node: parameters from supergraph_stream, spikes in, predictions out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--nickname", required=True, help="the node's nickname in the graph")
    p.add_argument("-i", "--redis_host", "--host", dest="host", default="127.0.0.1", help="Redis host")
    p.add_argument("-p", "--redis_port", "--port", dest="port", type=int, default=6379, help="Redis port")
    p.add_argument("-s", "--redis_socket", "--socket", dest="socket", default=None, help="Redis unix socket (instead of host/port)")
    p.add_argument("--username", default=None, help="Redis ACL user")
    p.add_argument("--password", default=None, help="Redis password (better: the POSSM_REDIS_PASSWORD environment variable)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-ca-cert", default=None, help="CA bundle to verify the server with")
    p.add_argument("--tls-cert", default=None, help="client certificate")
    p.add_argument("--tls-key", default=None, help="client key")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for Redis at start-up")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override the graph's 'log' parameter")
    return p


def _setup_logging(nickname: str, level: str) -> tuple[logging.Handler, int]:
    """Attach a stderr handler in BRAND's format to the package logger; returns it and the old level."""
    pkg = logging.getLogger("possm_plugin")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter(f"[{nickname}] %(levelname)s: %(message)s"))
    old = pkg.level
    pkg.addHandler(h)
    pkg.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return h, old


def main(argv: list[str] | None = None) -> int:
    """Run the node; returns the exit status (0: stopped by a signal, 1: error)."""
    args = build_parser().parse_args(argv)
    handler, old_level = _setup_logging(args.nickname, args.log_level or "INFO")
    options = RedisOptions(
        host=args.host, port=args.port, socket=args.socket, username=args.username, password=args.password,
        ssl=args.tls, ssl_ca_certs=args.tls_ca_cert, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
    )
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = BrandNode(args.nickname, options, stop=stop)
    try:
        try:
            node.connect(args.connect_timeout)
        except StreamError as exc:
            log.error("%s", exc)
            return 1
        try:
            params = node.load_parameters()
            if args.log_level is None:
                logging.getLogger("possm_plugin").setLevel(getattr(logging, params.log.upper(), logging.INFO))
            node.setup(params)
        except (PossmError, RedisUnavailable, ImportError) as exc:
            log.error("%s", exc)
            node.post_state("error", code=1, message=str(exc))
            return 1
        gc.collect()
        gc.freeze()  # the model and everything set up so far stay out of later collections: shorter pauses
        try:
            stats = node.run()
        except PossmError as exc:
            log.error("%s", exc)
            node.post_state("error", code=1, message=str(exc))
            return 1
        log.info("stopped: %s", json.dumps(stats))
        node.post_state("done", stats=stats)
        return 0
    finally:
        node.close()
        for s, h in old.items():
            signal.signal(s, h)
        logging.getLogger("possm_plugin").removeHandler(handler)
        logging.getLogger("possm_plugin").setLevel(old_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
