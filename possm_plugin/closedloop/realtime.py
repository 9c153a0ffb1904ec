"""The loop in real time over LSL, with ``possm-lsl`` as a separate process in it.

The task and the user run here as in :func:`~.runner.run_loop`, paced by the clock; the decoder is
:class:`LslLoopDecoder`: it pushes each chunk's spikes on an LSL outlet (spike events, ``[channel, unit]``
per sample, channel labels = the session's unit ids, timestamps in the chunk on this machine's
``local_clock``) as soon as the user's intent for the chunk is known (so a busy machine cannot make them
late), sleeps until the chunk's end, and takes the newest prediction the node has published on its
outlet, waiting at most ``wait_s`` after the end for the chunk's own. The node (``possm-lsl --inlet ... --source-opt clock_lag=...``)
closes each chunk ``clock_lag`` after its end, so its real latency (transport, chunking, compute,
publishing) is part of the loop; a prediction that misses the wait is used a chunk later (counted as
``stale``). The first sample pushed is a marker spike on channel 0 at the first chunk's start, which
anchors the node's chunk grid on the loop's.

POSSM is calibrated in process (as in :mod:`.experiment`) and handed to the node as a checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from possm_plugin.closedloop.decoders import LoopDecoder
from possm_plugin.errors import PossmError, StreamError

__all__ = ["LslLoopDecoder", "realtime_loop", "run_realtime_experiment", "start_node"]

log = logging.getLogger("possm_plugin.closedloop")


def start_node(checkpoint: str | Path, *, inlet: str, outlet: str, clock_lag: float = 0.01, resolve_timeout: float = 60.0) -> subprocess.Popen:
    """Start ``possm-lsl`` on ``inlet`` with ``checkpoint``, publishing on ``outlet``."""
    from possm_plugin.realtime.demo import _node_command

    cmd = _node_command() + ["--inlet", inlet, "--outlet", outlet, "--checkpoint", str(checkpoint), "--log-level", "WARNING",
                             "--resolve-timeout", str(resolve_timeout), "--source-opt", f"clock_lag={clock_lag}",
                             "--source-opt", "stall_events=1000000", "--json-summary"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class LslLoopDecoder(LoopDecoder):
    """The decoder is a ``possm-lsl`` process reached over LSL (see the module doc).

    Args:
        unit_ids: the session's unit ids (the outlet's channel labels).
        session_id: written into the outlet's description.
        name: the spike outlet's name (the node's ``--inlet``); ``outlet``: the node's prediction outlet.
        wait_s: how long after a chunk's end to wait for its prediction before using the newest one.
    """

    name = "possm-lsl"

    def __init__(self, unit_ids, *, session_id: str, name: str, outlet: str, wait_s: float = 0.03, start_timeout: float = 60.0,
                 node: subprocess.Popen | None = None) -> None:
        import pylsl

        self.pylsl = pylsl
        self.unit_ids, self.session_id, self.name_, self.outlet_name = list(unit_ids), session_id, name, outlet
        self.wait_s, self.start_timeout, self.node = float(wait_s), float(start_timeout), node
        info = pylsl.StreamInfo(name, "Spikes", 2, pylsl.IRREGULAR_RATE, "int16", f"possm-closed-loop-{name}-{os.getpid()}")
        info.desc().append_child_value("layout", "[channel, unit]; channel indexes desc/channels")
        chans = info.desc().append_child("channels")
        for u in self.unit_ids:
            ch = chans.append_child("channel")
            ch.append_child_value("label", u)
            ch.append_child_value("type", "spikes")
        info.desc().append_child_value("session_id", session_id)
        self._outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)
        self._inlet = None
        self.stats = {"chunks": 0, "fresh": 0, "stale": 0, "none": 0, "latency_ms": []}

    def _connect(self) -> None:
        pylsl = self.pylsl
        deadline = time.monotonic() + self.start_timeout
        while self._inlet is None:
            if self.node is not None and self.node.poll() is not None:
                _, err = self.node.communicate()
                raise PossmError(f"possm-lsl exited with code {self.node.returncode}: {err.strip().splitlines()[-3:]}")
            if time.monotonic() > deadline:
                raise StreamError(f"no LSL stream {self.outlet_name!r} from possm-lsl within {self.start_timeout:g} s")
            found = pylsl.resolve_byprop("name", self.outlet_name, 1, 0.5)
            if found:
                self._inlet = pylsl.StreamInlet(found[0], max_buflen=60, processing_flags=pylsl.proc_clocksync)
                self._inlet.open_stream(timeout=10.0)
                self._inlet.time_correction(timeout=5.0)

    def reset(self, t0: float = 0.0) -> None:
        self._connect()
        while self._inlet.pull_chunk(timeout=0.0)[1]:
            pass  # drop anything older than this run
        # the run's clock: loop time t is local_clock() = base + t; start in 0.3 s
        self.base = self.pylsl.local_clock() + 0.3 - t0
        self.t0 = t0
        self._first = True
        self._last = np.zeros(2, np.float32)
        self._last_t = -np.inf

    def _sleep_until(self, t_wall: float) -> None:
        while True:
            d = t_wall - self.pylsl.local_clock()
            if d <= 0:
                return
            time.sleep(min(d, 0.002) if d < 0.004 else d - 0.002)

    def _pull(self) -> None:
        data, ts = self._inlet.pull_chunk(timeout=0.0, max_samples=1000)
        now = self.pylsl.local_clock()
        for x, t in zip(data, ts):
            lt = t - self.base
            if lt > self._last_t:
                self._last_t, self._last = lt, np.asarray(x[:2], np.float32)
                self._recv = now

    def step(self, times, units, t_end, intent):
        x = np.zeros((len(times), 2), np.int16)
        x[:, 0] = units
        ts = list(self.base + np.asarray(times, np.float64))
        if self._first:  # the marker spike that anchors the node's grid at the first chunk's start
            x = np.vstack([np.zeros((1, 2), np.int16), x])
            ts = [self.base + self.t0] + ts
            self._first = False
        if len(ts):
            self._outlet.push_chunk(x, ts)
        self._sleep_until(self.base + t_end)
        deadline = self.base + t_end + self.wait_s
        self.stats["chunks"] += 1
        while True:
            self._pull()
            if self._last_t >= t_end - 0.02:  # stamped with its chunk end, through a clock correction of ~0.1 ms
                self.stats["fresh"] += 1
                self.stats["latency_ms"].append((self._recv - (self.base + t_end)) * 1e3)
                break
            if self.pylsl.local_clock() >= deadline:
                self.stats["stale" if np.isfinite(self._last_t) else "none"] += 1
                break
            time.sleep(0.0005)
        return self._last

    def close(self) -> None:
        self._outlet = None
        self._inlet = None


def _stop(proc: subprocess.Popen | None) -> str:
    from possm_plugin.realtime.demo import _stop as stop

    return stop(proc)[0]


def realtime_loop(name, decoder, stream, *, seed, cfg, user, wait_s: float = 0.03):
    """One block of :func:`~.experiment.run_experiment` with POSSM in a ``possm-lsl`` process over LSL, in
    real time (other decoders run in process). Returns ``(LoopResult, extra)``; ``extra`` for POSSM: the
    chunks whose own prediction arrived within ``wait_s`` (``fresh``), missed it (``stale``), and the time
    from a chunk's end to its prediction's arrival (ms)."""
    from possm_plugin.closedloop.runner import run_loop
    from possm_plugin.model.checkpoint import save_checkpoint

    if name != "possm":
        return run_loop(decoder, stream, n_trials=cfg.trials, seed=seed, task=cfg.task, user=user), None
    tmp = Path(tempfile.mkdtemp(prefix="possm-closed-loop-"))
    node = None
    try:
        ckpt = save_checkpoint(decoder.model, tmp / "adapted", default_session=stream.session_id)
        tag = f"{os.getpid()}-{seed}-{time.monotonic_ns()}"
        node = start_node(ckpt, inlet=f"possm-cl-spikes-{tag}", outlet=f"possm-cl-pred-{tag}")
        dec = LslLoopDecoder(stream.unit_ids, session_id=stream.session_id, name=f"possm-cl-spikes-{tag}",
                             outlet=f"possm-cl-pred-{tag}", wait_s=wait_s, node=node)
        res = run_loop(dec, stream, n_trials=cfg.trials, seed=seed, task=cfg.task, user=user)
    finally:
        summary = _stop(node) if node is not None else ""
        shutil.rmtree(tmp, ignore_errors=True)
    lat = np.asarray(dec.stats["latency_ms"])
    extra = {
        "chunks": dec.stats["chunks"], "fresh": dec.stats["fresh"], "stale": dec.stats["stale"], "none": dec.stats["none"],
        "latency_ms": {"p50": float(np.percentile(lat, 50)) if len(lat) else None,
                       "p99": float(np.percentile(lat, 99)) if len(lat) else None},
        "node_summary": summary.strip()[-2000:],
    }
    return res, extra


def run_realtime_experiment(names, seeds, cfg, *, progress=None) -> dict:
    """:func:`~.experiment.run_experiment` with :func:`realtime_loop`: POSSM over LSL in real time."""
    from possm_plugin.closedloop.experiment import run_experiment

    return run_experiment(names, seeds, cfg, progress=progress, loop=realtime_loop)
