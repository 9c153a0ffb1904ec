"""Stream a simulated motor session over LSL in real time (``possm simulate --lsl``).

Two outlets:

* ``name`` (default ``spikes``), the spikes, in one of two forms:

  - ``events``: irregular rate, int16, one sample ``[channel, unit]`` per spike (the
    neural-data-simulator's ``SpikeEvents`` layout without waveform), stamped with the spike time;
    ``channel`` indexes the units listed in ``desc/channels/channel/label`` (the session's unit ids),
    ``unit`` is 0. Spikes are pushed every ``tick`` seconds (1 ms, paced by deadlines), each as soon as its time has come.
  - ``binned``: regular rate ``bin_rate`` Hz, int16, one channel per unit (labels = unit ids), one
    sample per bin with the bin's spike counts, stamped with the bin's *end* and pushed then.

* ``labels_name`` (default ``velocity``): the true hand velocity, 2 float32 channels ``vx``, ``vy`` in
  cm/s at 100 Hz, stamped with its sample times.

The session is ``simulate_motor_session(session_index, seed=seed, subject=subject)`` - the same unit
ids and tuning as the session of that index that ``possm simulate --sessions N --seed S`` writes
(units and tuning depend only on seed, subject and index) - but the streamed spikes and behaviour are
the segment ``[offset, offset + segment)`` of a longer simulation, after the end of the 120 s that
``possm simulate`` writes by default: decoding it is decoding unseen data. When ``duration`` exceeds
the segment, it loops (the behaviour jumps back at each loop, the timestamps keep increasing).

Times: session time ``s`` is streamed at ``local_clock() = T0 + loop * segment + (s - offset)``.
``push_log`` (a path) saves, at the end, one row per spike push: the smallest timestamp it held and
the ``local_clock()`` right after it (so a consumer can compute "last spike of a chunk pushed ->
prediction received").
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.errors import ConfigError

__all__ = ["SimulatedLSLStream", "stream_simulated_session", "check_bin_rate", "build_parser", "main", "DEFAULT_OFFSET_S",
           "DEFAULT_SEGMENT_S"]

log = logging.getLogger("possm_plugin.sim.lsl")

#: where the streamed segment starts in the simulated session (after the 120 s written by default)
DEFAULT_OFFSET_S = 150.0
#: segment length that is looped
DEFAULT_SEGMENT_S = 120.0
VELOCITY_RATE_HZ = 100.0


def check_bin_rate(bin_rate) -> float:
    """The binned form's rate in Hz, or a ConfigError (not a positive finite number)."""
    if not (isinstance(bin_rate, (int, float)) and not isinstance(bin_rate, bool) and 0 < bin_rate < math.inf):
        raise ConfigError(f"bin_rate={bin_rate!r} must be a positive number of bins per second")
    return float(bin_rate)


