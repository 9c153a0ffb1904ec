"""Run the POSSM node of ``possm_graph.yaml`` the way BRAND's supervisor would, without BRAND.

This script plays the supervisor and the upstream nodes: it starts a redis-server (or uses ``--port``),
publishes the graph's supergraph to ``supergraph_stream`` (with ``checkpoint`` and ``n_channels`` set
for the checkpoint you give), starts ``possm-brand -n possm -i 127.0.0.1 -p PORT`` exactly as BRAND
starts a node, streams 1 ms threshold crossings into ``threshold_values`` in real time, and reads the
node's ``possm`` stream.

The crossings come from the package's motor-cortex simulator when the checkpoint's session is a
simulated one (``sim-<subject>-seed<seed>-s<index>``, or the older ``sim-<subject>-s<index>``): then the decoded velocity
is compared with the true one. Otherwise they are Poisson noise (and only the timing means something).

Without ``--checkpoint`` the node runs with the graph's parameters exactly as written (the bundled
checkpoint, 102 channels); with one, ``checkpoint`` and ``n_channels`` are set for it.

Every run is a new run, also on a Redis that already holds streams (``--port``): the script reads only
the entries written after it started (``possm_state``, ``possm``), leaves earlier runs' entries where
they are, and starts the node with ``resume: false`` so that it never replays an earlier run's input.
Two runs with the same arguments give the same predictions on an empty Redis and on a used one.

    python examples/brand/run_without_brand.py --seconds 20 [--checkpoint runs/best.yaml] [--port 6379]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import yaml

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supergraph(graph: dict, overrides: dict, port: int) -> dict:
    """The supergraph BRAND's supervisor publishes for a graph YAML (nodes keyed by nickname)."""
    nodes = {}
    for n in graph["nodes"]:
        if n["nickname"] != "possm":
            continue  # this script plays the other nodes itself
        params = dict(n.get("parameters") or {})
        params.update(overrides)
        nodes[n["nickname"]] = {**n, "parameters": params, "binary": shutil.which("possm-brand")}
    return {"redis_host": "127.0.0.1", "redis_port": port, "graph_name": graph["graph_name"], "graph_loaded_ts": time.monotonic_ns(), "nodes": nodes}


def crossings_source(checkpoint: str | None, seconds: float, seed: int):
    """(unit count, (T, U) int8 crossings per ms, true velocity per ms or None)."""
    from possm_plugin.model.checkpoint import read_checkpoint_config

    doc = read_checkpoint_config(checkpoint)
    session = doc.get("default_session") or doc["session_ids"][0]
    units = doc["session_units"][session]
    n_ms = int(seconds * 1000)
    from possm_plugin.sim import parse_sim_session_id

    m = parse_sim_session_id(session)
    if m and m["task"] == "motor":
        from possm_plugin.sim.motor import simulate_motor_session

        seed = seed if m["seed"] is None else m["seed"]  # seedless (older) ids: the seed given here
        s = simulate_motor_session(m["index"], seed=seed, subject=m["subject"], duration_s=max(seconds + 1, 5), id_prefix=m["id_prefix"])
        if s.unit_ids == list(units):
            x = np.zeros((n_ms, len(units)), np.int8)
            k = (s.spike_times * 1000).astype(np.int64)
            ok = k < n_ms
            np.add.at(x, (k[ok], s.spike_units[ok]), 1)
            vel = np.stack([np.interp(np.arange(n_ms) / 1000, s.target_times, s.targets[:, j]) for j in range(2)], axis=1)
            return len(units), x, vel
    rng = np.random.default_rng(seed)
    return len(units), (rng.random((n_ms, len(units))) < 0.02).astype(np.int8), None


def last_id(r: redis.Redis, stream: str) -> str:
    """Id of the newest entry of ``stream`` ("0-0" when it is empty or missing)."""
    newest = r.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def entries_after(r: redis.Redis, stream: str, after: str) -> list:
    """The entries of ``stream`` written after the entry ``after`` (exclusive range, Redis >= 6.2)."""
    return r.xrange(stream, min=f"({after}")


