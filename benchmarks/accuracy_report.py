"""Rendering of the accuracy benchmark's JSON: the text tables, the markdown report and its figure.

Works from the JSON alone (``accuracy.py --from-json``), so a saved run can be re-rendered. The
report keeps a hand-written discussion between two markers when it is regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path


def tables(out: dict) -> str:
    lines = []
    ss = out["single_session"]
    lines.append(f"single session: R2 on held-out trials (mean ± std over seeds {out['seeds']})")
    for m in ss:
        d = ss[m]
        lines.append(f"  {m:<14} {d['r2_mean']:7.3f} ± {d['r2_std']:.3f}   {' '.join(f'{x:6.3f}' for x in d['per_seed'])}")
    fr = list(next(iter(out["transfer"].values())))
    lines.append("")
    lines.append(f"transfer: R2 on held-out sessions vs fraction of calibration trials ({out['transfer_meta']['pretrained']['model']})")
    lines.append("  " + f"{'method':<10}" + "".join(f"{f:>9}" for f in fr))
    for m, d in out["transfer"].items():
        lines.append("  " + f"{m:<10}" + "".join(f"{d[f]:9.3f}" for f in fr))
    for g, gd in out["transfer_by_group"].items():
        lines.append(f"  [{g}]")
        for m, d in gd.items():
            lines.append("  " + f"  {m:<8}" + "".join(f"{d[f]:9.3f}" for f in fr))
    lines.append("")
    c, t = out["classification"], out["ctc"]
    lines.append(f"classification accuracy: possm {c['possm']:.3f}  gru_binned {c['gru_binned']:.3f}")
    lines.append(f"CTC token error rate:    possm {t['possm']:.3f}  gru_binned {t['gru_binned']:.3f}  (lower is better)")
    lines.append("")
    if out["real"]:
        lines.append(f"real (Chewie M1): R2 on held-out trials, {out['real_meta']['splits']} splits")
        for m, d in out["real"].items():
            lines.append(f"  {m:<14} {d['r2_mean']:7.3f} ± {d['r2_std']:.3f}   {' '.join(f'{x:6.3f}' for x in d['per_seed'])}")
    else:
        lines.append(f"real: skipped ({out['real_meta']['skipped']})")
    v = out["verdict"]
    lines.append("")
    lines.append(
        f"POSSM beats every baseline (single-session mean): {'YES' if v['possm_beats_every_baseline'] else 'NO'} "
        f"(best POSSM {v['best_possm']} {ss[v['best_possm']]['r2_mean']:.3f} vs best baseline {v['best_baseline']} "
        f"{ss[v['best_baseline']]['r2_mean']:.3f}, margin {v['margin_best_possm_minus_best_baseline']:+.3f})"
    )
    f = v["ui_full_fraction"]
    lines.append(
        f"UI at fraction {f}: {out['transfer']['ui'][f]:.3f} vs scratch {out['transfer']['scratch'][f]:.3f} "
        f"({v['ui_minus_scratch']:+.3f}) and FT {out['transfer']['ft'][f]:.3f} ({v['ui_minus_ft']:+.3f}); "
        f"within 0.05 of full training: {'YES' if v['ui_within_0.05_of_full_training'] else 'NO'} "
        f"(UI trains {100 * out['transfer_meta']['ui_trainable_fraction']:.2f} % of the parameters)"
    )
    if "meta" in out:
        m = out["meta"]
        lines.append(f"wall {m['wall_s']:.0f} s, CPU {m['cpu_s']:.0f} s in {m['jobs']} worker(s) x {m['threads']} thread(s); "
                     f"load average {m['load_avg_start']} -> {m['load_avg_end']}")
    return "\n".join(lines)


# =================================================================================================
# report
# =================================================================================================
DISCUSSION_START = "<!-- discussion:start (kept when the report is regenerated) -->"
DISCUSSION_END = "<!-- discussion:end -->"


def plot(out: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ss = out["single_session"]
    names = list(ss)
    means = [ss[m]["r2_mean"] for m in names]
    stds = [ss[m]["r2_std"] for m in names]
    colors = ["#1f77b4" if m.startswith("possm") else "#999999" for m in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
    for i, m in enumerate(names):
        ax.scatter([i] * len(ss[m]["per_seed"]), ss[m]["per_seed"], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_ylabel("R2 (held-out trials)")
    ax.set_title(f"single session ({len(out['seeds'])} seeds)")
    lo = min(0.0, min(means) - 0.05)
    ax.set_ylim(lo, 1.0)
    ax = axes[1]
    style = {"ui": ("C0", "o-"), "ft": ("C1", "s-"), "scratch": ("C2", "^-"), "wiener": ("C7", "d--")}
    for m, d in out["transfer"].items():
        fr = [float(f) for f in d]
        c, s = style.get(m, ("k", "o-"))
        ax.plot(fr, list(d.values()), s, color=c, label=m, lw=2)
        for _g, gd in out["transfer_by_group"].items():
            ax.plot(fr, list(gd[m].values()), s, color=c, alpha=0.3, lw=1)
    ax.set_xscale("log")
    ticks = [float(f) for f in next(iter(out["transfer"].values()))]
    ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fraction of calibration training trials")
    ax.set_ylabel("R2 (held-out trials)")
    ax.set_title("transfer (thin: per held-out group)")
    ax.legend()
    ax = axes[2]
    if out["real"]:
        r = out["real"]
        names = list(r)
        ax.bar(range(len(names)), [r[m]["r2_mean"] for m in names], yerr=[r[m]["r2_std"] for m in names],
               color=["#1f77b4" if m.startswith("possm") else "#999999" for m in names], capsize=3)
        for i, m in enumerate(names):
            ax.scatter([i] * len(r[m]["per_seed"]), r[m]["per_seed"], color="k", s=8, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
        ax.set_title(f"real: Chewie M1 ({out['real_meta']['splits']} splits)")
        ax.set_ylim(min(0.0, min(r[m]["r2_mean"] for m in names) - 0.05), 1.0)
    else:
        ax.text(0.5, 0.5, "real data not found", ha="center")
    fig.suptitle(f"possm-plugin accuracy benchmark ({out['suite']} mode)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def report_markdown(out: dict, png_name: str, old: str | None) -> str:
    ss, v, meta = out["single_session"], out["verdict"], out["meta"]
    fr = list(next(iter(out["transfer"].values())))
    parts = [
        "# Accuracy benchmark",
        "",
        f"Generated by `python benchmarks/accuracy.py {meta['argv']}` ({out['suite']} mode; "
        f"{meta['wall_s']:.0f} s wall, {meta['cpu_s']:.0f} s of CPU over {meta['jobs']} worker(s) x "
        f"{meta['threads']} thread(s) on {meta['cpus']} cores, load average {meta['load_avg_start']} at the start and "
        f"{meta['load_avg_end']} at the end; torch {meta['torch']}). The JSON of this run is "
        f"[`accuracy.json`](accuracy.json). Protocol: the docstring of [`benchmarks/accuracy.py`](../benchmarks/accuracy.py) and the notes below.",
        "",
        f"![accuracy]({png_name})",
        "",
        "## Verdict",
        "",
        f"- POSSM beats every baseline on the single-session mean: **{'yes' if v['possm_beats_every_baseline'] else 'no'}** "
        f"(best POSSM `{v['best_possm']}` {ss[v['best_possm']]['r2_mean']:.3f}, best baseline `{v['best_baseline']}` "
        f"{ss[v['best_baseline']]['r2_mean']:.3f}; margin {v['margin_best_possm_minus_best_baseline']:+.3f}).",
        f"- UI with all calibration trials (fraction {v['ui_full_fraction']}): {out['transfer']['ui'][v['ui_full_fraction']]:.3f} vs "
        f"training from scratch {out['transfer']['scratch'][v['ui_full_fraction']]:.3f} ({v['ui_minus_scratch']:+.3f}) and FT "
        f"{out['transfer']['ft'][v['ui_full_fraction']]:.3f} ({v['ui_minus_ft']:+.3f}); within 0.05 R2 of full training: "
        f"**{'yes' if v['ui_within_0.05_of_full_training'] else 'no'}**, training "
        f"{100 * out['transfer_meta']['ui_trainable_fraction']:.2f} % of the parameters.",
        f"- Classification accuracy POSSM − GRU: {v['classification_possm_minus_gru']:+.3f}; CTC token error rate POSSM − GRU: "
        f"{v['ctc_possm_minus_gru']:+.3f} (negative is better for POSSM).",
    ]
    if out["real"]:
        parts.append(f"- Real data (Chewie): best `{v['real_best']}`; POSSM − Wiener {v['real_possm_minus_wiener']:+.3f}.")
    parts += ["", "## Single session", "",
              f"R2 (mean of vx, vy) on the held-out 20 % of trials, mean ± std over seeds {out['seeds']}.", ""]
    bud = out.get("budget")
    if bud:
        parts += [f"Budgets ({bud['ss_duration_s']:g} s sessions): POSSM "
                  + ", ".join(f"{b} {n}" for b, n in bud["possm_steps"].items())
                  + f" optimiser steps of {bud['batch_size']} windows of 1 s (lr {bud['lr']:g}, flat then cosine; loss weights of "
                  + ("the recipe" if not isinstance(bud["phase_weights"], dict) else
                     "other/hold/reach chunks " + "/".join(f"{bud['phase_weights'].get(k, 1.0):g}" for k in ("other", "hold", "reach")))
                  + f"); POYO {bud['poyo']['steps']} steps of {bud['poyo']['batch_size']} windows "
                  f"(lr {bud['poyo']['lr']:g}); MLP and binned GRU "
                  + ", ".join(f"{k} {v}" for k, v in bud["baseline_epochs"].items()) + " epochs; Wiener and Kalman closed form. "
                  f"Classification: POSSM {bud['classification']['steps']} steps of {bud['classification']['batch_size']} trials, "
                  f"CTC {bud['ctc']['steps']} steps of {bud['ctc']['batch_size']}; their binned GRU {bud['seq_gru_epochs']} epochs.", ""]
    parts.append(_md_table(["model", "R2 mean", "R2 std", "per seed"],
                           [[f"`{m}`", f"{d['r2_mean']:.3f}", f"{d['r2_std']:.3f}", ", ".join(f"{x:.3f}" for x in d["per_seed"])]
                            for m, d in ss.items()]))
    tm = out["transfer_meta"]
    parts += ["", "## Transfer: sample efficiency on held-out sessions", "",
              f"Pretrained: {tm['pretrained']['model']}, {tm['pretrained']['n_parameters']:,} parameters, on "
              f"{len(tm['pretrained']['sessions'])} sessions of m0 ({', '.join(map(str, tm['pretrained']['units']))} units), "
              f"{tm['pretrained']['epochs']} epochs, validation R2 {tm['pretrained']['valid_r2']:.3f}. Held out: "
              + ", ".join(f"`{h['session']}` ({h['group']})" for h in tm["heldout"]) + ". "
              + f"{tm['scratch']}.", ""]
    rows = [[f"`{m}`"] + [f"{d[f]:.3f}" for f in fr] for m, d in out["transfer"].items()]
    parts.append(_md_table(["method (mean of all held-out sessions)"] + [f"fraction {f}" for f in fr], rows))
    for g, gd in out["transfer_by_group"].items():
        cal = tm["calibration"][g]
        parts += ["", f"`{g}` (calibration trials / seconds per fraction: "
                  + ", ".join(f"{f}: {c['trials']} / {c['seconds']} s" for f, c in cal.items()) + ")", ""]
        parts.append(_md_table(["method"] + [f"fraction {f}" for f in fr], [[f"`{m}`"] + [f"{d[f]:.3f}" for f in fr] for m, d in gd.items()]))
    parts += ["", "## Classification and CTC", "",
              _md_table(["task", "POSSM", "binned GRU"], [
                  ["handwriting (accuracy, higher is better)", f"{out['classification']['possm']:.3f}", f"{out['classification']['gru_binned']:.3f}"],
                  ["phonemes (token error rate, lower is better)", f"{out['ctc']['possm']:.3f}", f"{out['ctc']['gru_binned']:.3f}"]])]
    parts += ["", "## Real data: Chewie M1 centre-out", ""]
    if out["real"]:
        parts.append(f"R2 on held-out trials ({out['real_meta']['protocol']}; {out['real_meta']['splits']} splits).")
        parts.append("")
        parts.append(_md_table(["model", "R2 mean", "R2 std", "per split"],
                               [[f"`{m}`", f"{d['r2_mean']:.3f}", f"{d['r2_std']:.3f}", ", ".join(f"{x:.3f}" for x in d["per_seed"])]
                                for m, d in out["real"].items()]))
    else:
        parts.append(f"Skipped: {out['real_meta']['skipped']}.")
    discussion = "_(no discussion yet: write it between the markers; it is kept when the report is regenerated)_"
    if old and DISCUSSION_START in old and DISCUSSION_END in old:
        discussion = old.split(DISCUSSION_START, 1)[1].split(DISCUSSION_END, 1)[0].strip("\n")
    parts += ["", "## Discussion", "", DISCUSSION_START, discussion, DISCUSSION_END, ""]
    return "\n".join(parts)


def write_report(out: dict, md_path: Path) -> list[Path]:
    """The markdown, the PNG beside it, and the run's JSON beside it (``accuracy.json`` for
    ``docs/accuracy.md``: the file the report links to)."""
    png = md_path.with_suffix(".png")
    plot(out, png)
    old = md_path.read_text() if md_path.is_file() else None
    md_path.write_text(report_markdown(out, png.name, old))
    js = md_path.with_suffix(".json")
    js.write_text(json.dumps(out, indent=1) + "\n")
    return [md_path, png, js]
