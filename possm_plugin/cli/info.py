"""``possm info [CHECKPOINT] [--json]``: what a checkpoint holds.

The model config, parameter count, backbone, chunk timing, readout and outputs, each session id with
its ordered unit ids, the default session and the training metadata. Without an argument: the
checkpoint bundled with the package.
"""

from __future__ import annotations

import argparse
import json
import sys

from possm_plugin.cli.formatter import HelpFormatter

__all__ = ["add_parser", "run", "collect"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="describe a checkpoint (config, parameters, sessions and their units)",
        description="Describe a checkpoint: model config, parameter count, backbone, chunk timing, each session "
        "with its ordered unit ids, and the default session. Without CHECKPOINT: the bundled default.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", nargs="?", default=None, help="a .yaml/.safetensors file, their stem, or a directory (default: bundled)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--units", action="store_true", help="list every unit id in the text output (JSON always has them)")
    p.set_defaults(func=run)
    return p


def collect(path=None) -> dict:
    """The document ``possm info --json`` prints."""
    from possm_plugin.model.checkpoint import load_checkpoint, resolve_checkpoint

    weights, config = resolve_checkpoint(path)
    model, doc = load_checkpoint(path)
    cfg = model.config
    sessions = [{"session_id": s, "n_units": len(model.session_units.get(s, [])), "unit_ids": list(model.session_units.get(s, [])),
                 "fingerprint": model.session_fingerprints.get(s)} for s in model.session_vocab.ids]
    return {
        "checkpoint": str(config),
        "weights": str(weights),
        "format_version": doc.get("format_version"),
        "possm_plugin_version": doc.get("possm_plugin_version"),
        "backbone": cfg.backbone,
        "backbone_kwargs": dict(cfg.backbone_kwargs),
        "n_parameters": model.n_parameters(),
        "n_parameters_without_embeddings": model.n_parameters() - model.unit_emb.weight.numel() - model.session_emb.weight.numel(),
        "chunk_width": cfg.chunk_width,
        "chunk_step": cfg.chunk_step,
        "readout": cfg.readout,
        "outputs": list(cfg.output_names) if cfg.readout == "regression" else cfg.output_dim,
        "target_scale": cfg.target_scale,
        "n_units": model.n_units,
        "n_sessions": len(sessions),
        "default_session": doc.get("default_session"),
        "sessions": sessions,
        "model": cfg.to_dict(),
        "meta": doc.get("meta", {}),
    }


def _text(d: dict, *, units: bool) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in d["backbone_kwargs"].items())
    lines = [
        f"checkpoint   {d['checkpoint']}",
        f"model        POSSM, backbone {d['backbone']} ({kw}), dim {d['model']['dim']}, "
        f"{d['n_parameters']:,} parameters ({d['n_parameters_without_embeddings']:,} without unit/session embeddings)",
        f"chunks       width {d['chunk_width'] * 1e3:g} ms, step {d['chunk_step'] * 1e3:g} ms",
        f"readout      {d['readout']}: {d['outputs']} (target scale {d['target_scale']:g})",
        f"units        {d['n_units']} in the vocabulary",
        f"sessions     {d['n_sessions']}, default {d['default_session']!r}",
    ]
    meta = d.get("meta") or {}
    valid = meta.get("valid") or {}
    if isinstance(valid, dict) and valid:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in valid.items() if isinstance(v, (int, float)))
        lines.append(f"trained      on the {d['n_sessions']} session(s) below; best validation epoch {meta.get('epoch')}: {scores}")
    elif "finetune" in meta:
        lines.append(f"trained      fine-tuned ({meta['finetune'].get('mode')}) from a checkpoint on other sessions")
    for s in d["sessions"]:
        ids = s["unit_ids"]
        shown = ", ".join(ids) if units else (", ".join(ids[:3]) + (", ..." if len(ids) > 3 else ""))
        fp = f", fingerprint {s['fingerprint']}" if s.get("fingerprint") else ""
        lines.append(f"  {s['session_id']}: {s['n_units']} units{fp} [{shown}]")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    d = collect(args.checkpoint)
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_text(d, units=args.units))
    return 0
