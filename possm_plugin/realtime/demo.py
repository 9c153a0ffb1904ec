"""The live demo (``possm demo``): a simulated array, the LSL decoder node and a consumer.

Three parts on this machine:

1. the simulated source, a process (:mod:`possm_plugin.sim.lsl`): session 0 of seed 0, subject m0 -
   the default checkpoint's default session ``sim-m0-s000``, so its units are known (the source is
   told to name it so, :func:`sim_id_prefix`) - streamed in real time from a time segment the
   checkpoint was not trained on, with the true velocity as a second stream;
2. the decoder node, a process: ``possm-lsl --inlet spikes --telemetry`` (the console script, or
   ``python -m possm_plugin.cli.lsl_node`` when it is not on PATH);
3. a consumer in this process reading the decoder's outlet, its telemetry and the true velocity.

After ``duration`` seconds of decoding it stops the node (SIGTERM: it prints its summary) and the
source, then reports the R2 of the live decode against the true velocity (each prediction compared
with the velocity interpolated at its chunk's end, the time it is stamped with), the latencies
(model compute per chunk from the telemetry; end to end = the last spike of a chunk pushed by the
source process -> its prediction received here, from the source's push log), the counts, and writes
``demo.png`` (decoded vs true velocity, latency histograms) and ``demo.json`` to ``out_dir``.

The counts (``report["counts"]``, see :func:`count_predictions`) differ for reasons that the report
states: the node decodes from its start, before this consumer has opened its inlet (those predictions
reach no one); the consumer receives a start-up batch before it starts timing, then the live window
(the only predictions timed), then the predictions in flight when it stopped; R2 is scored on the
received predictions that fall within the true-velocity record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from possm_plugin.errors import PossmError, StreamError
from possm_plugin.sim.lsl import check_bin_rate

__all__ = ["run_demo", "end_to_end_latency", "count_predictions", "sim_id_prefix", "DemoError"]

log = logging.getLogger("possm_plugin.realtime.demo")


class DemoError(PossmError):
    """A part of the demo did not start or stopped early."""


def _node_command() -> list[str]:
    exe = shutil.which("possm-lsl")
    return [exe] if exe else [sys.executable, "-m", "possm_plugin.cli.lsl_node"]


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> tuple[str, str]:
    if proc is None:
        return "", ""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return out or "", err or ""


def sim_id_prefix(checkpoint: str | Path | None, *, seed: int, session_index: int, subject: str = "m0") -> str | None:
    """The ``--id-prefix`` under which ``checkpoint`` (None: the bundled one) knows simulated session
    ``(seed, subject, session_index)``: None (the simulator's own ``sim-m0-seed0-s000``) unless the
    checkpoint knows only the seedless id of older simulations (``sim-m0-s000``, the bundled
    checkpoint's), which names whatever seed the demo is given."""
    from possm_plugin.model.checkpoint import read_checkpoint_config
    from possm_plugin.sim.ids import legacy_prefix, sim_session_id

    try:
        known = set(read_checkpoint_config(checkpoint)["session_ids"])
    except PossmError:
        return None  # the decoder node says what is wrong with it
    if sim_session_id(session_index, seed=seed, subject=subject) in known:
        return None
    legacy = legacy_prefix(subject)
    return legacy if sim_session_id(session_index, seed=seed, subject=subject, id_prefix=legacy) in known else None


def end_to_end_latency(t_end: np.ndarray, received: np.ndarray, push_log: np.ndarray) -> np.ndarray:
    """Milliseconds from the push of each chunk's last spike to the reception of its prediction.

    ``push_log`` rows are (first timestamp in the push, local_clock after the push), in push order;
    the last spike of a chunk ending at ``t_end`` went out with the last push whose first timestamp
    is before ``t_end``. Chunks with no push before them give NaN."""
    if len(push_log) == 0:
        return np.full(len(t_end), np.nan)
    first, pushed = push_log[:, 0], push_log[:, 1]
    i = np.searchsorted(first, t_end, side="left") - 1
    out = np.full(len(t_end), np.nan)
    ok = i >= 0
    out[ok] = (received[ok] - pushed[i[ok]]) * 1e3
    return out


def _pct(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": int(len(x)), "p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def run_demo(
    *,
    duration: float = 20.0,
    out_dir: str | Path = "possm-demo",
    checkpoint: str | None = None,
    form: str = "events",
    bin_rate: float = 100.0,
    name: str = "spikes",
    labels_name: str = "velocity",
    outlet: str = "possm",
    seed: int = 0,
    session_index: int = 0,
    start_timeout: float = 90.0,
    plot: bool = True,
) -> dict:
    """Run the demo (see the module doc) and return its report (also written to ``out_dir/demo.json``)."""
    import pylsl

    bin_rate = check_bin_rate(bin_rate)  # here, not in the simulator's process, where it would fail unseen
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    push_log = out / "push_log.npy"
    if push_log.exists():
        push_log.unlink()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    sim_cmd = [sys.executable, "-m", "possm_plugin.sim.lsl", "--name", name, "--labels-name", labels_name, "--form", form,
               "--bin-rate", repr(bin_rate),
               "--seed", str(seed), "--session-index", str(session_index), "--push-log", str(push_log),
               "--source-id", f"possm-demo-{name}-{os.getpid()}"]
    prefix = sim_id_prefix(checkpoint, seed=seed, session_index=session_index)
    if prefix:
        sim_cmd += ["--id-prefix", prefix]
    node_cmd = _node_command() + ["--inlet", name, "--outlet", outlet, "--telemetry", "--json-summary", "--log-level", "WARNING",
                                  "--resolve-timeout", str(start_timeout)]
    if checkpoint:
        node_cmd += ["--checkpoint", str(checkpoint)]
    sim = node = None
    print(f"possm demo: starting the simulated source ({form}, session index {session_index}) and `{' '.join(node_cmd[:3])}`", file=sys.stderr)
    try:
        sim = subprocess.Popen(sim_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        node = subprocess.Popen(node_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        inlets = {}
        deadline = time.monotonic() + start_timeout
        for key, stream in (("vel", labels_name), ("pred", outlet), ("tele", outlet + "-telemetry")):
            while key not in inlets:
                for p, what in ((sim, "simulated source"), (node, "decoder node")):
                    if p.poll() is not None:
                        _, err = p.communicate()
                        last = [ln for ln in err.strip().splitlines() if ln.strip()][-3:]
                        raise DemoError(f"the {what} exited with code {p.returncode}: {' | '.join(last)}")
                if time.monotonic() > deadline:
                    raise StreamError(f"no LSL stream {stream!r} within {start_timeout:g} s")
                found = pylsl.resolve_byprop("name", stream, 1, 0.5)
                if found:
                    inlet = pylsl.StreamInlet(found[0], max_buflen=360, processing_flags=pylsl.proc_clocksync)
                    inlet.time_correction(timeout=5.0)
                    inlet.open_stream(timeout=5.0)
                    inlets[key] = inlet
        rec = {k: ([], [], []) for k in inlets}  # timestamps, samples, receive times

        def pull(timeout: float = 0.0) -> None:
            for k, inlet in inlets.items():
                d, t = inlet.pull_chunk(timeout=timeout, max_samples=100000, as_numpy=True)
                if len(t):
                    now = pylsl.local_clock()
                    rec[k][0].append(np.asarray(t))
                    rec[k][1].append(np.asarray(d, np.float64).reshape(len(t), -1))
                    rec[k][2].append(np.full(len(t), now))

        while not rec["pred"][0]:  # the first prediction: the decoder is running
            if node.poll() is not None or time.monotonic() > deadline:
                raise DemoError("the decoder node published nothing")
            pull()
            time.sleep(0.001)
        print(f"possm demo: decoding live for {duration:g} s ...", file=sys.stderr)
        t_live = pylsl.local_clock()  # predictions received from now on are timed (not the startup backlog)
        t_stop = time.monotonic() + duration
        while time.monotonic() < t_stop:
            pull()
            time.sleep(0.0005)
        t_live_end = pylsl.local_clock()  # later receptions wait on the node's stop: not timed
        node_out, node_err = _stop(node)
        pull(0.1)
        _stop(sim)
        sim_ok = push_log.exists()
    finally:
        for p in (node, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()

    def cat(k, i):
        xs = rec[k][i]
        return np.concatenate(xs) if xs else np.zeros(0)

    p_t, p_v, p_r = cat("pred", 0), cat("pred", 1), cat("pred", 2)
    v_t, v_v = cat("vel", 0), cat("vel", 1)
    tele, tele_r = cat("tele", 1), cat("tele", 2)
    live_tele = (tele_r >= t_live) & (tele_r <= t_live_end)
    try:
        summary = json.loads(node_out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        summary = {"note": "the node printed no summary", "stderr": node_err[-2000:]}
    # R2 against the true velocity at each chunk's end (predictions within the velocity record)
    inside = (p_t >= v_t[0]) & (p_t <= v_t[-1]) if len(v_t) else np.zeros(len(p_t), bool)
    true = np.stack([np.interp(p_t[inside], v_t, v_v[:, c]) for c in range(v_v.shape[1])], axis=1) if inside.any() else np.zeros((0, 2))
    from possm_plugin.training.metrics import r2_score

    r2 = r2_score(true, p_v[inside]) if inside.sum() >= 2 else np.full(p_v.shape[1] if p_v.ndim == 2 else 2, np.nan)
    e2e = end_to_end_latency(p_t, p_r, np.load(push_log) if sim_ok else np.zeros((0, 2)))
    e2e[(p_r < t_live) | (p_r > t_live_end)] = np.nan
    report = {
        "duration_s": duration,
        "form": form,
        "bin_rate_hz": bin_rate if form == "binned" else None,
        "predictions_received": int(len(p_t)),
        "counts": count_predictions(summary, received=p_r, live=(t_live, t_live_end), scored=int(inside.sum())),
        "r2": {"mean": float(np.nanmean(r2)), **{f"r2_{i}": float(x) for i, x in enumerate(r2)}},
        "compute_ms": _pct(tele[live_tele, 0]) if len(tele) else _pct(np.zeros(0)),
        "chunk_end_to_publish_ms": _pct(tele[live_tele, 1]) if len(tele) else _pct(np.zeros(0)),
        "end_to_end_ms": _pct(e2e),
        "node_summary": summary,
        "plot": None,
    }
    if plot and len(p_t):
        report["plot"] = str(_plot(out / "demo.png", p_t, p_v, v_t, v_v, tele, e2e, r2))
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    return report


def count_predictions(summary: dict, *, received: np.ndarray, live: tuple[float, float], scored: int) -> dict:
    """Where each prediction went. ``received`` (N,): LSL receive time of each prediction; ``live``: the
    timed window ``(start, end)`` on that clock; ``summary``: the node's (``chunks_decoded``,
    ``predictions_published``). ``before_consumer`` = published - received: made before this consumer
    opened its inlet (LSL keeps no history for a new inlet), so no one received them."""
    received = np.asarray(received, np.float64)
    published = summary.get("predictions_published")
    return {
        "chunks_decoded": summary.get("chunks_decoded"),
        "published": published,
        "before_consumer": None if published is None else int(published - len(received)),
        "received": int(len(received)),
        "startup": int((received < live[0]).sum()),
        "live": int(((received >= live[0]) & (received <= live[1])).sum()),
        "stopping": int((received > live[1]).sum()),
        "scored": int(scored),
    }


def _plot(path: Path, p_t, p_v, v_t, v_v, tele, e2e, r2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = p_t[0]
    fig, ax = plt.subplots(3, 1, figsize=(10, 8), constrained_layout=True)
    for c, label in enumerate(("vx", "vy")):
        sel = (v_t >= p_t[0]) & (v_t <= p_t[-1])
        ax[c].plot(v_t[sel] - t0, v_v[sel, c], color="0.3", lw=1.2, label="true")
        ax[c].plot(p_t - t0, p_v[:, c], color="tab:red", lw=1.0, label=f"decoded (R2 {r2[c]:.2f})")
        ax[c].set_ylabel(f"{label} (cm/s)")
        ax[c].legend(loc="upper right", fontsize=8)
    ax[1].set_xlabel("time (s)")
    top = float(np.nanpercentile(e2e, 99.5)) if np.isfinite(e2e).any() else 5.0
    bins = np.linspace(0, max(5.0, 1.2 * top), 60)
    if len(tele):
        ax[2].hist(tele[:, 0], bins=bins, alpha=0.6, label="model compute per chunk")
    if np.isfinite(e2e).any():
        ax[2].hist(e2e[np.isfinite(e2e)], bins=bins, alpha=0.6, label="last spike pushed -> prediction received")
    ax[2].set_xlabel("latency (ms)")
    ax[2].set_ylabel("chunks")
    ax[2].legend(fontsize=8)
    fig.suptitle("POSSM live decoding over LSL")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_report(r: dict) -> str:
    def ms(d):
        return "n/a" if not d.get("n") else f"p50 {d['p50']:.2f} ms, p99 {d['p99']:.2f} ms (n={d['n']})"

    s = r.get("node_summary", {})
    lines = [
        f"possm demo: {r['duration_s']:g} s of live decoding ({r['form']} input)",
        f"  R2 vs true velocity: {r['r2']['mean']:.3f} (vx {r['r2'].get('r2_0', float('nan')):.3f}, vy {r['r2'].get('r2_1', float('nan')):.3f})",
        f"  model compute per chunk: {ms(r['compute_ms'])}",
        f"  chunk end -> published: {ms(r['chunk_end_to_publish_ms'])}",
        f"  last spike pushed -> prediction received: {ms(r['end_to_end_ms'])}",
    ]
    c = r.get("counts", {})
    if c.get("published") is not None:
        lines += [
            f"  predictions: the node decoded {c['chunks_decoded']} chunks and published {c['published']} predictions:",
            f"    {c['before_consumer']} before this consumer connected (received by no one)",
            f"    {c['startup']} received at start-up, while the consumer opened its other streams (not timed)",
            f"    {c['live']} received in the {r['duration_s']:g} s live window (the latencies above)",
            f"    {c['stopping']} in flight when the node stopped (not timed)",
            f"    R2 scored on the {c['scored']} of the {c['received']} received that lie within the true-velocity record",
        ]
    if "chunks_decoded" in s:
        lines.append(f"  spikes: {s['spikes_decoded']} decoded, {s['spikes_dropped']} dropped (late {s['spikes_late']}); "
                     f"{s['chunks_skipped']} chunks skipped")
    if r.get("plot"):
        lines.append(f"  plot: {r['plot']}")
    return "\n".join(lines)
