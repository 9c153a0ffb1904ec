"""``possm finetune --checkpoint CKPT --data DIR --mode ui|ft``: adapt a model to new sessions.

Without ``--checkpoint`` it starts from the bundled checkpoint that fits the sessions
(:func:`base_checkpoint`): the one pretrained on the bundled real recordings (``chewie``) for real
regression sessions imported from bins or NWB with its outputs, the simulated one (``default``) otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.data.session import load_sessions
from possm_plugin.model.checkpoint import bundled_checkpoint, load_checkpoint, read_checkpoint_config, save_checkpoint
from possm_plugin.training.finetune import finetune
from possm_plugin.training.recipe import FT_LR_SCALE, UI_LR, recipe_config
from possm_plugin.training.train import RECIPE


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="adapt a checkpoint to new sessions (unit identification or full fine-tuning)",
                       formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint to start from, a path or a bundled name (default: `chewie`, pretrained on "
                   "the bundled real recordings, for imported real sessions with its outputs; else `default`)")
    p.add_argument("--data", required=True, help="directory (or .npz file) of the new sessions")
    p.add_argument("--mode", choices=["ui", "ft"], default="ui", help="ui: only new unit/session embeddings; ft: ui, then all")
    p.add_argument("--epochs", type=int, help="total epochs (default: the recipe's, at least 600 optimiser steps per stage)")
    p.add_argument("--ui-epochs", type=int, help="ft: unit-identification epochs before unfreezing (default: half)")
    p.add_argument("--lr", type=float, default=UI_LR, help="learning rate of unit identification")
    p.add_argument("--ft-lr", type=float, help="learning rate once unfrozen (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"], help="windows per batch")
    p.add_argument("--train-latents", action="store_true", help="train the latent queries too (changes old sessions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/finetune", help="output directory; the adapted model is OUT/model.yaml")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def base_checkpoint(sessions) -> tuple[str, str]:
    """(bundled checkpoint name, why) to start from when none is given: ``chewie`` (pretrained on the
    bundled real recordings) when every session is a real regression session imported from bins or NWB
    (``meta["import"]``) with the same outputs as it; ``default`` (simulated sessions) otherwise."""
    names = list(read_checkpoint_config(bundled_checkpoint("chewie"))["model"]["output_names"])
    if all(s.task == "regression" and "import" in s.meta and list(s.target_names) == names for s in sessions):
        return "chewie", f"real recordings imported with outputs {names}"
    return "default", "not every session is an imported real regression recording with outputs " + str(names)


def run(args) -> int:
    sessions = load_sessions(args.data)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint, why = base_checkpoint(sessions)
        print(f"possm finetune: starting from the bundled checkpoint {checkpoint!r} ({why}; --checkpoint to choose)", file=sys.stderr)
    model, doc = load_checkpoint(checkpoint)
    model.train()
    out = Path(args.out)
    # the recipe (possm train's defaults) under the flags; --epochs asks for exactly that many epochs
    cfg = recipe_config(seed=args.seed, progress=not args.no_progress, **({"min_steps": 0} if args.epochs else {}))
    epochs = args.epochs or (cfg.epochs if args.mode == "ui" else 2 * cfg.epochs)
    res = finetune(model, sessions, mode=args.mode, epochs=epochs, ui_epochs=args.ui_epochs, lr=args.lr,
                   ft_lr=args.ft_lr or cfg.lr * FT_LR_SCALE, batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                   train_latents=args.train_latents, out_dir=out, train_config=cfg)
    path = save_checkpoint(model, out / "model", default_session=sessions[0].session_id,
                           meta={"finetune": {k: v for k, v in res.items() if k != "history"}, "base": doc.get("meta", {})})
    summary = {k: v for k, v in res.items() if k != "history"}
    summary["checkpoint"] = str(path)
    summary["base_checkpoint"] = str(checkpoint)
    if args.json:
        print(json.dumps(summary))
    else:
        metric = {k: v for k, v in summary.items() if k.startswith("valid_")}
        print(f"{args.mode}: {summary['new_units']} new units, {summary['trainable_parameters']} trainable parameters "
              f"({100 * summary['trainable_fraction']:.2f}%), " + ", ".join(f"{k}={v:.4f}" for k, v in metric.items()))
        print(f"checkpoint: {path}")
    return 0
