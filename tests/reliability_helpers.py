"""Shared pieces of the reliability suite (tests/test_reliability_*.py, tests/reliability/test_safety.py).

- ``PROPERTY``: the hypothesis settings every property test uses: derandomized (CI sees the same
  examples every run), no example database written to the working tree, no per-example deadline
  (the machine is shared and loaded).
- ``accounting``: the exact event accounting of a StreamingDecoder.
- ``wait_for``/``Procs``: bounded waits and processes that are always ended at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, settings

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no 'explain': it writes patch files
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)

PYTHON = sys.executable

# When a hypothesis test fails, its pytest plugin imports hypothesis.extra._patching (libcst), whose import
# warns (DeprecationWarning from mypy_extensions); with warnings as errors that turns the failure report
# into an INTERNALERROR that hides the falsifying example. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # noqa: BLE001 - libcst missing: the plugin then skips the patch, no warning either
        pass


def accounting(dec) -> tuple[int, int]:
    """(events in, events decoded + dropped + still buffered): equal when nothing is lost silently
    (chunk_step == chunk_width)."""
    s = dec.stats
    return s.spikes_in, s.spikes_decoded + s.spikes_dropped + dec.buffered()


def state_is_finite(dec) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(x).float()).all()) for x in dec.state)


def poisson(rng: np.random.Generator, *, n_units: int = 16, rate: float = 20.0, t0: float = 0.0, dt: float = 1.0):
    """Sorted Poisson events of ``n_units`` units at ``rate`` Hz in [t0, t0 + dt)."""
    n = int(rng.poisson(n_units * rate * dt))
    t = np.sort(rng.uniform(t0, t0 + dt, n))
    return rng.integers(0, n_units, n).astype(np.int64), t


def wait_for(cond, timeout: float = 20.0, interval: float = 0.02) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


def env(**extra: str) -> dict[str, str]:
    """The environment of the processes the tests start (LSLAPICFG is inherited when lsl_helpers set it)."""
    e = dict(os.environ)
    e.pop("POSSM_RAISE_IN_THREADS", None)  # the processes under test run as a user runs them
    e.setdefault("PYTHONUNBUFFERED", "1")
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(extra)
    return e


class Procs:
    """Processes started by a test, each ended (SIGKILL if need be) at teardown, with their log files."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.files: list = []

    def start(self, args: list[str], *, out: str | Path | None = None, err: str | Path | None = None, **kw) -> subprocess.Popen:
        """Start ``args``; stdout/stderr go to the files ``out``/``err`` (``"/dev/full"``: a full disk;
        None: discarded)."""
        kw.setdefault("env", env())
        streams = []
        for path in (out, err):
            f = open(path if path is not None else os.devnull, "wb")  # noqa: SIM115 - closed in close()
            self.files.append(f)
            streams.append(f)
        p = subprocess.Popen(args, stdout=streams[0], stderr=streams[1], stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    @staticmethod
    def end(p: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (if it still runs), wait up to ``timeout`` s, then SIGKILL; returns the exit status."""
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(timeout=10)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
                pass
        for f in self.files:
            try:
                f.close()
            except OSError:  # /dev/full: the last flush fails
                pass


def console_script(name: str, module: str) -> list[str]:
    """The installed console script ``name`` (next to this interpreter, not a pyenv shim), else
    ``python -m module``."""
    exe = Path(PYTHON).parent / name
    return [str(exe)] if exe.is_file() else [PYTHON, "-m", module]


def vm_rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process from /proc/<pid>/status (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


# -- BRAND / Redis -------------------------------------------------------------------------------------
ENTRIES_PER_CHUNK = 50  # 50 ms chunks of 1 ms crossing entries


def publish_supergraph(client, nickname: str, parameters: dict) -> None:
    import json

    graph = {"graph_name": "reliability", "nodes": {nickname: {"name": "possm", "nickname": nickname, "parameters": parameters}}}
    client.xadd("supergraph_stream", {"data": json.dumps(graph)})


def make_crossings(n_entries: int, n_units: int = 16, seed: int = 0) -> np.ndarray:
    """(T, U) int16 crossings, mostly 0/1 at about 30 Hz."""
    rng = np.random.default_rng(seed)
    return (rng.random((n_entries, n_units)) < 0.03).astype(np.int16)


def crossing_events(x: np.ndarray, first_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: c crossings in ms n at n + (k + 0.5) / c ms."""
    ch, tt = [], []
    for n, row in enumerate(x):
        for u in np.flatnonzero(row):
            c = int(row[u])
            for k in range(c):
                ch.append(u)
                tt.append((first_index + n) * 1e-3 + (k + 0.5) / c * 1e-3)
    return np.asarray(ch, np.int64), np.asarray(tt, np.float64)


def push_crossings(client, stream: str, x: np.ndarray, *, i0: int = 0) -> list[str]:
    """XADD one entry per row (fields crossings, ts, i); returns the entry ids."""
    p = client.pipeline(transaction=False)
    for n, row in enumerate(x):
        p.xadd(stream, {"crossings": row.astype(np.int16).tobytes(), "ts": np.uint64(time.monotonic_ns()).tobytes(),
                        "i": np.uint64(i0 + n).tobytes()})
    return [i.decode() for i in p.execute()]


def output_values(entries, field: bytes = b"samples") -> np.ndarray:
    return np.stack([np.frombuffer(f[field], np.float32) for _, f in entries])


def u64(f: dict, key: bytes) -> int:
    return int(np.frombuffer(f[key], np.uint64)[0])


def f64(f: dict, key: bytes) -> float:
    return float(np.frombuffer(f[key], np.float64)[0])


def report(scenario: str, **measured) -> None:
    """Print one measured outcome to the test's captured output, never among the progress dots:
    ``pytest -s`` or ``-rP`` shows them (docs/reliability.md quotes them)."""
    import json

    print(f"[reliability] {json.dumps({'scenario': scenario, **measured}, default=str)}")
