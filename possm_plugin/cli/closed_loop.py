"""``possm closed-loop``: a simulated user steers a cursor with a decoder; prints the metrics, writes the figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from possm_plugin.cli.formatter import HelpFormatter

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "closed-loop",
        help="closed-loop cursor task with a simulated BCI user (docs/closed-loop.md)",
        description="Calibrate a decoder on an open-loop block of a simulated session, then let a simulated user "
        "steer a cursor with it (centre-out-and-back); print success rate, time to target, dial-in time, path "
        "efficiency and Fitts ITR, and write closed-loop.png and closed-loop.json to --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--decoder", action="append", choices=["possm", "wiener", "kalman", "oracle"],
                   help="decoder in the loop (repeat for several; default: possm)")
    p.add_argument("--checkpoint", default=None, help="POSSM checkpoint (.yaml) to adapt by unit identification; default: the bundled one")
    p.add_argument("--trials", type=int, default=32, help="trials per seed")
    p.add_argument("--seed", type=int, action="append", help="seed (repeat for several; default: 0)")
    p.add_argument("--realtime", action="store_true", help="run in real time over LSL with possm-lsl as a separate process (possm only)")
    p.add_argument("--out", default="possm-closed-loop", help="folder for closed-loop.png and closed-loop.json")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--layout", default="center_out", choices=["center_out", "random"], help="target layout")
    p.add_argument("--feedback-delay", type=float, default=0.15, help="visual feedback delay of the user, seconds")
    p.add_argument("--target-radius", type=float, default=2.0, help="target radius, cm")
    p.add_argument("--hold", type=float, default=0.5, help="hold time, seconds")
    p.add_argument("--timeout", type=float, default=6.0, help="trial timeout, seconds")
    p.add_argument("--calibration", type=float, default=120.0, help="open-loop calibration block, seconds")
    p.add_argument("--ui-epochs", type=int, default=15, help="unit-identification epochs for POSSM")
    p.add_argument("--session-index", type=int, default=10, help="first simulated session index (plus the seed)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from possm_plugin.closedloop.experiment import ExperimentConfig, run_experiment
    from possm_plugin.closedloop.metrics import metrics_table
    from possm_plugin.closedloop.plot import plot_report
    from possm_plugin.closedloop.task import TaskConfig
    from possm_plugin.closedloop.user import UserConfig
    from possm_plugin.errors import ConfigError

    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    names = args.decoder or ["possm"]
    seeds = args.seed or [0]
    cfg = ExperimentConfig(
        trials=args.trials, session_index=args.session_index, calibration_s=args.calibration, ui_epochs=args.ui_epochs,
        checkpoint=args.checkpoint,
        task=TaskConfig(layout=args.layout, target_radius_cm=args.target_radius, hold_s=args.hold, timeout_s=args.timeout),
        user=UserConfig(feedback_delay_s=args.feedback_delay),
    )
    if args.realtime:
        from possm_plugin.closedloop.realtime import run_realtime_experiment

        report = run_realtime_experiment(names, seeds, cfg)
    else:
        report = run_experiment(names, seeds, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "closed-loop.json").write_text(json.dumps(report, indent=1) + "\n")
    png = plot_report(report, out / "closed-loop.png")
    if args.json:
        print(json.dumps({k: report[k] for k in ("decoders", "seeds", "trials")}, indent=1))
    else:
        print(metrics_table(report))
        print(f"\nfigure: {png}\nJSON: {out / 'closed-loop.json'}")
    return 0
