"""BRAND latency: 1 ms threshold-crossing entries pushed to Redis by one process -> POSSM output entry.

Three processes on one machine, as in a BRAND graph:

- a producer pushes one ``crossings`` entry (int16 x channels, Poisson spikes) per millisecond to
  ``thresh_cross``, each stamped with ``ts`` = ``time.monotonic_ns()`` when pushed;
- the node, ``possm-brand`` (the installed console script), decodes them;
- this process reads the node's output stream with a blocking XREAD.

Measured as BRAND measures, by differences of ``ts`` along the chain:

- ``node``: output ``ts`` (stamped by the node when it writes) minus the ``ts`` of the input entry that
  completed the chunk (the node passes it through as ``ts_in``): push -> prediction written;
- ``received``: this process's ``monotonic_ns()`` when XREAD returned the output, minus the same input
  ``ts``: push -> prediction received by another process.

A redis-server is started on a free loopback port (no persistence) unless ``--port`` is given. The model
is the bundled checkpoint when it exists, else (or with ``--model small|tiny``) a randomly initialised one
with ``--channels`` units: latency depends on the model's size, not its weights.

Usage::

    python benchmarks/brand_latency.py            # >= 2000 chunks (100 s)
    python benchmarks/brand_latency.py --quick    # 200 chunks
    python benchmarks/brand_latency.py --json
    python benchmarks/brand_latency.py --out docs/brand-latency.json   # the docs' figures
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # the benchmarks' shared helpers, when imported from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_util import rt_prefix, run_info, write_json  # noqa: E402

ENTRIES_PER_CHUNK = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, workdir: Path, prefix: list[str], unixsocket: str | None) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    extra = ["--unixsocket", unixsocket, "--unixsocketperm", "700"] if unixsocket else []
    proc = subprocess.Popen(
        [*prefix, exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--loglevel", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    c = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(250):
        try:
            if c.ping():
                return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    sys.exit(f"redis-server did not start on port {port}")


def make_checkpoint(kind: str, n_units: int, workdir: Path) -> tuple[str | None, int, str]:
    """(checkpoint path or None for the bundled one, number of channels, what the model is)."""
    from possm_plugin.model.checkpoint import default_checkpoint, read_checkpoint_config, save_checkpoint

    if kind == "default":
        if default_checkpoint().is_file():
            doc = read_checkpoint_config(None)
            sess = doc.get("default_session") or doc["session_ids"][0]
            return None, len(doc["session_units"][sess]), "bundled default checkpoint"
        kind = "small"
    import torch

    from possm_plugin.model.config import preset
    from possm_plugin.model.possm import POSSM

    torch.manual_seed(0)
    units = [f"bench/u{i:03d}" for i in range(n_units)]
    over = {"target_scale": 20.0}
    if kind == "tiny":
        over.update(dim=32, dim_head=32, backbone_kwargs={"hidden": 48, "layers": 1})
    cfg = preset("small", "gru", **over)
    model = POSSM(cfg, unit_ids=units, session_ids=["bench"], session_units={"bench": units}).eval()
    what = f"{kind} GRU POSSM, {model.n_parameters() / 1e6:.2f}M parameters, random weights"
    return str(save_checkpoint(model, workdir / f"bench-{kind}")), n_units, what


PRODUCER = r"""
import json, sys, time
import numpy as np, redis
port, n_ch, n_entries, rate_hz, seed, sock = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
r = redis.Redis(unix_socket_path=sock) if sock else redis.Redis(port=port)
rng = np.random.default_rng(seed)
spikes = (rng.random((n_entries, n_ch)) < rate_hz * 1e-3).astype(np.int16)
period = 1_000_000  # ns
t_next = time.monotonic_ns() + 20 * period
for n in range(n_entries):
    now = time.monotonic_ns()
    if t_next - now > 150_000:
        time.sleep((t_next - now - 100_000) * 1e-9)
    while time.monotonic_ns() < t_next:
        pass
    r.xadd("thresh_cross", {"crossings": spikes[n].tobytes(), "ts": np.uint64(time.monotonic_ns()).tobytes(),
                            "i": np.uint64(n).tobytes(), "sync": json.dumps({"nsp_idx_1": n * 30})}, maxlen=10000, approximate=True)
    t_next += period
