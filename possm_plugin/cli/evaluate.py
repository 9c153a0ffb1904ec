"""``possm evaluate --checkpoint CKPT --data DIR --json``: metrics on held-out trials."""

from __future__ import annotations

import json

from possm_plugin.cli.formatter import HelpFormatter, text_table
from possm_plugin.data.prepared import prepare_sessions
from possm_plugin.data.session import load_sessions
from possm_plugin.model.checkpoint import load_checkpoint
from possm_plugin.training.evaluate import evaluate_prepared

__all__ = ["add_parser", "run", "metrics_text"]

# readout -> (metric key, column title)
_METRIC = {"regression": ("r2", "R2"), "classification": ("accuracy", "accuracy"), "ctc": ("token_error_rate", "token error rate")}


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on sessions it knows", formatter_class=HelpFormatter,
                       description="Decodes the held-out trials of each session continuously, as the live decoder does.")
    p.add_argument("--checkpoint", help="checkpoint (default: the bundled one)")
    p.add_argument("--data", required=True, help="directory (or .npz file) of sessions")
    p.add_argument("--split", choices=["valid", "all"], default="valid", help="held-out trials (the last valid-fraction) or all trials")
    p.add_argument("--valid-fraction", type=float, default=0.2, help="fraction of trials held out at the end of each session")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    model, _ = load_checkpoint(args.checkpoint, map_location=args.device)
    sessions = load_sessions(args.data)
    prepared = prepare_sessions(model, sessions, valid_fraction=args.valid_fraction)
    if args.split == "all":
        for ps in prepared:
            import numpy as np

            ps.split["all"] = np.arange(len(ps.session.trials))
    metrics = evaluate_prepared(model, prepared, split=args.split, device=args.device)
    metrics["n_sessions"] = len(prepared)
    metrics["readout"] = model.config.readout
    if args.json:
        print(json.dumps(metrics))
    else:
        which = "all trials" if args.split == "all" else f"held-out trials (the last {args.valid_fraction:.0%} of each session)"
        print(f"{args.checkpoint or 'the bundled checkpoint'}: {metrics['readout']} readout, {metrics['n_sessions']} session(s), {which}")
        print(metrics_text(metrics, output_names=model.config.output_names))
    return 0


def metrics_text(metrics: dict, *, output_names: list[str]) -> str:
    """The metrics of :func:`~possm_plugin.training.evaluate.evaluate_prepared` as a table: one row per session
    (for a regression, the R2 of each output too), then the mean over sessions."""
    key, title = _METRIC[metrics["readout"]]
    per_output = metrics.get("r2_per_output", {})
    names = output_names if per_output else []
    rows = [["session", title, *(f"{title} {n}" for n in names)]]
    for sid, value in metrics[f"{key}_per_session"].items():
        rows.append([sid, f"{value:.3f}", *(f"{v:.3f}" for v in per_output.get(sid, []))])
    rows.append(["mean", f"{metrics[key]:.3f}", *([""] * len(names))])
    return text_table(rows)