class SimulatedLSLStream:
    """A simulated motor session and its two LSL outlets (created by :meth:`open`).

    Args:
        name: spike stream name; labels_name: velocity stream name (None: no velocity stream).
        form: ``events`` or ``binned``; bin_rate: bins per second of the binned form.
        seed, subject, session_index: which session (as ``possm simulate``).
        id_prefix: session id prefix (as ``possm simulate --id-prefix``; default ``sim-{subject}-seed{seed}``):
            the unit ids sent as channel labels are ``<session id>/u000``, ...
        offset, segment: the streamed span of the simulation, seconds.
        tick: push interval of spike events, seconds.
        source_id: stable id prefix (default ``possm-sim-<name>@<host>``).
        labels: write the unit ids as channel labels (False: a stream without labels).
    """

    def __init__(
        self,
        *,
        name: str = "spikes",
        labels_name: str | None = "velocity",
        form: str = "events",
        bin_rate: float = 100.0,
        seed: int = 0,
        subject: str = "m0",
        session_index: int = 0,
        id_prefix: str | None = None,
        offset: float = DEFAULT_OFFSET_S,
        segment: float = DEFAULT_SEGMENT_S,
        tick: float = 0.001,
        source_id: str | None = None,
        labels: bool = True,
    ) -> None:
        if form not in ("events", "binned"):
            raise ConfigError(f"form={form!r} must be 'events' or 'binned'")
        check_bin_rate(bin_rate)
        if not (segment >= 5 and offset >= 0):
            raise ConfigError(f"need segment >= 5 s and offset >= 0, got segment={segment!r}, offset={offset!r}")
        if not tick > 0:
            raise ConfigError(f"tick={tick!r} must be positive")
        self.name, self.labels_name, self.form = name, labels_name, form
        self.bin_rate, self.tick, self.labels = float(bin_rate), float(tick), bool(labels)
        self.seed, self.subject, self.session_index = int(seed), subject, int(session_index)
        self.offset, self.segment = float(offset), float(segment)
        self.source_id = source_id or f"possm-sim-{name}@{socket.gethostname()}"
        from possm_plugin.sim import simulate_motor_session

        sess = simulate_motor_session(self.session_index, seed=self.seed, subject=subject, duration_s=self.offset + self.segment,
                                      id_prefix=id_prefix)
        self.session_id = sess.session_id
        self.unit_ids = list(sess.unit_ids)
        lo, hi = np.searchsorted(sess.spike_times, [self.offset, self.offset + self.segment], side="left")
        self.spike_times = sess.spike_times[lo:hi] - self.offset  # segment time
        self.spike_units = sess.spike_units[lo:hi].astype(np.int64)
        tsel = (sess.target_times >= self.offset) & (sess.target_times < self.offset + self.segment)
        self.vel_times = sess.target_times[tsel] - self.offset
        self.velocity = sess.targets[tsel].astype(np.float32)
        self._outlet = None
        self._vel_outlet = None
        self.push_log: list[tuple[float, float]] = []
        self.spikes_pushed = 0
        self.samples_pushed = 0

    # -- outlets -------------------------------------------------------------------------------
    def open(self) -> "SimulatedLSLStream":
        import pylsl

        n = len(self.unit_ids)
        if self.form == "events":
            info = pylsl.StreamInfo(self.name, "Spikes", 2, pylsl.IRREGULAR_RATE, "int16", self.source_id)
            info.desc().append_child_value("layout", "[channel, unit]; channel indexes desc/channels")
        else:
            info = pylsl.StreamInfo(self.name, "SpikeCounts", n, self.bin_rate, "int16", self.source_id)
            info.desc().append_child_value("timestamps", "bin end")
        if self.labels:
            chans = info.desc().append_child("channels")
            for u in self.unit_ids:
                ch = chans.append_child("channel")
                ch.append_child_value("label", u)
                ch.append_child_value("type", "spikes")
        info.desc().append_child_value("session_id", self.session_id)
        self._outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)
        if self.labels_name:
            vinfo = pylsl.StreamInfo(self.labels_name, "Behavior", 2, VELOCITY_RATE_HZ, "float32", self.source_id + "-velocity")
            chans = vinfo.desc().append_child("channels")
            for label in ("vx", "vy"):
                ch = chans.append_child("channel")
                ch.append_child_value("label", label)
                ch.append_child_value("unit", "cm/s")
            self._vel_outlet = pylsl.StreamOutlet(vinfo, chunk_size=0, max_buffered=60)
        return self

    def close(self) -> None:
        self._outlet = None
        self._vel_outlet = None

    # -- streaming -----------------------------------------------------------------------------
    def run(self, duration: float | None = None, *, stop_event: threading.Event | None = None, start_delay: float = 0.2) -> dict:
        """Stream for ``duration`` seconds (None: until ``stop_event``); returns counts."""
        import pylsl

        if self._outlet is None:
            self.open()
        stop_event = stop_event or threading.Event()
        t0 = pylsl.local_clock() + start_delay
        end = math.inf if duration is None else t0 + float(duration)
        seg = self.segment
        w = 1.0 / self.bin_rate
        n_bins = int(math.floor(seg / w + 1e-9))
        bins_in_seg = np.floor(self.spike_times / w).astype(np.int64)
        cursor_s = 0  # next spike index in the segment
        cursor_v = 0
        cursor_b = 0
        loop = 0
        tick_k = 0
        n_units = len(self.unit_ids)
        while not stop_event.is_set():
            now = pylsl.local_clock()
            if now >= end:
                break
            base = t0 + loop * seg
            rel = min(now, end) - base  # segment time reached
            if self.form == "events":
                hi = int(np.searchsorted(self.spike_times, rel, side="right"))
                if hi > cursor_s:
                    ts = (base + self.spike_times[cursor_s:hi]).tolist()
                    x = np.zeros((hi - cursor_s, 2), np.int16)
                    x[:, 0] = self.spike_units[cursor_s:hi]
                    self._outlet.push_chunk(x, ts)
                    self.push_log.append((ts[0], pylsl.local_clock()))
                    self.spikes_pushed += hi - cursor_s
                    cursor_s = hi
            else:
                b_hi = min(int(math.floor(rel / w + 1e-9)), n_bins)  # bins whose end has passed
                while cursor_b < b_hi:
                    k = int(np.searchsorted(bins_in_seg[cursor_s:], cursor_b, side="right"))
                    counts = np.bincount(self.spike_units[cursor_s:cursor_s + k], minlength=n_units).astype(np.int16)
                    t_end = base + (cursor_b + 1) * w
                    self._outlet.push_sample(counts, t_end)
                    if k:
                        self.push_log.append((base + float(self.spike_times[cursor_s]), pylsl.local_clock()))
                    self.spikes_pushed += k
                    cursor_s += k
                    cursor_b += 1
            if self._vel_outlet is not None:
                v_hi = int(np.searchsorted(self.vel_times, rel, side="right"))
                if v_hi > cursor_v:
                    self._vel_outlet.push_chunk(self.velocity[cursor_v:v_hi], (base + self.vel_times[cursor_v:v_hi]).tolist())
                    self.samples_pushed += v_hi - cursor_v
                    cursor_v = v_hi
            if rel >= seg and (self.form == "events" or cursor_b >= n_bins):
                loop += 1
                cursor_s = cursor_v = cursor_b = 0
                continue
            # deadline-paced ticks (t0 + k * tick), as an acquisition system sends its packets: a plain
            # sleep(tick) drifts by the loop's own time and the sleep's overshoot (1.3 ms "1 ms" ticks)
            tick_k = max(tick_k + 1, int((now - t0) / self.tick))
            time.sleep(max(0.0, t0 + tick_k * self.tick - pylsl.local_clock()))
        return {"spikes_pushed": self.spikes_pushed, "velocity_samples": self.samples_pushed, "loops": loop}

    def save_push_log(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(self.push_log, dtype=np.float64).reshape(-1, 2))
        return path


