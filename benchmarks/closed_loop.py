"""Closed-loop benchmark: a simulated user steers a cursor with POSSM, Wiener and Kalman decoders.

Every decoder runs on the same seeds and sessions (per seed: session ``session_index + seed`` of the
simulated subject m0, which the bundled checkpoint was trained on, but not on these sessions), is
calibrated on the same open-loop block (POSSM by unit identification from the bundled checkpoint,
Wiener and Kalman fit on it), and steers ``--trials`` trials of centre-out-and-back with the same
simulated user (150 ms visual feedback delay). The oracle (the user's intent itself) is the ceiling.

    python benchmarks/closed_loop.py --json              # run; print {"decoders", "seeds", "trials"}
    python benchmarks/closed_loop.py --json --save docs/closed-loop.json
    python benchmarks/closed_loop.py --report            # render docs/closed-loop.md and .png from docs/closed-loop.json
    python benchmarks/closed_loop.py --report --run      # run, save the JSON, then render

Protocol and metrics: docs/closed-loop.md and possm_plugin.closedloop.metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from possm_plugin.closedloop.metrics import fmt, metrics_table  # noqa: E402

DOCS = ROOT / "docs"


def run(args) -> dict:
    import torch

    from possm_plugin.closedloop.experiment import ExperimentConfig, run_experiment
    from possm_plugin.closedloop.task import TaskConfig
    from possm_plugin.closedloop.user import UserConfig

    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig(trials=args.trials, calibration_s=args.calibration, ui_epochs=args.ui_epochs,
                           task=TaskConfig(), user=UserConfig(feedback_delay_s=args.feedback_delay))
    load0 = os.getloadavg()
    t = time.perf_counter()
    report = run_experiment(args.decoders, args.seeds, cfg, progress=lambda m: print(m, file=sys.stderr, flush=True),
                            delays=args.sweep_delays)
    report["details"]["machine"] = {
        "wall_s": round(time.perf_counter() - t, 1), "cpus": os.cpu_count(), "threads": args.threads,
        "load_start": [round(x, 2) for x in load0], "load_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__,
        "command": "python benchmarks/closed_loop.py " + " ".join(sys.argv[1:]),
    }
    return report


def verdict(report: dict) -> list[str]:
    d = report["decoders"]
    if "possm" not in d or "kalman" not in d:
        return []
    p, k = d["possm"], d["kalman"]
    ok_s = p["success_rate"] >= k["success_rate"]
    pm, km = p["time_to_target_s"]["median"], k["time_to_target_s"]["median"]
    ok_t = pm is not None and km is not None and pm < km
    return [
        f"- POSSM success rate >= Kalman's: **{'yes' if ok_s else 'no'}** ({fmt(p['success_rate'])} vs {fmt(k['success_rate'])}).",
        f"- POSSM median time to target shorter than Kalman's: **{'yes' if ok_t else 'no'}** ({fmt(pm)} s vs {fmt(km)} s).",
    ]


def per_seed(report: dict) -> str:
    ps = report["details"]["per_seed"]
    seeds = [str(s) for s in report["seeds"]]
    rows = ["| decoder | " + " | ".join(f"seed {s}: success, median TTT (s)" for s in seeds) + " |",
            "| --- |" + " --- |" * len(seeds)]
    for name, by in ps.items():
        rows.append(f"| `{name}` | " + " | ".join(
            f"{fmt(by[s]['success_rate'])}, {fmt(by[s]['time_to_target_s']['median'])}" for s in seeds) + " |")
    return "\n".join(rows)


MARK = "<!-- discussion -->"


def write_report(report: dict, md: Path, png: Path) -> None:
    from possm_plugin.closedloop.plot import plot_report

    plot_report(report, png)
    det = report["details"]
    mach = det.get("machine", {})
    cfg = det["config"]
    fit = det["fit"]
    r2 = ", ".join(f"seed {s}: {fmt(v.get('possm', {}).get('calibration_r2'), '{:.3f}')}" for s, v in fit.items())
    counts = det["counts"]
    old = md.read_text() if md.exists() else ""
    discussion = old.split(MARK, 1)[1] if MARK in old else "\n"
    sweep = det.get("delay_sweep", {})
    sweep_rows = []
    if sweep:
        delays = sorted({d for by in sweep.values() for d in by} | {f"{cfg['user']['feedback_delay_s']:g}"}, key=float)
        sweep_rows = ["| decoder | " + " | ".join(f"delay {d} s: success, median TTT (s)" for d in delays) + " |",
                      "| --- |" + " --- |" * len(delays)]
        for n, by in sweep.items():
            cells = []
            for d in delays:
                m = by.get(d) or (report["decoders"][n] if float(d) == cfg["user"]["feedback_delay_s"] else None)
                cells.append("-" if m is None else f"{fmt(m['success_rate'])}, {fmt(m['time_to_target_s']['median'])}")
            sweep_rows.append(f"| `{n}` | " + " | ".join(cells) + " |")
    ol = "; ".join(f"`{n}` " + ", ".join(fmt(v.get(n, {}).get("open_loop_r2"), "{:.3f}") for v in fit.values())
                   for n in report["decoders"] if n != "oracle")
    gain = "; ".join(f"`{n}` " + ", ".join(f"{fmt(v.get(n, {}).get('closed_loop_gain'))} ({fmt(v.get(n, {}).get('closed_loop_gain_slow'))})"
                                          for v in fit.values()) for n in report["decoders"] if n != "oracle")
    cl = "; ".join(f"`{n}` " + ", ".join(fmt(v.get(n, {}).get("closed_loop_r2"), "{:.3f}") for v in fit.values())
                   for n in report["decoders"] if n != "oracle")
    lines = [
        "# Closed loop: a simulated BCI user steering a cursor",
        "",
        f"Generated by `{mach.get('command', 'python benchmarks/closed_loop.py')}` from [`closed-loop.json`](closed-loop.json) "
        f"(`python benchmarks/closed_loop.py --report` re-renders this page and the figure from it). "
        f"Run: {fmt(mach.get('wall_s'), '{:.0f}')} s wall on {mach.get('cpus')} CPUs ({mach.get('threads')} torch thread(s)), "
        f"load average {mach.get('load_start')} at the start and {mach.get('load_end')} at the end; torch {mach.get('torch')}.",
        "",
        "![closed loop](closed-loop.png)",
        "",
        f"{len(report['seeds'])} seeds ({report['seeds']}) x {report['trials']} trials per decoder, pooled.",
        "",
        metrics_table(report),
        "",
        *verdict(report),
        "",
        "Per seed:",
        "",
        per_seed(report),
        "",
        "Counts over all seeds (trials, failed trials, target re-entries, broken holds): "
        + "; ".join(f"`{n}` {c['trials']}, {c['timeouts']}, {c['reentries']}, {c['breaks']}" for n, c in counts.items()) + ".",
        "",
        f"POSSM validation R2 after unit identification on the calibration block (last 20 % of its trials): {r2}.",
        "",
        f"Open-loop R2 (mean of vx, vy) on a held-out 30 s open-loop block of the same session, decoded chunk by chunk "
        f"through the same loop decoders, per seed: {ol}. In the loop (decoded velocity against the intent the "
        f"simulated cortex encoded `delay_s` earlier, all chunks of the {report['trials']} trials), per seed: {cl}. "
        f"Gain of the decoded velocity on that intent (least squares; in brackets: chunks whose intent is under "
        f"10 cm/s), per seed: {gain}.",
        "",
        *(["Feedback delay (same calibrated decoders, same seeds and trials; the user's other settings unchanged):", "",
           *sweep_rows, ""] if sweep_rows else []),
        "## Setup",
        "",
        f"- Task: {cfg['task']['layout']}, 8 targets at {cfg['task']['radius_cm']} cm, target radius "
        f"{cfg['task']['target_radius_cm']} cm, hold {cfg['task']['hold_s']} s, timeout {cfg['task']['timeout_s']} s; "
        "after a failed outer trial the next target is the centre if the cursor left it, else another outer target.",
        f"- User: feedback delay {cfg['user']['feedback_delay_s']} s, max speed {cfg['user']['max_speed_cm_s']} cm/s, "
        f"gain {cfg['user']['gain']} /s, motor noise {cfg['user']['noise_cm_s']} cm/s per chunk.",
        f"- Session: simulated subject {cfg['subject']}, session index {cfg['session_index']} + seed; calibration block "
        f"{cfg['calibration_s']} s; POSSM: unit identification (new unit and session embeddings and the latent queries) "
        f"for {cfg['ui_epochs']} epochs at lr 1e-2 from "
        f"{cfg['checkpoint'] or 'the bundled checkpoint'}; Wiener (5 lags, ridge chosen on the block), Kalman "
        "(velocity state, steady-state gain).",
        "- The simulated cortex encodes the intent `delay_s` (the subject's longest lead, about 0.15 s) ahead of the "
        "cursor velocity it stands for, as it leads the hand in `possm simulate`; every decoder is fit to the cursor "
        "velocity, so each returns the intent about that much late, besides its own smoothing.",
        "",
        "## Discussion",
        MARK,
    ]
    md.write_text("\n".join(lines) + discussion)


def main(argv=None) -> int:
    from possm_plugin.cli.formatter import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help='print {"decoders", "seeds", "trials"} as JSON')
    p.add_argument("--save", default=None, help="write the full JSON (with details: per seed, trajectories, config) here")
    p.add_argument("--report", action="store_true", help="write docs/closed-loop.md and .png from docs/closed-loop.json")
    p.add_argument("--run", action="store_true", help="with --report: run first and save docs/closed-loop.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--decoders", nargs="+", default=["possm", "wiener", "kalman", "oracle"])
    p.add_argument("--calibration", type=float, default=120.0, help="calibration block, seconds")
    p.add_argument("--ui-epochs", type=int, default=15)
    p.add_argument("--feedback-delay", type=float, default=0.15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweep-delays", type=float, nargs="*", default=[0.05, 0.3],
                   help="feedback delays (s) to rerun every calibrated decoder at, for the report's delay table")
    args = p.parse_args(argv)
    src = DOCS / "closed-loop.json"
    if args.report and not args.run:
        report = json.loads(src.read_text())
    else:
        report = run(args)
        if args.save or args.report:
            path = Path(args.save) if args.save else src
            path.write_text(json.dumps(report, indent=1) + "\n")
    if args.report:
        write_report(report, DOCS / "closed-loop.md", DOCS / "closed-loop.png")
        print(f"wrote {DOCS / 'closed-loop.md'} and {DOCS / 'closed-loop.png'}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: report[k] for k in ("decoders", "seeds", "trials")}, indent=1))
    elif not args.report or args.run:
        print(metrics_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
