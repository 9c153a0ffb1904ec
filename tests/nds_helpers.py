"""The real neural-data-simulator (NDS 0.2.10) for tests: its own virtual environment, a home folder
with its settings, and its ``streamer`` -> ``encoder`` -> ``ephys_generator`` chain.

NDS wants numpy<2 and pydantic<2, so it lives in a virtual environment of its own, created once under
``~/.cache/possm-plugin/nds-venv`` (``POSSM_NDS_VENV`` moves it) and reused while it works. NDS's code
uses pylsl 1.16's names (``pylsl.stream_info``, ``pylsl.XMLElement``), which pylsl 1.17 dropped, and
pylsl 1.16's Linux wheel ships no liblsl: the venv gets pylsl 1.16.2 and the liblsl of the pylsl
1.18.6 wheel (copied to ``<venv>/lib/liblsl.so``, found through ``PYLSL_LIB``).

The chain, as NDS's docs run it, with two files NDS would download made here instead (no network in
tests): its ``post_install_config`` lays out ``$HOME/.nds`` (settings and plugins); the behaviour it
streams (``NDS-Behavior``, 2 channels at 50 Hz, looped) is a smooth random velocity written to
``sample_data/session_4_behavior_standardized.npz``; its example encoder model (velocity tuning
curves, ``plugins/model.py``) reads its parameters from ``sample_data/session_4_tuning_curves_params.npz``,
written here for ``n_channels`` electrodes. NDS points liblsl at ``$HOME/.nds/lsl.config``; the
discovery of this machine only (``ResolveScope = machine``, ``KnownPeers = {127.0.0.1}``) is added to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lsl_helpers as lh
import numpy as np

VERSION = "0.2.10"
#: pip's words when it cannot reach a package index (the only reason the NDS test skips)
_OFFLINE = ("NewConnectionError", "Failed to establish a new connection", "Network is unreachable",
            "Temporary failure in name resolution", "Name or service not known", "ProxyError", "ConnectTimeoutError")


def venv_dir() -> Path:
    return Path(os.environ.get("POSSM_NDS_VENV") or Path.home() / ".cache" / "possm-plugin" / "nds-venv")


def _works(venv: Path) -> bool:
    py = venv / "bin" / "python"
    if not py.exists():
        return False
    probe = (f"import importlib.metadata as m, pylsl; assert m.version('neural-data-simulator') == {VERSION!r}; "
             "pylsl.stream_info, pylsl.library_version()")
    env = dict(os.environ, PYLSL_LIB=str(venv / "lib" / "liblsl.so"))
    return subprocess.run([str(py), "-c", probe], capture_output=True, timeout=120, env=env, check=False).returncode == 0


def _pip(venv: Path, *reqs: str) -> str:
    """pip install ``reqs`` into ``venv``; returns pip's output (raises or returns on failure, see ensure_venv)."""
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *reqs],
                       capture_output=True, text=True, timeout=1200, check=False)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        if any(w in out for w in _OFFLINE):
            raise _Offline(next(line for line in out.splitlines() if any(w in line for w in _OFFLINE))[:200])
        raise AssertionError(f"pip install {' '.join(reqs)} failed:\n{out[-3000:]}")
    return out


class _Offline(Exception):
    pass


def ensure_venv() -> tuple[Path | None, str]:
    """The venv's ``bin`` folder, created if needed; ``(None, why)`` when pip cannot reach an index.
    Raises AssertionError for any other failure (a broken install must fail the test, not skip it)."""
    venv = venv_dir()
    if _works(venv):
        return venv / "bin", ""
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, timeout=300)
    try:
        _pip(venv, f"neural-data-simulator=={VERSION}", "pylsl==1.18.6")
        lib = next((venv / "lib").glob("python3*/site-packages/pylsl/lib/liblsl.so"))
        shutil.copy(lib, venv / "lib" / "liblsl.so")
        out = _pip(venv, "pylsl==1.16.2")
    except _Offline as exc:
        return None, f"pip cannot reach a package index: {exc}"
    assert _works(venv), f"neural-data-simulator installed but does not import:\n{out[-2000:]}"
    return venv / "bin", ""