def stream_simulated_session(duration: float | None = None, *, stop_event: threading.Event | None = None, push_log: str | Path | None = None, **kwargs) -> dict:
    """Build a :class:`SimulatedLSLStream` from ``kwargs``, stream it, and return its counts."""
    sim = SimulatedLSLStream(**kwargs).open()
    try:
        counts = sim.run(duration, stop_event=stop_event)
    finally:
        if push_log:
            sim.save_push_log(push_log)
        sim.close()
    counts.update(session_id=sim.session_id, n_units=len(sim.unit_ids))
    return counts


# -- command line ------------------------------------------------------------------------------------
def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    """The streaming options (shared with ``possm simulate --lsl``)."""
    p.add_argument("--form", choices=["events", "binned"], default="events", help="spike events (irregular) or binned counts (regular)")
    p.add_argument("--name", default="spikes", help="LSL name of the spike stream")
    p.add_argument("--labels-name", default="velocity", help="LSL name of the true-velocity stream ('' for none)")
    p.add_argument("--bin-rate", type=float, default=100.0, help="bins per second of the binned form")
    p.add_argument("--session-index", type=int, default=0, help="which session of the subject to stream")
    p.add_argument("--offset", type=float, default=DEFAULT_OFFSET_S, help="start of the streamed segment in the simulated session, s")
    p.add_argument("--segment", type=float, default=DEFAULT_SEGMENT_S, help="length of the looped segment, s")
    p.add_argument("--no-labels", action="store_true", help="send no channel labels (unit ids)")
    p.add_argument("--source-id", default=None, help="LSL source_id of the spike stream (default: derived from the name and host)")
    p.add_argument("--push-log", default=None, help="save (first timestamp, push time) of each spike push to this .npy at the end")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m possm_plugin.sim.lsl", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_stream_arguments(p)
    p.add_argument("--duration", type=float, default=None, help="seconds to stream (default: until interrupted)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument("--subject", default="m0", help="simulated subject")
    p.add_argument("--id-prefix", default=None, help="session id prefix (default sim-SUBJECT-seedSEED; sim-m0: the bundled checkpoint's ids)")
    return p


def run_from_args(args: argparse.Namespace) -> int:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *a: stop.set())
    counts = stream_simulated_session(
        args.duration, stop_event=stop, push_log=args.push_log, name=args.name, labels_name=args.labels_name or None,
        form=args.form, bin_rate=args.bin_rate, seed=args.seed, subject=args.subject, session_index=args.session_index,
        id_prefix=getattr(args, "id_prefix", None), offset=args.offset, segment=args.segment, source_id=args.source_id, labels=not args.no_labels,
    )
    print(f"streamed {counts['spikes_pushed']} spikes of {counts['session_id']} ({counts['n_units']} units) "
          f"and {counts['velocity_samples']} velocity samples", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_from_args(args)
    except ConfigError as exc:
        print(f"possm simulate --lsl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
