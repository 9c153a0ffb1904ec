"""Rendering of the real-data benchmark's JSON (``benchmarks/real.py``): text tables, the markdown
report and its figure. Works from the JSON alone, so a committed run is re-rendered without rerunning:

    python benchmarks/real_report.py                            # docs/real-data.json -> .md and .png
    python benchmarks/real_report.py RUN.json --md OUT.md       # another run, elsewhere

The report keeps a hand-written discussion between two markers when it is regenerated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_report import DISCUSSION_END, DISCUSSION_START, _md_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "docs" / "real-data.json"
METHOD_LABELS = {"ui": "UI (pretrained, unit identification)", "ft": "FT (pretrained, full fine-tuning)",
                 "scratch": "POSSM from scratch", "wiener": "Wiener"}


def _folds(values: list[float]) -> str:
    return " ".join(f"{x:6.3f}" for x in values)


def tables(out: dict) -> str:
    lines = []
    b = out["budget"]
    for sid, ss in out["single"].items():
        lines.append(f"{sid}: single session, R2 on the test fold ({b['folds']} folds; mean, then per fold)")
        for m, d in ss.items():
            lines.append(f"  {m:<12} {d['r2_mean']:7.3f}   {_folds(d['r2_folds'])}")
        tr = out["transfer"].get(sid)
        if tr:
            fr = list(next(iter(tr.values())))
            pre = out.get("sessions", {}).get(sid, {}).get("pretrained_on", [])
            lines.append(f"{sid}: transfer (pretrained on {', '.join(pre) or 'the other sessions'}; {b['transfer_folds']} folds), "
                         "R2 vs fraction of the fold's training trials")
            lines.append("  " + f"{'method':<12}" + "".join(f"{f:>9}" for f in fr))
            for m, d in tr.items():
                lines.append("  " + f"{m:<12}" + "".join(f"{d[f]['r2_mean']:9.3f}" for f in fr))
        v = out.get("verdict", {}).get(sid)
        if v:
            text = (f"  verdict: best {v['best_model']}; POSSM - Wiener {v['possm_minus_wiener']:+.3f}, "
                    f"POSSM above Wiener on {v['possm_folds_won_vs_wiener']} folds")
            if "ui_0.25_minus_wiener" in v:
                text += (f"; UI at 0.25 - Wiener {v['ui_0.25_minus_wiener']:+.3f}, "
                         f"- scratch {v['ui_0.25_minus_scratch']:+.3f}")
            lines.append(text)
        lines.append("")
    lines.append(f"budget {b['name']} (recipe budget {b['recipe_budget']!r}, {b['recipe_steps']} steps); reduced: {b['reduced']}")
    if "wall_s" in out:
        m = out.get("meta", {})
        lines.append(f"wall {out['wall_s']:.0f} s" + (f", CPU {m['cpu_s']:.0f} s in {m['jobs']} worker(s) x {m['threads']} thread(s); "
                                                     f"load average {m['load_avg_start']} -> {m['load_avg_end']}" if m else ""))
    return "\n".join(lines)


def plot(out: dict, png: Path) -> None:
    """Left: single-session R2 per model per session (bars: mean, dots: folds). Then one panel per
    session with transfer curves, R2 vs calibration fraction per method (dots: folds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sessions = list(out["single"])
    with_transfer = [s for s in sessions if s in out["transfer"]]
    fig, axes = plt.subplots(1, 1 + len(with_transfer), figsize=(6.5 + 4.5 * len(with_transfer), 4.4), squeeze=False)
    ax = axes[0, 0]
    models = list(out["single"][sessions[0]])
    width = 0.8 / len(sessions)
    lo = 1.0
    for j, sid in enumerate(sessions):
        ss = out["single"][sid]
        x = np.arange(len(models)) + (j - (len(sessions) - 1) / 2) * width
        means = [ss[m]["r2_mean"] for m in models]
        ax.bar(x, means, width=width * 0.95, color=f"C{j}", alpha=0.75, label=sid)
        for xi, m in zip(x, models):
            ax.scatter([xi] * len(ss[m]["r2_folds"]), ss[m]["r2_folds"], color="k", s=7, zorder=3)
            lo = min(lo, *ss[m]["r2_folds"])
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylim(max(-0.5, min(0.0, lo - 0.05)), 1.0)
    ax.set_ylabel("R2 (test fold)")
    ax.set_title(f"single session ({out['budget']['folds']}-fold CV by trials)")
    ax.legend(fontsize=8, loc="lower left")
    style = {"ui": ("C0", "o-"), "ft": ("C1", "s-"), "scratch": ("C2", "^-"), "wiener": ("C7", "d--")}
    for k, sid in enumerate(with_transfer):
        ax = axes[0, 1 + k]
        lo = 1.0
        for m, d in out["transfer"][sid].items():
            fr = [float(f) for f in d]
            c, s = style.get(m, ("k", "o-"))
            ax.plot(fr, [d[f]["r2_mean"] for f in d], s, color=c, label=m, lw=2)
            for f, v in d.items():
                ax.scatter([float(f)] * len(v["r2_folds"]), v["r2_folds"], color=c, s=6, alpha=0.4)
                lo = min(lo, *v["r2_folds"])
        ax.set_xscale("log")
        ticks = [float(f) for f in next(iter(out["transfer"][sid].values()))]
        ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
        ax.minorticks_off()
        ax.set_ylim(max(-0.5, min(0.0, lo - 0.05)), 1.0)
        ax.set_xlabel("fraction of the fold's training trials")
        ax.set_ylabel("R2 (test fold)")
        ax.set_title(f"transfer to {sid}")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"possm-plugin real-data benchmark ({out['budget']['name']} budget)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def report_markdown(out: dict, png_name: str, json_name: str, old: str | None) -> str:
    b, meta = out["budget"], out.get("meta", {})
    parts = [
        "# Real-data benchmark",
        "",
        f"Generated by `python benchmarks/real.py {meta.get('argv', '')}` ({b['name']} budget; {out['wall_s']:.0f} s wall"
        + (f", {meta['cpu_s']:.0f} s of CPU in {meta['jobs']} worker(s) x {meta['threads']} thread(s) on {meta['cpus']} cores, "
           f"load average {meta['load_avg_start']} at the start and {meta['load_avg_end']} at the end; torch {meta['torch']}" if meta else "")
        + f"). The run's JSON is [`{json_name}`]({json_name}); `python benchmarks/real_report.py` re-renders this page from it.",
        "",
        f"![real-data benchmark]({png_name})",
        "",
        "## Protocol",
        "",
        "- **Data**: every session file in `--data DIR`, or the real recordings bundled with the package. Binned "
        "recordings are scored on their own bins (100 ms for the bundled Chewie sessions).",
        f"- **Folds**: the trials of a session are split into {b['folds']} folds (`kfold_trials(n, {b['folds']}, seed=0)`); each fold "
        "is the test set once. A model sees only its fold's training trials, cut into a session of their own and laid back to "
        "back in recording order; the test trials are laid back to back too and decoded as one stream from a fresh state.",
        "- **Selection**: everything a model chooses (ridge penalty, best epoch, ...) is chosen on the last 20 % of its "
        "training trials in recording order, never on the test fold.",
        "- **Single session**: Wiener filter (3 lags, refit on train + valid after choosing its penalty), Kalman filter, MLP, "
        "binned GRU, and POSSM trained by `possm_plugin.training.recipe.train_recipe` (the recipe of `possm train`). Score: R2, mean "
        "over vx and vy, on every bin of the test fold; POSSM's output is taken at the chunk that ends where each bin ends.",
        "- **Transfer**: for each session POSSM is pretrained once on all the *other* sessions. Per fold and fraction of the "
        "fold's training trials (the first ones, in recording order): `ui` (unit identification: only the new unit and "
        "session embeddings train), `ft` (UI, then all weights), `scratch` (POSSM on those trials only) and `wiener` (on those "
        "trials), all on the same test fold. Scratch and Wiener at 1.0 are the single-session runs.",
        f"- **Budget**: `{b['name']}` (recipe budget `{b['recipe_budget']}`, about {b['recipe_steps']} optimiser steps per "
        f"training); MLP and binned GRU " + ", ".join(f"{k} {v}" for k, v in b["baseline_epochs"].items())
        + f" epochs (best on validation); transfer on {b['transfer_folds']} of {b['folds']} folds at fractions "
        + ", ".join(f"{f:g}" for f in b["fractions"]) + f". Reduced: {b['reduced']}.",
        "",
    ]
    parts += ["## Verdict", ""]
    for sid, v in out.get("verdict", {}).items():
        text = (f"- `{sid}`: best model `{v['best_model']}`; POSSM − Wiener **{v['possm_minus_wiener']:+.3f}**, POSSM above "
                f"Wiener on {v['possm_folds_won_vs_wiener']} folds (target +0.02 and 4 of 5: "
                f"{'met' if v['target_single_met'] else 'not met'})")
        if "ui_0.25_minus_wiener" in v:
            text += (f"; UI at 25 % − Wiener {v['ui_0.25_minus_wiener']:+.3f}, − scratch {v['ui_0.25_minus_scratch']:+.3f} "
                     f"(target ≥ both: {'met' if v['target_transfer_met'] else 'not met'})")
        parts.append(text + ".")
    if out.get("transfer"):
        parts += ["", "Pretrained (the better of UI and FT) − POSSM from scratch on the same trials and test folds, per "
                      "fraction of the training trials (positive: pretraining helped):", ""]
        for sid, tr in out["transfer"].items():
            cells = []
            for f in sorted(tr["scratch"], key=float):
                best = max(("ui", "ft"), key=lambda m: tr[m][f]["r2_mean"])
                cells.append(f"{float(f):.0%} {best.upper()} {tr[best][f]['r2_mean'] - tr['scratch'][f]['r2_mean']:+.3f}")
            parts.append(f"- `{sid}`: " + ", ".join(cells) + ".")
    parts += ["", "## Single session", ""]
    models = list(next(iter(out["single"].values())))
    sessions = list(out["single"])
    parts.append("R2 on the test folds, mean over folds.")
    parts.append("")
    parts.append(_md_table(["model"] + [f"`{s}`" for s in sessions],
                           [[f"`{m}`"] + [f"{out['single'][s][m]['r2_mean']:.3f}" for s in sessions] for m in models]))
    for sid in sessions:
        info = out.get("sessions", {}).get(sid, {})
        desc = (f" ({info['units']} units, {info['trials']} trials, {info['seconds']:g} s"
                + (f"; {info['dataset']}" if info.get("dataset") else "") + ")") if info else ""
        parts += ["", f"`{sid}`{desc}, per fold:", ""]
        ss = out["single"][sid]
        parts.append(_md_table(["model", "mean"] + [f"fold {k}" for k in range(len(ss[models[0]]["r2_folds"]))],
                               [[f"`{m}`", f"{d['r2_mean']:.3f}"] + [f"{x:.3f}" for x in d["r2_folds"]] for m, d in ss.items()]))
        if info.get("possm_epochs"):
            parts += ["", "POSSM [epochs run, best validation epoch] per fold: "
                      + ", ".join(str(e) for e in info["possm_epochs"]) + "."]
    if out["transfer"]:
        parts += ["", "## Transfer: calibrating on a new session", ""]
        for sid, tr in out["transfer"].items():
            info = out.get("sessions", {}).get(sid, {})
            fr = list(next(iter(tr.values())))
            cal = info.get("calibration", {})
            parts += [f"`{sid}`, pretrained on " + ", ".join(f"`{s}`" for s in info.get("pretrained_on", [])) + "; R2 on the test "
                      f"folds (mean over {b['transfer_folds']} folds) vs the fraction of the fold's training trials"
                      + (" (" + ", ".join(f"{f}: {c['trials']:g} trials, {c['seconds']:g} s" for f, c in cal.items()) + ")" if cal else "")
                      + ":", ""]
            parts.append(_md_table(["method"] + [f"fraction {f}" for f in fr],
                                   [[METHOD_LABELS.get(m, m)] + [f"{d[f]['r2_mean']:.3f}" for f in fr] for m, d in tr.items()]))
            parts.append("")
    discussion = "_(no discussion yet: write it between the markers; it is kept when the report is regenerated)_"
    if old and DISCUSSION_START in old and DISCUSSION_END in old:
        discussion = old.split(DISCUSSION_START, 1)[1].split(DISCUSSION_END, 1)[0].strip("\n")
    parts += ["## Discussion", "", DISCUSSION_START, discussion, DISCUSSION_END, ""]
    return "\n".join(parts)


def write_report(out: dict, md_path: Path, *, write_json: bool = True) -> list[Path]:
    """The markdown, the PNG beside it and (``write_json``) the run's JSON beside it, which the report
    links to (``real-data.json`` for ``docs/real-data.md``)."""
    md_path = Path(md_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    png, js = md_path.with_suffix(".png"), md_path.with_suffix(".json")
    written = []
    if write_json:
        js.write_text(json.dumps(out, indent=1) + "\n")
        written.append(js)
    plot(out, png)
    old = md_path.read_text() if md_path.is_file() else None
    md_path.write_text(report_markdown(out, png.name, js.name, old))
    return [md_path, png] + written


def main(argv: list[str] | None = None) -> int:
    from possm_plugin.cli.formatter import HelpFormatter

    p = argparse.ArgumentParser(description="Re-render the real-data report from a saved JSON.",
                                formatter_class=HelpFormatter)
    p.add_argument("json", nargs="?", default=None, help="the benchmark's JSON (default: docs/real-data.json)")
    p.add_argument("--md", default=None, help="the markdown to write (default: beside the JSON, .md); the PNG goes beside it")
    args = p.parse_args(argv)
    src = Path(args.json) if args.json else DEFAULT_JSON
    out = json.loads(src.read_text())
    md = Path(args.md) if args.md else src.with_suffix(".md")
    same = md.with_suffix(".json").resolve() == src.resolve()
    for path in write_report(out, md, write_json=not same):
        print(f"wrote {path}", file=sys.stderr)
    print(tables(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
