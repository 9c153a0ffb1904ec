"""The hardware bridges of examples/hardware against stand-ins of the vendors' SDKs, writing real LSL on
this machine, read back by the source ``possm-lsl`` uses."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import lsl_helpers  # noqa: F401  (pins LSL discovery to this machine)
import numpy as np
import pylsl
import pytest
from lsl_helpers import unique

from possm_plugin.adapters.lsl import LSLSource

ROOT = Path(__file__).resolve().parents[2]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "hardware" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


br = load_example("blackrock_lsl")


class FakeCbSession:
    """pycbsdk's ``Session(device)`` as its README shows it: a context manager whose
    ``on_event("FRONTEND")`` decorates ``callback(header, data)``. Spike packets are delivered from a
    thread, several per "UDP packet" (one arrival time), once ``go`` is set."""

    def __init__(self, device: str, *, spikes: list[tuple[int, int, int]], go: threading.Event) -> None:
        self.device, self.spikes, self.go = device, spikes, go
        self.callbacks: list = []
        self.thread = threading.Thread(target=self._deliver, daemon=True)

    def on_event(self, kind: str):
        assert kind == "FRONTEND"

        def register(fn):
            self.callbacks.append(fn)
            return fn
        return register

    def _deliver(self) -> None:
        self.go.wait(20)
        t0 = time.monotonic()
        for k in range(0, len(self.spikes), 10):  # 10 spikes per packet
            packet = self.spikes[k:k + 10]
            due = t0 + packet[-1][1] / 30000 - self.spikes[0][1] / 30000 + 0.002  # delivered after the last one
            time.sleep(max(0.0, due - time.monotonic()))
            for chid, ticks, unit in packet:
                for cb in self.callbacks:
                    cb(SimpleNamespace(chid=chid, time=ticks, type=unit), b"")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(5)


def test_clock_map_keeps_device_spacing_and_takes_the_smallest_delay():
    cm = br.ClockMap(rate=30000, window=6)
    # packets of three spikes 1 ms apart (0, 30, 60 ticks), each arriving at once 3 ms after its last
    # spike; from the second packet on, the spikes keep their spacing instead of the arrival time
    first = [cm(t, 10.005) for t in (0, 30, 60)]
    assert first == pytest.approx([10.005] * 3)  # nothing learnt yet: the arrival time
    second = [cm(t, 10.015) for t in (300, 330, 360)]
    np.testing.assert_allclose(np.diff(second), [0.001, 0.001], atol=1e-9)
    assert second[-1] == pytest.approx(10.015)
    late = [cm(t, 10.040) for t in (600, 630, 660)]  # a packet delayed 20 ms more: the smallest delay holds
    np.testing.assert_allclose(late, [10.023, 10.024, 10.025], atol=1e-9)
    cm2 = br.ClockMap(rate=30000, window=3)
    for k in range(3):  # the smallest delay leaves the window after `window` events: drift is followed
        cm2(30 * k, 10.0 + 0.001 * k)
    assert [cm2(30 * k, 10.0 + 0.001 * k + 0.004) for k in range(3, 6)][-1] == pytest.approx(10.009)
    with pytest.raises(ValueError, match="ticks per second"):
        br.ClockMap(rate=0)


def test_blackrock_bridge_to_lsl_source(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    ticks = np.sort(rng.integers(0, 30000 * 2, n)) + 123_456  # 2 s of spikes on the NSP's 30 kHz clock
    chids = rng.integers(1, 9, n)  # electrodes 1..8
    chids[::37] = 129  # an analog input: not a frontend electrode of this array
    units = rng.integers(0, 3, n)
    units[5::41] = br.NOISE_UNIT
    spikes = [(int(c), int(t), int(u)) for c, t, u in zip(chids, ticks, units)]
    name, go, stop = unique("blackrock"), threading.Event(), threading.Event()
    args = br.build_parser().parse_args(["--device", "NPLAY", "--n-channels", "8", "--prefix", "arr", "--name", name,
                                         "--source-id", unique("br-src"), "--duration", "30"])
    result = {}
    t = threading.Thread(target=lambda: result.update(br.run(args, session_factory=lambda d: FakeCbSession(d, spikes=spikes, go=go),
                                                             pylsl=pylsl, stop=stop)))
    t.start()
    got_ch, got_t = [], []
    try:
        with LSLSource(name=name, resolve_timeout=20) as src:
            assert src.unit_ids == [f"arr/ch{i:03d}" for i in range(1, 9)]
            go.set()
            deadline = time.monotonic() + 20
            keep = (chids <= 8) & (units != br.NOISE_UNIT)
            while len(got_ch) < keep.sum() and time.monotonic() < deadline:
                b = src.acquire(timeout=0.05)
                got_ch += list(b.channels)
                got_t += list(b.times)
    finally:
        stop.set()
        t.join(10)
    assert result == {"pushed": int(keep.sum()), "other_channel": int((chids > 8).sum()), "noise": int(((chids <= 8) & (units == br.NOISE_UNIT)).sum())}
    assert got_ch == list(chids[keep] - 1)  # Blackrock's electrode k is label index k-1, in order
    # spike times keep the NSP clock's spacing (to LSL's clock-offset jitter), not the packets' arrival
    skip = int(keep[:10].sum())  # the first packet's spikes carry its arrival time (nothing learnt yet)
    np.testing.assert_allclose(np.diff(got_t[skip:]), np.diff(ticks[keep][skip:]) / 30000, atol=2e-4)
