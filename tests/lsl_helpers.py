"""Helpers for tests against real LSL: discovery pinned to this machine, unique names, processes.

Importing this module points liblsl at an ``lsl_api.cfg`` with ``ResolveScope = machine`` through
the ``LSLAPICFG`` environment variable (inherited by every process the tests start). It must be
imported before anything in the test process talks to liblsl (test modules import it at the top).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

_CFG_DIR = Path(tempfile.mkdtemp(prefix="possm-lsl-cfg-"))
LSL_CFG = _CFG_DIR / "lsl_api.cfg"
LSL_CFG.write_text("[multicast]\nResolveScope = machine\n\n[log]\nlevel = -2\n")
os.environ.setdefault("LSLAPICFG", str(LSL_CFG))

import numpy as np  # noqa: E402
import pylsl  # noqa: E402

PYTHON = sys.executable


def unique(prefix: str) -> str:
    """A stream name no other test (or test run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["LSLAPICFG"] = os.environ["LSLAPICFG"]
    e.setdefault("PYTHONUNBUFFERED", "1")
    e.pop("POSSM_RAISE_IN_THREADS", None)  # the node under test runs as a user would
    return e


def start(args: list[str], **kw) -> subprocess.Popen:
    """Start ``python <args>`` with the pinned LSL config; stdout and stderr are captured."""
    return subprocess.Popen([PYTHON, *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def start_sim(name: str, *, form: str = "events", duration: float = 20.0, labels_name: str = "", extra: list[str] = (), source_id: str | None = None) -> subprocess.Popen:
    """The simulated motor session 0 (seed 0, m0) streamed over LSL from another process."""
    args = ["-m", "possm_plugin.sim.lsl", "--name", name, "--form", form, "--duration", str(duration),
            "--offset", "0", "--segment", "10", "--labels-name", labels_name, *extra]
    if source_id:
        args += ["--source-id", source_id]
    return start(args)


def stop(proc: subprocess.Popen, *, timeout: float = 10.0, kill: bool = False) -> tuple[str, str]:
    """End a process we started (SIGTERM, or SIGKILL with ``kill``) and return its output."""
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return out or "", err or ""


def resolve(name: str, timeout: float = 30.0) -> pylsl.StreamInfo:
    infos = pylsl.resolve_byprop("name", name, 1, timeout)
    if not infos:
        raise AssertionError(f"no LSL stream {name!r} within {timeout} s")
    return infos[0]


def open_inlet(name: str, *, timeout: float = 30.0, clocksync: bool = False) -> pylsl.StreamInlet:
    """An inlet that keeps the sender's timestamps as sent (``proc_none``) unless ``clocksync``."""
    inlet = pylsl.StreamInlet(resolve(name, timeout), max_buflen=360,
                              processing_flags=pylsl.proc_clocksync if clocksync else pylsl.proc_none)
    inlet.open_stream(timeout=timeout)
    return inlet


class Recorder:
    """Pull everything from a few inlets into lists of (timestamps, samples)."""

    def __init__(self, **inlets: pylsl.StreamInlet) -> None:
        self.inlets: dict[str, pylsl.StreamInlet] = {}
        self.ts: dict[str, list[np.ndarray]] = {}
        self.data: dict[str, list[np.ndarray]] = {}
        for k, inlet in inlets.items():
            self.add(k, inlet)

    def add(self, key: str, inlet: pylsl.StreamInlet) -> None:
        self.inlets[key] = inlet
        self.ts[key], self.data[key] = [], []

    def pull(self, timeout: float = 0.01) -> None:
        for k, inlet in self.inlets.items():
            d, t = inlet.pull_chunk(timeout=timeout, max_samples=100000, as_numpy=True)
            if len(t):
                self.ts[k].append(np.asarray(t, np.float64))
                self.data[k].append(np.asarray(d, np.float64).reshape(len(t), -1))

    def until(self, done, *, limit: float) -> None:
        t_end = time.monotonic() + limit
        while time.monotonic() < t_end and not done():
            self.pull()
        self.pull(0.2)

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.ts[key]:
            return np.zeros(0), np.zeros((0, 0))
        return np.concatenate(self.ts[key]), np.concatenate(self.data[key])


def binned_to_events(ts: np.ndarray, counts: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: a sample stamped at its bin's end; ``k`` spikes at ``s + (i + 0.5) w / k``."""
    w = 1.0 / rate
    chans, times = [], []
    for t, row in zip(ts, counts):
        s = t - w
        for c, k in enumerate(np.rint(row).astype(int)):
            for i in range(k):
                chans.append(c)
                times.append(s + (i + 0.5) * (w / k))
    order = np.argsort(times, kind="stable")
    return np.asarray(chans, np.int64)[order], np.asarray(times, np.float64)[order]
