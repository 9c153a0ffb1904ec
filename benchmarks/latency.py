"""Latency benchmark: per-chunk compute of the streaming decoder, and end to end over LSL.

    python benchmarks/latency.py            # table
    python benchmarks/latency.py --json     # one JSON object
    python benchmarks/latency.py --quick --profile --rt-priority 50 --out docs/latency.json   # the docs' figures
    python benchmarks/latency.py --quick    # fewer iterations
    python benchmarks/latency.py --profile  # also: where the step time goes (small GRU, 96 units)
    python benchmarks/latency.py --no-compute --lsl binned --lsl-seconds 60   # the LSL binned headline alone

1. ``chunk_compute_ms``: for each backbone (gru, s4d, mamba) and size (small, opossm via
   ``possm_plugin.model.config.preset``) at 96 and 1024 units firing Poisson spikes at 20 Hz, the time of
   one StreamingDecoder step (batch 1, 50 ms chunks): the model call as the decoder times it (the
   step and its outputs back), p50 and p99 over the timed chunks. ``--engines`` (default
   ``numba,torch``) times each engine on the same model and spikes in the same run: the first is the
   headline (``numba``: :class:`~possm_plugin.engines.numba_step.NumbaEngine`, the decoder's CPU
   default), the others get a column and a ratio (``torch``:
   :class:`~possm_plugin.engines.torch_step.TorchEngine`; ``reference``: ``model.step``).
   ``decoder_ms`` is the whole ``push`` + ``advance`` of a chunk
   (tokenization included). Those chunks run back to back (caches warm); ``paced`` times the
   headline engine again at the real cadence, spikes fed in 1 ms ticks and a chunk every 50 ms, the
   CPU idle (or busy with other work) in between, which is what a live decoder sees: on a shared
   virtual machine a step then costs 2-4x more, because other work has evicted its code and data
   from the caches. ``paced_prewarm`` is the same with the nodes' default ``prewarm`` (a throwaway
   step 1.5 ms before each chunk's end, see ``StreamingDecoder``).
2. ``lsl_end_to_end_ms``: a sender process pushes 96 units x 20 Hz Poisson spikes over LSL in real
   time (1 ms ticks paced by deadlines, as a 1 kHz acquisition system) and logs when each push went
   out; ``possm-lsl`` (small GRU, random weights, its defaults) decodes them in a second process; this
   process receives the predictions. Latency = the push of the last spike of a chunk -> its prediction
   received here. The headline stream is **binned** (a 1 kHz regular-rate stream of counts, one
   channel per unit, every bin sent, as acquisition systems and BRAND's threshold crossings deliver
   them); ``lsl_end_to_end_events_ms`` is the same with **spike events** (an irregular-rate stream,
   one sample per spike, only ticks with a spike pushed). Each is split two ways. At the push that
   tells the node the chunk is complete: ``wait_ms`` (last spike pushed -> that push: binned, the
   push of the chunk's last bin; events, the push of the first spike after the chunk's end, since an
   event stream says nothing while no neuron fires: at 1920 spikes/s a 1 ms tick is empty 15 % of
   the time) and ``node_ms`` (that push -> prediction received, the decoder's and transport's share).
   At the chunk's end: ``before_end_ms`` (last spike pushed -> chunk end, set by the spikes alone:
   the last 2 ms of a chunk hold no spike in about 2 % of chunks) and ``after_end_ms`` (chunk end ->
   prediction received). ``sender_push_interval_ms`` is the time between pushes (binned: every tick,
   so the sender's own jitter; events: ticks with a spike). ``lsl_end_to_end_clock_ms`` runs the
   events form with ``--source-opt clock_lag=auto`` (chunks closed by the clock, see docs/lsl.md).
   ``--rt-priority N`` repeats both forms with the three processes under SCHED_FIFO
   (``lsl_end_to_end_rt_ms``, ``lsl_end_to_end_events_rt_ms``).

Weights are random (latency does not depend on them). CPU threads of torch and BLAS: ``--threads`` (default 1). The
machine's load average is printed: other work on the same cores shows in the p99.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # the benchmarks' shared helpers, when imported from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_util import rt_prefix, run_info, write_json  # noqa: E402

BACKBONES = ("gru", "s4d", "mamba")
SIZES = ("small", "opossm")
UNITS = (96, 1024)
RATE_HZ = 20.0
CHUNK = 0.05
TICK = 0.001  # the LSL sender's push period
PREWARM = 0.0015  # possm-lsl's and possm-brand's default
LSL_RUNS = ("binned", "events", "clock")  # lsl_end_to_end_ms, lsl_end_to_end_events_ms, lsl_end_to_end_clock_ms


def make_model(size: str, backbone: str, n_units: int):
    import torch

    from possm_plugin.model.config import preset
    from possm_plugin.model.possm import POSSM

    torch.manual_seed(0)
    units = [f"bench/u{i:04d}" for i in range(n_units)]
    return POSSM(preset(size, backbone), unit_ids=units, session_ids=["bench"], session_units={"bench": units}).eval()


def poisson(n_units: int, n_chunks: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dur = n_chunks * CHUNK
    n = rng.poisson(n_units * RATE_HZ * dur)
    return rng.integers(0, n_units, n), np.sort(rng.uniform(0.0, dur, n))


def pct(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"p50": round(float(np.percentile(x, 50)), 4), "p99": round(float(np.percentile(x, 99)), 4), "n": int(len(x))}


ENGINES = ("numba", "torch", "reference")
ENGINE_LABEL = {"numba": "NumbaEngine", "torch": "TorchEngine", "reference": "model.step"}


def _decoder(model, engine: str, device: str, prewarm: float | None = None):
    from possm_plugin.realtime.streaming import StreamingDecoder

    if engine == "reference":
        return StreamingDecoder(model, device=device, fast=False, prewarm=prewarm, t0=0.0)
    return StreamingDecoder(model, device=device, engine=engine, prewarm=prewarm, t0=0.0)


def bench_compute(size: str, backbone: str, n_units: int, *, n_chunks: int, warmup: int, device: str = "cpu",
                  engines: tuple[str, ...] = ("numba",), paced: int = 0) -> dict:
    """Per-chunk compute of each engine on the same model and spikes; the first engine is the headline."""
    model = make_model(size, backbone, n_units)
    ch, t = poisson(n_units, n_chunks + warmup)
    edges = np.searchsorted(t, np.arange(n_chunks + warmup + 1) * CHUNK)
    res: dict = {}
    for engine in engines:
        if engine == "numba" and device != "cpu":
            continue
        dec = _decoder(model, engine, device)
        total = []
        for k in range(n_chunks + warmup):
            a, b = edges[k], edges[k + 1]
            s = time.perf_counter()
            dec.push(ch[a:b], t[a:b])
            dec.advance((k + 1) * CHUNK)
            total.append((time.perf_counter() - s) * 1e3)
        res[engine] = {**pct(dec.stats.compute_ms[warmup:]), "decoder_ms": pct(total[warmup:])}
    head = res[next(iter(res))]
    cfg = model.config
    out = {**head, "engine": next(iter(res)), "n_parameters": model.n_parameters(),
           "n_parameters_without_embeddings": model.n_parameters() - model.unit_emb.weight.numel() - model.session_emb.weight.numel(),
           "dim": cfg.dim, "backbone_kwargs": dict(cfg.backbone_kwargs)}
    if len(res) > 1:
        out["engines"] = res
    if paced:  # the headline engine at the real cadence, fed in 1 ms ticks like a live source
        for key, pw in (("paced", None), ("paced_prewarm", PREWARM)):
            dec = _decoder(model, next(iter(res)), device, prewarm=pw)
            n_p = paced + 10
            ch, t = poisson(n_units, n_p, seed=2)
            ticks = np.arange(1, int(round(n_p * CHUNK / TICK)) + 1) * TICK
            edges = np.searchsorted(t, ticks)
            nxt, lo = time.perf_counter(), 0
            for k, wm in enumerate(ticks):
                nxt += TICK
                time.sleep(max(0.0, nxt - time.perf_counter()))
                dec.push(ch[lo:edges[k]], t[lo:edges[k]])
                lo = edges[k]
                dec.advance(float(wm))
            out[key] = pct(dec.stats.compute_ms[10:])
    return out


def profile_step(size: str = "small", backbone: str = "gru", n_units: int = 96, n: int = 300) -> dict:
    """Mean ms of the parts of one decoder step (compiled engine), and of the other engines' steps."""
    import torch

    from possm_plugin.engines import build_engine
    from possm_plugin.model.tokenize import tokenize_one
    from possm_plugin.realtime.streaming import StreamingDecoder

    model = make_model(size, backbone, n_units)
    ch, t = poisson(n_units, n + 20)
    rows = ch + 1
    edges = np.searchsorted(t, np.arange(n + 21) * CHUNK)
    parts = {k: [] for k in ("push", "advance (whole)", "tokenize_one", "NumbaEngine.step", "TorchEngine.step", "model.step")}
    dec = StreamingDecoder(model, t0=0.0)
    engines = [build_engine(model, engine=e, sessions=[1]) for e in ("numba", "torch", "reference")]
    with torch.inference_mode():
        for k in range(n + 20):
            a, b = edges[k], edges[k + 1]
            s0 = time.perf_counter()
            dec.push(ch[a:b], t[a:b])
            s1 = time.perf_counter()
            dec.advance((k + 1) * CHUNK)
            s2 = time.perf_counter()
            units, times, mask, _, _ = tokenize_one(rows[a:b], t[a:b], start=k * CHUNK, end=(k + 1) * CHUNK)
            s3 = time.perf_counter()
            marks = [s0, s1, s2, s3]
            for eng in engines:
                eng.step(units, times, mask)
                marks.append(time.perf_counter())
            if k >= 20:
                for key, dt in zip(parts, np.diff(marks)):
                    parts[key].append(dt * 1e3)
    return {k: round(float(np.mean(v)), 4) for k, v in parts.items()}


