"""The BRAND node started the way BRAND's supervisor starts it: BRAND's `make` builds
``<module>/nodes/possm/possm.bin`` (examples/brand/brand-modules), the supervisor runs that path with
``-n NICKNAME -i HOST -p PORT`` from BRAND's folder and with its own environment (BRAND's ``rt``
conda env: Python 3.8, torch 1.12). possm-brand lives in its own virtual environment beside it
(``nodes/possm/venv``), so the launcher must find it there and keep the rt env's Python settings out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from redis_helpers import redis_server  # noqa: F401  (fixture)
from reliability_helpers import crossing_events, wait_for
from test_brand import (
    ENTRIES_PER_CHUNK,
    N_UNITS,
    make_crossings,
    offline,
    publish_supergraph,
    push_crossings,
    values,
)

MODULE = Path(__file__).resolve().parents[2] / "examples" / "brand" / "brand-modules" / "possm"


def build_module(tmp_path: Path) -> tuple[Path, Path]:
    """BRAND's layout in ``tmp_path`` (``brand/``, ``brand-modules/possm``), built as BRAND's top-level
    Makefile does (delete the node's .bin, run ``make`` in its folder); returns (BRAND's folder, the .bin)."""
    make = shutil.which("make")
    assert make, "GNU make is needed (BRAND builds its nodes with it)"
    brand = tmp_path / "brand"
    brand.mkdir()
    module = tmp_path / "brand-modules" / "possm"
    shutil.copytree(MODULE, module, ignore=shutil.ignore_patterns("possm.bin", "venv", "git_hash.o"))
    node = module / "nodes" / "possm"
    subprocess.run([make, "-C", str(node)], check=True, capture_output=True, timeout=60)
    exe = (brand / ".." / "brand-modules" / "possm" / "nodes" / "possm" / "possm.bin").resolve()  # the supervisor's path
    assert exe.is_file() and os.access(exe, os.X_OK)
    return brand, exe


def rt_env(tmp_path: Path) -> dict:
    """An environment like BRAND's rt env: no possm-brand on PATH, and a PYTHONPATH whose torch is not
    one possm-plugin can use (it would break the node if the launcher let it through)."""
    rt = tmp_path / "rt-site-packages" / "torch"
    rt.mkdir(parents=True)
    (rt / "__init__.py").write_text("raise ImportError('the rt env torch 1.12 leaked into the node')\n")
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(rt.parent)}


def test_node_binary_runs_from_its_own_venv_as_brands_supervisor_starts_it(redis_server, tiny_checkpoint, tmp_path):
    installed = Path(sys.prefix) / "bin" / "possm-brand"
    assert installed.is_file(), f"possm-brand is not installed in {sys.prefix} (pip install -e .)"
    brand, exe = build_module(tmp_path)
    (exe.parent / "venv").symlink_to(sys.prefix, target_is_directory=True)  # the node's own environment
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": N_UNITS, "checkpoint": str(tiny_checkpoint),
                                    "output_stream": "possm"})
    err_path = tmp_path / "node.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([str(exe), "-n", "possm", "-i", "127.0.0.1", "-p", str(redis_server.port)], cwd=brand,
                                env=rt_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert wait_for(lambda: proc.poll() is not None or any(f[b"status"] == b"running" for _, f in c.xrange("possm_state")),
                            90.0)
            assert proc.poll() is None, err_path.read_text()
            n_chunks = 4
            x = make_crossings(n_chunks * ENTRIES_PER_CHUNK, seed=5)
            push_crossings(c, "thresh_cross", x)
            assert wait_for(lambda: c.xlen("possm") >= n_chunks, 20.0), err_path.read_text()
            proc.send_signal(signal.SIGINT)  # as the supervisor stops a graph
            rc = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = err_path.read_text()
    assert rc == 0 and "Traceback" not in log, log
    got = np.stack([values(f) for _, f in c.xrange("possm")])
    ch, tt = crossing_events(x)
    np.testing.assert_allclose(got, offline(tiny_checkpoint, ch, tt, n_chunks), rtol=1e-5, atol=1e-5)
    last = c.xrevrange("possm_state", count=1)[0][1]
    assert last[b"status"] == b"done" and json.loads(last[b"stats"])["outputs"] == n_chunks


def test_launcher_says_what_to_do_when_it_finds_no_possm_brand(tmp_path):
    _, exe = build_module(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([str(exe), "-n", "possm"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 127 and "possm-brand not found: run `make venv`" in out.stderr, out.stderr
    out = subprocess.run([str(exe), "-n", "possm"], env={**env, "POSSM_BRAND": str(tmp_path / "nope")}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 127 and f"POSSM_BRAND={tmp_path / 'nope'} is not an executable file" in out.stderr, out.stderr