def build_parser() -> argparse.ArgumentParser:
    paras = __doc__.split("\n\n")
    new_run = next(t for t in paras if t.startswith("Every run is a new run"))
    ap = argparse.ArgumentParser(description=f"{paras[0]}\n\n{new_run}".replace("``", ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None,
                    help="checkpoint to decode with; sets the graph's checkpoint and n_channels for it (default: the graph's, the bundled one)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of crossings to stream (default: 20)")
    ap.add_argument("--seed", type=int, default=0, help="simulator seed, as given to possm simulate (default: 0)")
    ap.add_argument("--port", type=int, default=None,
                    help="use the redis-server on this port instead of starting one; entries of earlier runs are left "
                         "in place and ignored: only entries written after this run started are read")
    ap.add_argument("--save", default=None, metavar="FILE.npz",
                    help="also write this run's predictions (pred: N x outputs, t_end: N) to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    n_units, x, vel = crossings_source(args.checkpoint, args.seconds, args.seed)
    work = Path(tempfile.mkdtemp(prefix="possm-brand-example-"))
    procs = []
    try:
        port = args.port or free_port()
        if not args.port:
            procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
                                          stdout=subprocess.DEVNULL))
            time.sleep(0.3)
        r = redis.Redis(port=port)
        graph = yaml.safe_load((HERE / "possm_graph.yaml").read_text())
        # a new run: never resume an earlier run's input (see the module docstring)
        overrides = {"resume": False}
        if args.checkpoint is not None:
            overrides.update(checkpoint=args.checkpoint, n_channels=n_units)
        state0, out0 = last_id(r, "possm_state"), last_id(r, "possm")
        r.xadd("supergraph_stream", {"data": json.dumps(supergraph(graph, overrides, port))})
        node = subprocess.Popen(["possm-brand", "-n", "possm", "-i", "127.0.0.1", "-p", str(port)])
        procs.append(node)
        while True:
            status = [f[b"status"] for _, f in entries_after(r, "possm_state", state0)]
            if b"error" in status or node.poll() is not None:
                return 1
            if b"running" in status:
                break
            time.sleep(0.05)
        print(f"streaming {args.seconds:g} s of crossings on {n_units} channels to threshold_values ...")
        t_next = time.monotonic()
        for n, row in enumerate(x):
            t_next += 1e-3
            time.sleep(max(0.0, t_next - time.monotonic()))
            r.xadd("threshold_values", {"thresholds": row.tobytes(), "ts": np.uint64(time.monotonic_ns()).tobytes(),
                                        "i": np.uint64(n).tobytes(), "sync": json.dumps({"i": n})})
        time.sleep(0.2)
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)
        out = entries_after(r, "possm", out0)
        if not out:
            print("no predictions came back", file=sys.stderr)
            return 1
        pred = np.stack([np.frombuffer(f[b"samples"], np.float32) for _, f in out])
        t_end = np.array([np.frombuffer(f[b"t_end"], np.float64)[0] for _, f in out])
        lat = [(int(np.frombuffer(f[b"ts"], np.uint64)[0]) - int(np.frombuffer(f[b"ts_in"], np.uint64)[0])) * 1e-6 for _, f in out]
        print(f"{len(out)} predictions (one per 50 ms chunk); crossing pushed -> prediction written: "
              f"p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms")
        if vel is not None:
            true = vel[np.clip((t_end * 1000).astype(int) - 1, 0, len(vel) - 1)]
            r2 = 1 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)
            print(f"R2 of the decoded velocity against the simulator's: vx {r2[0]:.2f}, vy {r2[1]:.2f}")
        if args.save:
            np.savez(args.save, pred=pred, t_end=t_end)
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