# -- LSL end to end ---------------------------------------------------------------------------------
def sender(name: str, duration: float, log_path: str, n_units: int, form: str = "events") -> None:
    """Push Poisson spikes in real time at 1 kHz (deadline-paced 1 ms ticks, as an acquisition system
    sends its packets). ``events``: an irregular-rate stream, one sample per spike ``[unit, 0]``
    stamped with its time. ``binned``: a 1 kHz regular-rate stream, one channel per unit, one sample
    of counts per 1 ms bin stamped with the bin's end, every bin sent (empty ones too). Saves one row
    per push that carried a spike (first spike's timestamp, or for binned the start of the first bin
    with a spike; push time, read as the push starts; the last time the push covers: last spike, or
    end of the last bin) and,
    for binned, every push (``*_all``), which is what says a chunk is complete."""
    import pylsl

    binned = form == "binned"
    if binned:
        info = pylsl.StreamInfo(name, "SpikeCounts", n_units, 1.0 / TICK, "int16", f"bench-{name}")
    else:
        info = pylsl.StreamInfo(name, "Spikes", 2, pylsl.IRREGULAR_RATE, "int16", f"bench-{name}")
    chans = info.desc().append_child("channels")
    for i in range(n_units):
        chans.append_child("channel").append_child_value("label", f"bench/u{i:04d}")
    outlet = pylsl.StreamOutlet(info)
    ch, t = poisson(n_units, int(duration / CHUNK) + 1, seed=1)
    if binned:  # counts per 1 ms bin; a bin's spikes go out at its end
        n_bins = int(np.ceil(t[-1] / TICK)) + 1
        counts = np.zeros((n_bins, n_units), np.int16)
        np.add.at(counts, (np.minimum((t / TICK).astype(np.int64), n_bins - 1), ch), 1)
        has = counts.any(axis=1)
    outlet.wait_for_consumers(60.0)
    time.sleep(1.0)  # let the node finish connecting
    t0 = pylsl.local_clock()
    t = t + t0
    i, k, log, log_all = 0, 0, [], []
    n = n_bins if binned else len(t)
    while i < n:
        now = pylsl.local_clock()
        if binned:
            j = min(n, int((now - t0) / TICK))  # bins that have ended
        else:
            j = int(np.searchsorted(t, now, side="right"))
        if j > i:
            # the push time is read just before the push: read after it, it also holds any time this process
            # waits for the CPU once liblsl's threads (and the node they wake) have taken it, up to a few
            # tenths of a ms on two cores, which came out of the node's share (the node got bins "before" they went out)
            if binned:
                stamps = (t0 + TICK * np.arange(i + 1, j + 1)).tolist()
                pushed = pylsl.local_clock()
                outlet.push_chunk(counts[i:j], stamps)
                log_all.append((t0 + TICK * i, pushed, t0 + TICK * j))
                nz = np.flatnonzero(has[i:j])
                if len(nz):
                    log.append((t0 + TICK * (i + nz[0]), pushed, t0 + TICK * j))
            else:
                x = np.zeros((j - i, 2), np.int16)
                x[:, 0] = ch[i:j]
                stamps = t[i:j].tolist()
                pushed = pylsl.local_clock()
                outlet.push_chunk(x, stamps)
                log.append((t[i], pushed, t[j - 1]))
            i = j
        k = max(k + 1, int((now - t0) / TICK))  # the next 1 ms deadline (skipped ones are not made up)
        time.sleep(max(0.0, t0 + k * TICK - pylsl.local_clock()))
    np.save(log_path, np.asarray(log))
    if binned:
        np.save(str(log_path).replace(".npy", "_all.npy"), np.asarray(log_all))


