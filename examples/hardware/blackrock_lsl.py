"""Blackrock NSP spike events -> an LSL spike-event stream that ``possm-lsl`` decodes.

Reads the spike events of a Blackrock Neural Signal Processor (threshold crossings, or sorted units)
with ``pycbsdk`` and writes each as one sample of an irregular-rate LSL stream laid out as
``possm-lsl`` reads it (``docs/lsl.md``, "On the wire"): ``[channel, unit]`` int16, the channel an
index into the electrode labels listed in ``desc/channels``, the sample's timestamp the spike's time
on this machine's LSL clock.

    pip install pycbsdk pylsl
    python examples/hardware/blackrock_lsl.py --device HUB1 --n-channels 96 --prefix array1
    possm-lsl --inlet spikes --calibrate 60 --labels velocity      # an array the checkpoint has not seen

Times: each spike is stamped with the NSP's own clock (``header.time``, ``--ticks-per-second`` ticks per
second: 30000 on the older NSPs, 1e9 where the firmware counts nanoseconds; check yours), mapped onto
the LSL clock by an offset that follows the smallest observed transport delay over the last
``--offset-window`` spikes. The spikes of one UDP packet therefore keep their spacing instead of all
getting the packet's arrival time, and a slow drift between the two clocks is followed.

Channels: frontend electrodes ``1 .. --n-channels`` (Blackrock numbers them from 1) become indices
``0 .. n-1``; events on other channels (analog inputs, digital) are ignored and counted. The unit
(``header.type``: 0 unsorted, 1-5 sorted units, 255 noise) is passed on; ``possm-lsl`` merges the units
of an electrode (threshold crossings) and drops nothing. Noise (255) is dropped here by default.

The pycbsdk calls used (``Session(device)``, ``session.on_event("FRONTEND")`` as a decorator of
``callback(header, data)`` with ``header.chid``, ``header.time``, ``header.type``) are those of
pycbsdk 10's README; the test drives this script with a stand-in of that shape, not with an NSP.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

NOISE_UNIT = 255


class ClockMap:
    """Device ticks -> LSL seconds: ``ticks / rate + offset``, the offset the smallest
    ``arrival - ticks / rate`` over the last ``window`` events (a sliding minimum)."""

    def __init__(self, *, rate: float, window: int = 2000) -> None:
        if rate <= 0:
            raise ValueError(f"ticks per second must be > 0, got {rate}")
        self.rate, self.window = float(rate), int(window)
        self._q: collections.deque[tuple[int, float]] = collections.deque()  # (event number, offset), increasing offsets
        self._n = 0

    def __call__(self, ticks: int, arrival: float) -> float:
        t = ticks / self.rate
        d = arrival - t
        while self._q and self._q[-1][1] >= d:
            self._q.pop()
        self._q.append((self._n, d))
        while self._q[0][0] <= self._n - self.window:
            self._q.popleft()
        self._n += 1
        return t + self._q[0][1]


class Bridge:
    """Callbacks of a pycbsdk session -> samples of one LSL outlet.

    Args:
        outlet: a ``pylsl.StreamOutlet`` made by :func:`make_outlet` (anything with ``push_sample``).
        n_channels: frontend electrodes ``1..n_channels`` are passed on.
        clock: maps ``(header.time, arrival)`` to the LSL time of the spike.
        now: the LSL clock (``pylsl.local_clock``).
        keep_noise: pass on events classified as noise (unit 255).
    """

    def __init__(self, outlet: Any, *, n_channels: int, clock: ClockMap, now: Callable[[], float], keep_noise: bool = False) -> None:
        self.outlet, self.n_channels, self.clock, self.now, self.keep_noise = outlet, int(n_channels), clock, now, keep_noise
        self.lock = threading.Lock()
        self.counts = {"pushed": 0, "other_channel": 0, "noise": 0}

    def on_spike(self, header: Any, data: Any = None) -> None:
        arrival = self.now()
        ch, unit = int(header.chid), int(header.type)
        with self.lock:
            if not 1 <= ch <= self.n_channels:
                self.counts["other_channel"] += 1
                return
            if unit == NOISE_UNIT and not self.keep_noise:
                self.counts["noise"] += 1
                return
            self.outlet.push_sample([ch - 1, unit], self.clock(int(header.time), arrival))
            self.counts["pushed"] += 1


def make_outlet(pylsl: Any, *, name: str, n_channels: int, prefix: str, source_id: str) -> Any:
    """The spike-event outlet: irregular rate, ``[channel, unit]`` int16, electrode labels in
    ``desc/channels`` (``<prefix>/ch001`` ... in Blackrock's 1-based numbering)."""
    info = pylsl.StreamInfo(name, "Spikes", 2, pylsl.IRREGULAR_RATE, "int16", source_id)
    info.desc().append_child_value("layout", "[channel, unit]; channel indexes desc/channels")
    chans = info.desc().append_child("channels")
    for i in range(1, n_channels + 1):
        ch = chans.append_child("channel")
        ch.append_child_value("label", f"{prefix}/ch{i:03d}")
        ch.append_child_value("type", "spikes")
    return pylsl.StreamOutlet(info)


def run(args: argparse.Namespace, *, session_factory: Callable[[str], Any], pylsl: Any, stop: threading.Event) -> dict:
    """Open the session, push its spikes until ``stop`` is set; returns the counts."""
    outlet = make_outlet(pylsl, name=args.name, n_channels=args.n_channels, prefix=args.prefix, source_id=args.source_id or f"blackrock-{args.device}-{args.prefix}")
    bridge = Bridge(outlet, n_channels=args.n_channels, clock=ClockMap(rate=args.ticks_per_second, window=args.offset_window),
                    now=pylsl.local_clock, keep_noise=args.keep_noise)
    with session_factory(args.device) as session:
        session.on_event("FRONTEND")(bridge.on_spike)
        print(f"streaming spikes of {args.n_channels} electrodes of {args.device} as LSL stream {args.name!r}", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(0.05):
            if deadline is not None and time.monotonic() >= deadline:
                break
    return dict(bridge.counts)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="HUB1", help="pycbsdk device type: NSP, HUB1, LEGACY_NSP, NPLAY, ... (default: HUB1)")
    ap.add_argument("--n-channels", type=int, default=96, help="frontend electrodes 1..N to pass on (default: 96)")
    ap.add_argument("--prefix", default="blackrock", help="electrode labels are PREFIX/ch001 ... (default: blackrock)")
    ap.add_argument("--name", default="spikes", help="LSL stream name (default: spikes)")
    ap.add_argument("--source-id", default=None, help="LSL source_id (default: blackrock-DEVICE-PREFIX)")
    ap.add_argument("--ticks-per-second", type=float, default=30000.0, help="rate of the NSP's header.time (default: 30000)")
    ap.add_argument("--offset-window", type=int, default=2000, help="spikes over which the clock offset is the minimum delay (default: 2000)")
    ap.add_argument("--keep-noise", action="store_true", help="also pass on events classified as noise (unit 255)")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: 0, until Ctrl-C)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import pylsl
        from pycbsdk import Session
    except ImportError as e:
        print(f"blackrock_lsl: {e.name} is not installed (pip install pycbsdk pylsl)", file=sys.stderr)
        return 1
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    counts = run(args, session_factory=Session, pylsl=pylsl, stop=stop)
    print(f"spikes pushed {counts['pushed']}, other channels {counts['other_channel']}, noise {counts['noise']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