def behaviour(seconds: float, *, rate: float = 50.0, seed: int = 0, std: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random 2-D velocity with standard deviation ``std`` per axis (cm/s, the range the bundled
    checkpoint was trained on; NDS's own sample data are standardised): times (T,), values (T, 2)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    v = np.zeros((n, 2))
    for _ in range(6):  # a sum of slow sinusoids: reaches of 0.5-3 s
        f, ph = rng.uniform(0.15, 1.0, size=2), rng.uniform(0, 2 * np.pi, size=2)
        v += rng.uniform(0.5, 1.0, size=2) * np.sin(2 * np.pi * f * t[:, None] + ph)
    v = std * (v - v.mean(0)) / v.std(0)
    return t, v


def tuning(n_channels: int, *, seed: int = 0, std: float = 10.0) -> dict[str, np.ndarray]:
    """Parameters of NDS's velocity tuning-curve model, rate = b0 + m |v| cos(angle - pd) + bs |v| (Hz),
    for velocities of standard deviation ``std``: 8-20 Hz at rest, +-6-14 Hz per ``std`` of velocity."""
    rng = np.random.default_rng(seed + 1)
    return {"b0": rng.uniform(8.0, 20.0, n_channels), "m": rng.uniform(6.0, 14.0, n_channels) / std,
            "pd": rng.uniform(-np.pi, np.pi, n_channels), "bs": rng.uniform(0.0, 3.0, n_channels) / std}


class NDS:
    """NDS's three processes in a home folder of their own, streams named with ``tag``.

    Attributes: ``behaviour`` (the velocity stream's name), ``spikes`` (the SpikeEvents stream's name),
    ``n_channels`` (electrodes; one unit each, NDS's default ``n_units_per_channel``).
    """

    def __init__(self, bin_dir: Path, home: Path, *, n_channels: int, tag: str, seconds: float = 120.0, seed: int = 0) -> None:
        self.bin, self.home, self.n_channels = Path(bin_dir), Path(home), int(n_channels)
        self.behaviour, self.rates, self.spikes = f"NDS-Behavior-{tag}", f"NDS-SpikeRates-{tag}", f"NDS-SpikeEvents-{tag}"
        self.tag, self.procs = tag, []
        nds = self.home / ".nds"
        self._run("nds_post_install_config", "--ignore-sample-data-download")
        (nds / "sample_data").mkdir(exist_ok=True)
        t, v = behaviour(seconds, seed=seed)
        np.savez(nds / "sample_data" / "session_4_behavior_standardized.npz", timestamps_train=t, vel_train=v)
        np.savez(nds / "sample_data" / "session_4_tuning_curves_params.npz", **tuning(self.n_channels, seed=seed))
        with open(nds / "lsl.config", "a") as f:  # NDS sets LSLAPICFG to this file in each of its processes
            f.write("\n[multicast]\nResolveScope = machine\n[lab]\nKnownPeers = {127.0.0.1}\n")

    def env(self) -> dict[str, str]:
        e = lh.env()
        e["HOME"] = str(self.home)
        e["LSLAPICFG"] = str(self.home / ".nds" / "lsl.config")
        e["PYLSL_LIB"] = str(self.bin.parent / "lib" / "liblsl.so")
        return e

    def start_node(self, args: list[str]) -> subprocess.Popen:
        """``python <args>`` (e.g. ``possm-lsl``) with NDS's liblsl configuration, which also asks this
        machine's outlets directly (``KnownPeers``): on a busy machine LSL's multicast discovery sometimes
        missed NDS's behaviour stream for over a minute."""
        env = lh.env()
        env["LSLAPICFG"] = str(self.home / ".nds" / "lsl.config")
        return subprocess.Popen([lh.PYTHON, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _run(self, script: str, *args: str) -> None:
        r = subprocess.run([str(self.bin / script), *args], env=self.env(), cwd=self.home, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, f"{script} failed: {r.stderr[-2000:]}"

    def _start(self, script: str, *overrides: str, settings: str | None = None) -> subprocess.Popen:
        args = [str(self.bin / script)] + (["--settings-path", str(self.home / ".nds" / settings)] if settings else [])
        with open(self.home / f"{script}.log", "w") as logf:  # a file, not a pipe nobody reads: NDS warns every second when it lags
            p = subprocess.Popen([*args, "--overrides", "log_level=WARNING", *overrides], env=self.env(), cwd=self.home,
                                 stdout=logf, stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p

    def start(self) -> NDS:
        """streamer (behaviour) -> encoder (rates) -> ephys_generator (spike events, raw, LFP)."""
        t = self.tag
        self._start("streamer", f"streamer.npz.output.lsl.stream_name={self.behaviour}",
                    f"streamer.npz.output.lsl.source_id=behaviour-{t}", settings="settings_streamer.yaml")
        self._start("encoder", f"encoder.input.lsl.stream_name={self.behaviour}", f"encoder.output.lsl.stream_name={self.rates}",
                    f"encoder.output.lsl.source_id=rates-{t}", f"encoder.output.n_channels={self.n_channels}")
        self._start("ephys_generator", f"ephys_generator.input.lsl.stream_name={self.rates}",
                    f"ephys_generator.output.spike_events.lsl.stream_name={self.spikes}",
                    f"ephys_generator.output.spike_events.lsl.source_id=spikes-{t}",
                    f"ephys_generator.output.raw.lsl.stream_name=NDS-RawData-{t}", f"ephys_generator.output.raw.lsl.source_id=raw-{t}",
                    f"ephys_generator.output.lfp.lsl.stream_name=NDS-LFPData-{t}", f"ephys_generator.output.lfp.lsl.source_id=lfp-{t}")
        return self

    def failed(self) -> str:
        """The stderr of any NDS process that has exited ('' while all run)."""
        out = []
        for p in self.procs:
            if p.poll() is not None:
                script = Path(p.args[0]).name
                out.append(f"{script} exited {p.returncode}: {(self.home / f'{script}.log').read_text()[-1500:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.procs:
            lh.stop(p, kill=True)