def split_latency(t_end: np.ndarray, received: np.ndarray, push_log: np.ndarray, close_log: np.ndarray | None = None) -> dict:
    """Where the end-to-end time goes, per chunk, cut two ways. ``wait_ms``, from the push of the chunk's
    last spike to the push that carries the first spike after the chunk's end (what tells a node that
    closes chunks on the data that the chunk is complete), and ``node_ms``, from that push to the
    prediction received (binned: the push of the chunk's last bin, from ``close_log``, every push).
    ``before_end_ms``, from the push of the chunk's last spike to the chunk's end
    (set by the spikes alone), and ``after_end_ms``, from the chunk's end to the prediction received
    (the decoder's share). Sender and receiver share this machine's clock."""
    first, pushed, last = push_log[:, 0], push_log[:, 1], push_log[:, 2]
    i = np.searchsorted(first, t_end, side="left") - 1  # the push with the chunk's last spike
    if close_log is None:  # events: the first push with a spike at or past the chunk's end
        close_pushed, j = pushed, np.searchsorted(last, t_end, side="left")
    else:  # binned: the push with the bin that ends the chunk (bin and chunk edges agree to ~1e-12 s)
        close_pushed, j = close_log[:, 1], np.searchsorted(close_log[:, 2], t_end - 1e-6, side="left")
    ok = (i >= 0) & (j < len(close_pushed))
    closing = close_pushed[np.minimum(j, len(close_pushed) - 1)]
    return {"wait_ms": pct((closing[ok] - pushed[i[ok]]) * 1e3), "node_ms": pct((received[ok] - closing[ok]) * 1e3),
            # the same total cut at the chunk's end instead: before it, the source's share (no decoder can
            # answer before the chunk is over; negative when the last spike went out after the end); after it,
            # the decoder's (closing the chunk, decoding, publishing, transport)
            "before_end_ms": pct((t_end[ok] - pushed[i[ok]]) * 1e3), "after_end_ms": pct((received[ok] - t_end[ok]) * 1e3)}


