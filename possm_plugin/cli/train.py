"""``possm train --config FILE.yaml [--data DIR] [--out DIR] [--epochs N]``: flags override the config."""

from __future__ import annotations

import json

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.training.train import load_train_config, train


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a POSSM from a YAML config", formatter_class=HelpFormatter,
                       description="Train a POSSM on sessions in a directory (see examples/configs/). Flags override the config file.")
    p.add_argument("--config", help="YAML training config (sections model/data/train/out)")
    p.add_argument("--data", help="directory of session .npz files")
    p.add_argument("--out", help="run directory (best.*, last.*, metrics.jsonl)")
    p.add_argument("--epochs", type=int, help="epochs")
    p.add_argument("--batch-size", type=int, help="windows per batch")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--resume", help="run directory (or last.yaml) to resume from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_train_config(
        args.config, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=args.device, progress=False if args.no_progress else None,
    )
    result = train(cfg, resume=args.resume)
    summary = {"out": result["out"], "best_epoch": result["best_epoch"], "n_parameters": result["n_parameters"], **{
        k: v for k, v in result["best"].items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"best epoch {summary['best_epoch']}: " + ", ".join(f"{k}={v:.4f}" for k, v in result["best"].items() if isinstance(v, float)))
        print(f"checkpoint: {result['out']}/best.yaml")
    return 0
