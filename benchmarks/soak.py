"""Load and soak: N streams decoded in real time by one process, through one StreamingDecoder.

    python benchmarks/soak.py                    # 8 and 32 streams, 60 s each, a table
    python benchmarks/soak.py --quick --json     # 8 and 32 streams, 10 s each (~20 s), one JSON object per run
    python benchmarks/soak.py --quick --out docs/soak.json   # the same runs in one JSON object: the docs' figures
    python benchmarks/soak.py --streams 4,16,64 --duration 300

Each run: ``N`` streams of Poisson spikes (``--units`` 96 units x ``--rate`` 20 Hz each) are generated
in real time on one clock; every ``--tick`` (10 ms, a source delivering in 10 ms packets) each stream's
new spikes are pushed and every stream's watermark advanced to now with one ``advance_many`` call, so
the chunks that completed are decoded in one batched model step (``StreamingDecoder(n_streams=N)``).

Reported per run:

- ``chunks_in``: chunks whose end the final watermark passed, counted from each stream's chunk grid
  (``floor((watermark - t0 - width) / step) + 1`` per stream); ``chunks_decoded``: predictions
  returned; ``chunks_dropped``: chunks the decoder skipped (a stall longer than ``max_gap``, counted in
  ``chunks_skipped``). ``accounting_exact``: ``chunks_in == chunks_decoded + chunks_dropped``.
- ``latency_ms``: chunk end (on the source clock) -> its prediction returned by ``advance_many``, p50
  / p99 / max; it includes up to one tick of waiting for the packet that completes the chunk.
  ``compute_ms``: the batched model step alone (the decoder's own timing).
- ``deadline_misses``: chunks whose prediction came more than ``--deadline-ms`` (50) after their end.
- ``rss_growth_mb``: VmRSS (``/proc/self/status``) at the end minus after the first ``--settle``
  seconds (default: a quarter of the run, at most 30 s: allocator and caches warmed up);
  ``rss_start_mb``/``rss_end_mb`` are the two readings, ``rss_trace_mb`` one reading every 10 s
  (growth or a plateau), ``rss_end_after_malloc_trim_mb`` the end after glibc's ``malloc_trim``
  (RSS that was free heap, not memory in use, goes away).

The model: the checkpoint bundled with the package (``possm_plugin/assets/default.yaml``) when it
exists, else a random small POSSM (D=64, GRU 256 x 1, ``model`` says which); the weights do not change
the cost. Runs on one torch thread (``--threads``). The machine's load average is printed: other work
on the same cores shows in the p99 and in deadline misses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # the benchmarks' shared helpers, when imported from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_util import run_info, write_json  # noqa: E402


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the OS (glibc), so RSS shows what is in use."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def load_model(checkpoint: str | None, n_units: int):
    """(model, session, unit_ids, description)."""
    import torch

    from possm_plugin.model.checkpoint import default_checkpoint, load_checkpoint
    from possm_plugin.model.config import preset
    from possm_plugin.model.possm import POSSM

    path = Path(checkpoint) if checkpoint else default_checkpoint()
    if checkpoint or path.is_file():
        model, doc = load_checkpoint(path)
        session = doc.get("default_session") or model.session_vocab.ids[0]
        units = list(model.session_units[session])
        what = f"checkpoint {path}" if checkpoint else "the bundled checkpoint"
        return model, session, units, f"{what} (session {session}, {len(units)} units, {model.n_parameters():,} parameters)"
    torch.manual_seed(0)
    units = [f"soak/u{i:03d}" for i in range(n_units)]
    model = POSSM(preset("small", "gru", target_scale=20.0), unit_ids=units, session_ids=["soak"], session_units={"soak": units}).eval()
    return model, "soak", units, f"random small POSSM (D=64, GRU 256 x 1, {model.n_parameters()} parameters; no bundled checkpoint)"


def run_once(model, session: str, unit_ids: list[str], *, n_streams: int, duration: float, rate: float, tick: float,
             deadline_ms: float, settle: float, seed: int, device: str) -> dict:
    import gc

    import torch

    from possm_plugin.realtime.streaming import StreamingDecoder

    gc.collect()
    malloc_trim()  # start each run from a compact heap
    dec = StreamingDecoder(model, session=session, unit_ids=unit_ids, n_streams=n_streams, device=device)
    n_units = len(unit_ids)
    rng = np.random.default_rng(seed)
    # warm the batched step up on a throwaway state (the first torch calls are slow)
    state = model.initial_state(n_streams, device=dec.device)
    with torch.inference_mode():
        for _ in range(5):
            z = torch.zeros(n_streams, 1, dtype=torch.long, device=dec.device)
            _, state = model.step(z, torch.zeros(n_streams, 1, device=dec.device), torch.ones(n_streams, 1, dtype=torch.bool, device=dec.device),
                                  torch.zeros(n_streams, dtype=torch.long, device=dec.device), state)
    # preallocated, so that the benchmark's own bookkeeping does not show up as memory growth
    latencies = np.empty(int(n_streams * (duration / dec.chunk_step + 20)), np.float64)
    n_lat = 0
    misses = 0
    rss_start = None
    trace: list[float] = []
    t_origin = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t_origin

    last = 0.0
    dec.advance_many({s: 0.0 for s in range(n_streams)})  # every grid starts at 0 on the source clock
    next_tick = tick
    while True:
        now = clock()
        if now < next_tick:
            time.sleep(next_tick - now)
            now = clock()
        next_tick += tick
        if next_tick < now:  # fell behind: do not try to catch up tick by tick
            next_tick = now + tick
        end = min(now, duration)
        dt = end - last
        for s in range(n_streams):  # the spikes of each stream since the last packet
            k = int(rng.poisson(n_units * rate * dt))
            if k:
                dec.push(rng.integers(0, n_units, k), np.sort(rng.uniform(last, end, k)), stream=s)
        last = end
        preds = dec.advance_many({s: end for s in range(n_streams)})
        done = clock()
        for p in preds:
            ms = (done - p.t_end) * 1e3
            if n_lat == len(latencies):
                latencies = np.concatenate([latencies, np.empty_like(latencies)])
            latencies[n_lat] = ms
            n_lat += 1
            misses += ms > deadline_ms
        if rss_start is None and end >= settle:
            rss_start = vm_rss_mb()
        if end >= len(trace) * 10.0:  # one reading every 10 s of the run: growth or a plateau?
            trace.append(round(vm_rss_mb(), 1))
        if end >= duration:
            break
    rss_end = vm_rss_mb()
    import gc

    gc.collect()
    trimmed = vm_rss_mb() if malloc_trim() else None
    wm = last
    step, width = dec.chunk_step, dec.chunk_width
    chunks_in = sum(int(math.floor((wm - dec.t0(s) - width) / step + 1e-9)) + 1 for s in range(n_streams))
    st = dec.stats
    lat = latencies[:n_lat]
    comp = np.asarray(st.compute_ms)
    return {
        "streams": n_streams,
        "duration_s": duration,
        "units_per_stream": n_units,
        "rate_hz": rate,
        "chunks_in": chunks_in,
        "chunks_decoded": st.chunks_decoded,
        "chunks_dropped": st.chunks_skipped,
        "accounting_exact": chunks_in == st.chunks_decoded + st.chunks_skipped,
        "deadline_misses": int(misses),
        "deadline_ms": deadline_ms,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3),
                       "max": round(float(lat.max()), 3)} if len(lat) else None,
        "compute_ms": {"p50": round(float(np.percentile(comp, 50)), 3), "p99": round(float(np.percentile(comp, 99)), 3),
                       "steps": len(comp)} if len(comp) else None,
        "spikes_in": st.spikes_in,
        "spikes_dropped": st.spikes_dropped,
        "rss_start_mb": round(rss_start if rss_start is not None else rss_end, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - (rss_start if rss_start is not None else rss_end), 1),
        "rss_trace_mb": trace,
        "rss_end_after_malloc_trim_mb": None if trimmed is None else round(trimmed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from possm_plugin.cli.formatter import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--streams", default="8,32", help="comma-separated stream counts, one run each")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 60; --quick: 10)")
    p.add_argument("--quick", action="store_true", help="10 s per run")
    p.add_argument("--json", action="store_true", help="print one JSON object per run")
    p.add_argument("--out", metavar="PATH", help="write the runs into PATH as one JSON object (docs/soak.json renders the docs' soak figures)")
    p.add_argument("--units", type=int, default=96, help="units per stream (random model only)")
    p.add_argument("--rate", type=float, default=20.0, help="firing rate per unit, Hz")
    p.add_argument("--tick", type=float, default=0.01, help="packet interval of the simulated sources, s")
    p.add_argument("--deadline-ms", type=float, default=50.0, help="a chunk decoded later than this after its end is a miss")
    p.add_argument("--settle", type=float, default=None, help="seconds before the first memory reading (default: 25%% of the run, at most 30)")
    p.add_argument("--checkpoint", default=None, help="checkpoint to decode with (default: the bundled one, else a random small model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and BLAS)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from possm_plugin.realtime.threads import set_cpu_threads

    set_cpu_threads(args.threads)  # torch and BLAS
    duration = args.duration if args.duration is not None else (10.0 if args.quick else 60.0)
    settle = args.settle if args.settle is not None else min(30.0, 0.25 * duration)
    model, session, units, what = load_model(args.checkpoint, args.units)
    streams = [int(s) for s in str(args.streams).split(",") if s.strip()]
    if not args.json:
        print(f"model: {what}; device {args.device}, {args.threads} torch thread(s); load average {os.getloadavg()[0]:.2f}")
        print(f"{'streams':>7} {'in':>7} {'decoded':>8} {'dropped':>8} {'misses':>7} {'lat p50':>8} {'lat p99':>8} "
              f"{'step p50':>9} {'step p99':>9} {'rss +MB':>8} exact")
    runs = []
    for k, n in enumerate(streams):
        r = run_once(model, session, units, n_streams=n, duration=duration, rate=args.rate, tick=args.tick,
                     deadline_ms=args.deadline_ms, settle=settle, seed=args.seed + k, device=args.device)
        r.update(model=what, device=args.device, threads=args.threads, load_average=round(os.getloadavg()[0], 2))
        runs.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            lat, comp = r["latency_ms"] or {}, r["compute_ms"] or {}
            print(f"{n:>7} {r['chunks_in']:>7} {r['chunks_decoded']:>8} {r['chunks_dropped']:>8} {r['deadline_misses']:>7} "
                  f"{lat.get('p50', float('nan')):>8.2f} {lat.get('p99', float('nan')):>8.2f} {comp.get('p50', float('nan')):>9.2f} "
                  f"{comp.get('p99', float('nan')):>9.2f} {r['rss_growth_mb']:>8.1f} {r['accounting_exact']}", flush=True)
        if not r["accounting_exact"]:
            print(f"soak: chunk accounting broken: in {r['chunks_in']} != decoded {r['chunks_decoded']} + dropped {r['chunks_dropped']}",
                  file=sys.stderr)
            return 1
    if args.out:
        write_json({**run_info("benchmarks/soak.py", argv), "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