def bench_lsl(duration: float, *, threads: int, n_units: int = 96, rt_priority: int | None = None,
              node_args: tuple[str, ...] = (), form: str = "events") -> dict:
    import pylsl

    from possm_plugin.model.checkpoint import save_checkpoint
    from possm_plugin.realtime.demo import end_to_end_latency

    tmp = Path(tempfile.mkdtemp(prefix="possm-bench-"))
    cfg = tmp / "lsl_api.cfg"
    cfg.write_text("[multicast]\nResolveScope = machine\n[log]\nlevel = -2\n")
    os.environ.setdefault("LSLAPICFG", str(cfg))  # this process too (liblsl reads it at its first use)
    env = dict(os.environ)
    ck = save_checkpoint(make_model("small", "gru", n_units), tmp / "bench")
    name, out = f"bench-spikes-{os.getpid()}", f"bench-possm-{os.getpid()}"
    log_path = tmp / "push_log.npy"
    procs = []
    rt = rt_prefix(rt_priority)
    if rt:  # this process receives: the same priority as the other two
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(rt_priority)))
    try:
        procs.append(subprocess.Popen([*rt, sys.executable, __file__, "--role", "sender", "--name", name, "--duration", str(duration),
                                       "--log", str(log_path), "--units", str(n_units), "--form", form], env=env))
        procs.append(subprocess.Popen([*rt, sys.executable, "-m", "possm_plugin.cli.lsl_node", "--inlet", name, "--outlet", out,
                                       "--checkpoint", str(ck), "--threads", str(threads), "--log-level", "ERROR",
                                       "--resolve-timeout", "60", *node_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        found = pylsl.resolve_byprop("name", out, 1, 90.0)
        if not found:
            raise RuntimeError("the decoder node did not start")
        inlet = pylsl.StreamInlet(found[0], processing_flags=pylsl.proc_clocksync)
        inlet.time_correction(timeout=5.0)
        inlet.open_stream(timeout=5.0)
        ts, recv = [], []
        while procs[0].poll() is None:
            _, t = inlet.pull_chunk(timeout=0.0005, max_samples=64, min_samples=1, as_numpy=True)
            if len(t):
                now = pylsl.local_clock()
                ts.extend(t.tolist())
                recv.extend([now] * len(t))
    finally:
        if rt:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        for p in procs:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    push_log = np.load(log_path)
    close_log = np.load(tmp / "push_log_all.npy") if form == "binned" else None
    ts, recv = np.asarray(ts), np.asarray(recv)
    keep = ts > push_log[0, 0] + 0.5  # skip the first half second (start-up)
    e2e = end_to_end_latency(ts[keep], recv[keep], push_log)
    e2e = e2e[np.isfinite(e2e)]
    tick = pct(np.diff((push_log if close_log is None else close_log)[:, 1]) * 1e3)
    return {**pct(e2e), **split_latency(ts[keep], recv[keep], push_log, close_log), "sender_push_interval_ms": tick,
            "form": form, "rt_priority": int(rt_priority) if rt else None}


def main(argv: list[str] | None = None) -> int:
    from possm_plugin.cli.formatter import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="PATH", help="write the JSON object into PATH (docs/latency.json renders the docs' latency figures)")
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    p.add_argument("--profile", action="store_true", help="time the parts of one step (small GRU, 96 units)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and BLAS)")
    p.add_argument("--device", default="cpu", help="device of the compute benchmark")
    p.add_argument("--no-lsl", action="store_true", help="skip the LSL end-to-end benchmark")
    p.add_argument("--lsl", default=",".join(LSL_RUNS), metavar="RUNS",
                   help=f"comma list of the LSL end-to-end runs: {', '.join(LSL_RUNS)} (binned: the headline)")
    p.add_argument("--lsl-seconds", type=float, default=None, metavar="S",
                   help="seconds of each LSL end-to-end run (default 30, --quick 8)")
    p.add_argument("--no-compute", action="store_true", help="skip the per-chunk compute benchmark (e.g. --no-compute --lsl binned)")
    p.add_argument("--no-paced", action="store_true", help="skip the compute timed at the real cadence (one chunk per 50 ms)")
    p.add_argument("--rt-priority", type=int, default=None, metavar="N",
                   help="also run the LSL end to end with sender, node and receiver under SCHED_FIFO priority N (as real-time rigs run them)")
    p.add_argument("--engines", default="numba,torch",
                   help="comma list of engines to time, the first is the headline: numba (NumbaEngine, the decoder's CPU default), "
                        "torch (TorchEngine), reference (model.step)")
    p.add_argument("--reference", action="store_true", help="headline model.step (same as --engines reference)")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma list")
    p.add_argument("--sizes", default=",".join(SIZES), help="comma list")
    p.add_argument("--units", default=",".join(map(str, UNITS)), help="comma list")
    p.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    p.add_argument("--form", default="events", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "sender":
        sender(args.name, args.duration, args.log, int(args.units), args.form)
        return 0
    import torch

    from possm_plugin.realtime.threads import set_cpu_threads

    engines = ("reference",) if args.reference else tuple(e for e in args.engines.split(",") if e)
    if not engines or any(e not in ENGINES for e in engines):
        p.error(f"--engines takes a comma list of {', '.join(ENGINES)}")
    if args.device != "cpu" and engines[0] == "numba":
        engines = tuple(e for e in engines if e != "numba") or ("torch",)
    threads = set_cpu_threads(args.threads)
    lsl_runs = tuple(r for r in args.lsl.split(",") if r)
    if any(r not in LSL_RUNS for r in lsl_runs):
        p.error(f"--lsl takes a comma list of {', '.join(LSL_RUNS)}")
    n_chunks, warmup, lsl_s, n_paced = (100, 20, 8.0, 40) if args.quick else (600, 50, 30.0, 100)
    if args.lsl_seconds is not None:
        lsl_s = float(args.lsl_seconds)
    result: dict = {**run_info("benchmarks/latency.py", argv), "device": args.device, "threads": args.threads, "blas": threads["blas"], "torch": torch.__version__,
                    "numpy": np.__version__, "step": ENGINE_LABEL[engines[0]], "engines": list(engines),
                    "load_average": [round(x, 2) for x in os.getloadavg()], "chunk_compute_ms": {}}
    for size in () if args.no_compute else args.sizes.split(","):
        for bb in args.backbones.split(","):
            for u in map(int, args.units.split(",")):
                r = bench_compute(size, bb, u, n_chunks=n_chunks, warmup=warmup, device=args.device, engines=engines,
                                  paced=0 if args.no_paced else n_paced)
                result["chunk_compute_ms"][f"{bb}-{size}-{u}u"] = r
                if not args.json:
                    print(f"  {bb:6s} {size:7s} {u:5d} units: " + "  ".join(
                        f"{e} p50 {v['p50']:.3f} p99 {v['p99']:.3f} ms" for e, v in r.get("engines", {r['engine']: r}).items()), file=sys.stderr)
    if args.profile:
        result["profile_small_gru_96u_ms"] = profile_step()
    if not args.no_lsl:  # the node's defaults throughout; chunks closed by the data
        if "binned" in lsl_runs:
            result["lsl_end_to_end_ms"] = bench_lsl(lsl_s, threads=args.threads, form="binned")
        if "events" in lsl_runs:
            result["lsl_end_to_end_events_ms"] = bench_lsl(lsl_s, threads=args.threads, form="events")
        if "clock" in lsl_runs:
            result["lsl_end_to_end_clock_ms"] = bench_lsl(lsl_s, threads=args.threads, form="events",
                                                          node_args=("--source-opt", "clock_lag=auto"))
        if args.rt_priority:
            for form, key in (("binned", "lsl_end_to_end_rt_ms"), ("events", "lsl_end_to_end_events_rt_ms")):
                if form in lsl_runs:
                    result[key] = bench_lsl(lsl_s, threads=args.threads, rt_priority=args.rt_priority, form=form)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json or args.out:
        write_json(result, args.out)
    if not args.json:
        print(table(result))
    return 0


def table(r: dict) -> str:
    others = [e for e in r.get("engines", []) if e != r["engines"][0]] if r.get("engines") else []
    lines = [f"per-chunk compute ({r.get('step', 'NumbaEngine')}), batch 1, {r['device']}, {r['threads']} thread(s), torch {r['torch']}, "
             f"numpy {r.get('numpy', '?')} (load average {r['load_average']} before, {r.get('load_average_after', '?')} after)",
             f"{'model':22s} {'params':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'push+advance p50':>17s} {'paced p50/p99':>14s} {'+prewarm':>12s}"
             + "".join(f" {e + ' p50':>15s} {'ratio':>6s}" for e in others)]
    for key, v in r["chunk_compute_ms"].items():
        pc = f"{v['paced']['p50']:.3f}/{v['paced']['p99']:.3f}" if v.get("paced") else "-"
        pw = f"{v['paced_prewarm']['p50']:.3f}/{v['paced_prewarm']['p99']:.3f}" if v.get("paced_prewarm") else "-"
        line = f"{key:22s} {v['n_parameters']:>10,d} {v['p50']:8.3f} {v['p99']:8.3f} {v['decoder_ms']['p50']:17.3f} {pc:>14s} {pw:>12s}"
        for e in others:
            o = v.get("engines", {}).get(e)
            line += f" {o['p50']:15.3f} {o['p50'] / v['p50']:5.1f}x" if o else f" {'-':>15s} {'':>6s}"
        lines.append(line)
    for key, what in (("lsl_end_to_end_ms", "binned 1 kHz counts"), ("lsl_end_to_end_events_ms", "spike events")):
        if key not in r:
            continue
        e = r[key]
        lines.append(f"LSL end to end ({what}; last spike pushed -> prediction received, small GRU, 96 units x 20 Hz, node defaults): "
                     f"p50 {e['p50']:.3f} ms, p99 {e['p99']:.3f} ms (n={e['n']}); waiting for the push that completes the chunk "
                     f"p50 {e['wait_ms']['p50']:.3f} / p99 {e['wait_ms']['p99']:.3f} ms, that push -> prediction received p50 "
                     f"{e['node_ms']['p50']:.3f} / p99 {e['node_ms']['p99']:.3f} ms. Cut at the chunk end instead: last spike "
                     f"pushed -> chunk end p50 {e['before_end_ms']['p50']:.3f} / p99 {e['before_end_ms']['p99']:.3f} ms (the spikes' "
                     f"share), chunk end -> prediction received p50 {e['after_end_ms']['p50']:.3f} / p99 {e['after_end_ms']['p99']:.3f} ms "
                     f"(pushes {e['sender_push_interval_ms']['p50']:.2f} ms apart, p99 {e['sender_push_interval_ms']['p99']:.2f})")
    if "lsl_end_to_end_clock_ms" in r:
        e = r["lsl_end_to_end_clock_ms"]
        lines.append(f"LSL end to end, spike events, chunks closed by the clock (clock_lag=auto): p50 {e['p50']:.3f} ms, p99 {e['p99']:.3f} ms "
                     f"(n={e['n']}); chunk end -> prediction received p50 {e['after_end_ms']['p50']:.3f} / p99 "
                     f"{e['after_end_ms']['p99']:.3f} ms")
    for key in ("lsl_end_to_end_rt_ms", "lsl_end_to_end_events_rt_ms"):
        if r.get(key):
            e = r[key]
            how = f"SCHED_FIFO {e['rt_priority']}" if e.get("rt_priority") else "real-time priority not permitted: normal"
            lines.append(f"LSL end to end, {e['form']}, the three processes at {how}: p50 {e['p50']:.3f} ms, p99 {e['p99']:.3f} ms (n={e['n']})")
    if "profile_small_gru_96u_ms" in r:
        lines.append("where a step goes (small GRU, 96 units, mean ms): " + ", ".join(f"{k} {v:.3f}" for k, v in r["profile_small_gru_96u_ms"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