"""


def pct(a: np.ndarray) -> dict:
    return {"n": int(len(a)), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    import redis

    n_chunks = args.chunks or (200 if args.quick else 2000)
    n_entries = n_chunks * ENTRIES_PER_CHUNK
    work = Path(tempfile.mkdtemp(prefix="possm-brand-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        port = args.port or free_port()
        rt = rt_prefix(args.rt_priority)
        sock = str(work / "redis.sock") if args.unix_socket and not args.port else None
        if not args.port:
            procs.append(start_redis(port, work, rt, sock))
        r = redis.Redis(unix_socket_path=sock) if sock else redis.Redis(port=port)
        for key in ("thresh_cross", "possm_bench", "possm_state", "supergraph_stream"):
            r.delete(key)
        ckpt, n_ch, model_desc = make_checkpoint(args.model, args.channels, work)
        params = {"input_stream": "thresh_cross", "n_channels": n_ch, "output_stream": "possm_bench", "device": args.device, "log": "WARNING",
                  "prewarm_ms": args.prewarm_ms}
        if ckpt:
            params["checkpoint"] = ckpt
        r.xadd("supergraph_stream", {"data": json.dumps({"graph_name": "bench", "nodes": {"possm": {"nickname": "possm", "parameters": params}}})})
        exe = shutil.which("possm-brand")
        node_cmd = [exe] if exe else [sys.executable, "-m", "possm_plugin.adapters.brand"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        where = ["-s", sock] if sock else []
        node = subprocess.Popen([*rt, *node_cmd, "-n", "possm", "-i", "127.0.0.1", "-p", str(port), *where], env=env, stderr=subprocess.PIPE)
        procs.append(node)
        deadline = time.monotonic() + 120
        while not any(f[b"status"] == b"running" for _, f in r.xrange("possm_state")):
            if node.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"possm-brand did not start: {node.stderr.read().decode() if node.stderr else ''}")
            time.sleep(0.05)
        producer = subprocess.Popen([*rt, sys.executable, "-c", PRODUCER, str(port), str(n_ch), str(n_entries), str(args.rate), "0", sock or ""])
        procs.append(producer)
        node_ms, recv_ms = [], []
        last = "0-0"
        deadline = time.monotonic() + n_entries * 1e-3 * 3 + 60
        while len(node_ms) < n_chunks and time.monotonic() < deadline:
            resp = r.xread({"possm_bench": last}, count=100, block=200)
            t_recv = time.monotonic_ns()
            if not resp:
                if producer.poll() not in (None, 0):
                    raise SystemExit("the producer failed")
                continue
            for eid, f in resp[0][1]:
                last = eid
                ts_in = int(np.frombuffer(f[b"ts_in"], np.uint64)[0])
                ts_out = int(np.frombuffer(f[b"ts"], np.uint64)[0])
                node_ms.append((ts_out - ts_in) * 1e-6)
                recv_ms.append((t_recv - ts_in) * 1e-6)
        producer.wait(timeout=60)
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)
        state = r.xrevrange("possm_state", count=1)[0][1]
        stats = json.loads(state[b"stats"]) if b"stats" in state else {}
        warm = min(5, len(node_ms) // 10)  # the first chunks warm up caches
        out = {
            "benchmark": "brand_latency",
            **run_info("benchmarks/brand_latency.py", argv),
            "chunks": len(node_ms) - warm,
            "chunks_expected": n_chunks,
            "channels": n_ch,
            "model": model_desc,
            "spike_rate_hz": args.rate,
            "device": args.device,
            "node_ms": pct(np.asarray(node_ms[warm:])),
            "received_ms": pct(np.asarray(recv_ms[warm:])),
            "compute_ms": stats.get("decoder", {}).get("compute_ms"),
            "node_read_to_write_ms": stats.get("read_to_write_ms"),
            "node_outputs": stats.get("outputs"),
            "malformed": stats.get("input", {}).get("malformed_total"),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "rt_priority": args.rt_priority if rt else None,
            "transport": "unix socket" if sock else "TCP loopback",
            "target_p99_ms": 2.0,
        }
        return out
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from possm_plugin.cli.formatter import HelpFormatter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 chunks instead of 2000")
    ap.add_argument("--chunks", type=int, default=None, help="number of 50 ms chunks (overrides --quick)")
    ap.add_argument("--model", choices=["default", "small", "tiny"], default="default",
                    help="default: the bundled checkpoint if present, else 'small' (the paper's single-session size, random weights)")
    ap.add_argument("--channels", type=int, default=96, help="channels of a generated model")
    ap.add_argument("--rate", type=float, default=20.0, help="mean crossing rate per channel, Hz")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prewarm-ms", type=float, default=1.5, help="the node's prewarm_ms parameter (0: off)")
    ap.add_argument("--port", type=int, default=None, help="use the redis-server already on this port")
    ap.add_argument("--rt-priority", type=int, default=None, metavar="N",
                    help="run redis-server, the node and the producer with SCHED_FIFO priority N (chrt -f N), as BRAND's "
                         "supervisor runs nodes with run_priority; needs the permission to")
    ap.add_argument("--unix-socket", action="store_true", help="connect everything through a unix socket (BRAND's -s) instead of TCP")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--out", metavar="PATH", help="write the JSON object into PATH (docs/brand-latency.json renders the docs' BRAND latency)")
    args = ap.parse_args(argv)
    res = run(args, argv)
    if args.json or args.out:
        write_json(res, args.out)
    if args.json:
        return 0
    n, rcv = res["node_ms"], res["received_ms"]
    print(f"BRAND latency, {res['chunks']} chunks of 50 ms, {res['channels']} channels at {res['spike_rate_hz']:g} Hz, "
          f"model: {res['model']}, {res['device']}, {res['transport']}")
    print(f"  push -> output written (ts_out - ts_in): p50 {n['p50']:.3f} ms  p99 {n['p99']:.3f} ms  max {n['max']:.3f} ms")
    print(f"  push -> output received by a reader:     p50 {rcv['p50']:.3f} ms  p99 {rcv['p99']:.3f} ms  max {rcv['max']:.3f} ms")
    if res.get("compute_ms"):
        c = res["compute_ms"]
        print(f"  model compute per chunk:                 p50 {c['p50']:.3f} ms  p99 {c['p99']:.3f} ms")
    if res.get("node_read_to_write_ms"):
        w = res["node_read_to_write_ms"]
        print(f"  node: entry read -> output written:      p50 {w['p50']:.3f} ms  p99 {w['p99']:.3f} ms")
    rtp = f", SCHED_FIFO {res['rt_priority']}" if res.get("rt_priority") else ""
    m = res["machine"]
    print(f"  target p99 <= {res['target_p99_ms']} ms; machine: {m['cpu']}, {m['cores']} cores, {m['python']}, "
          f"load average {res['load_average_1min']}{rtp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
