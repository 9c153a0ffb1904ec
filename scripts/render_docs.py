"""Render the figures of the README and the docs from the benchmark results committed in ``docs/``.

Two kinds of generated text:

- **whole reports**: ``docs/accuracy.md``, ``docs/real-data.md`` and ``docs/closed-loop.md`` from the JSON
  beside them, by the benchmarks' own report renderers (``benchmarks/accuracy_report.py``,
  ``benchmarks/real_report.py``, ``benchmarks/closed_loop.py``), which keep the hand-written discussion
  after their markers;
- **figure blocks** in ``README.md`` and ``docs/*.md``, between ``<!-- figures:NAME -->`` and
  ``<!-- /figures -->``, each rendered by the function ``NAME`` of :data:`BLOCKS` from its JSON (the
  latency, BRAND and soak figures by ``scripts/latency_figures.py`` from ``latency.json``,
  ``brand-latency.json`` and ``soak.json``, each of which names the command that regenerates it; the
  bundled checkpoint's from its own YAML).

    python scripts/render_docs.py            # rewrite whatever is stale
    python scripts/render_docs.py --check    # exit 1, naming each stale page or block (tests run this)

Figures outside these blocks are not checked: put a figure in a block, with its JSON in ``docs/``, or
leave it out of the README. The plots (PNG) are redrawn by the benchmarks' ``--report``, not here.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import tempfile
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # latency_figures.py beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency_figures as lat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COMMAND = "python scripts/render_docs.py"
MODEL_NAMES = {"kalman": "Kalman", "mlp": "MLP", "gru_binned": "binned GRU", "wiener": "Wiener"}
BLOCK = re.compile(r"(<!-- figures:([\w-]+) -->\n)(.*?)(<!-- /figures -->)", re.DOTALL)


def _json(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def _bundled_checkpoint(name: str = "default") -> tuple[dict, int]:
    """A bundled checkpoint's YAML and its parameter count, read from the safetensors header (no torch)."""
    import yaml

    assets = ROOT / "possm_plugin" / "assets"
    doc = yaml.safe_load((assets / f"{name}.yaml").read_text())
    raw = (assets / f"{name}.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    count = 0
    for key, t in header.items():
        if key != "__metadata__":
            size = 1
            for d in t["shape"]:
                size *= d
            count += size
    return doc, count


# -- figure blocks: NAME -> text (without the markers) -------------------------------------------------
def checkpoint() -> str:
    doc, n_params = _bundled_checkpoint()
    valid = doc["meta"]["valid"]
    sessions = ", ".join(f"{s} {r:.3f}" for s, r in valid["r2_per_session"].items())
    return (f"- Bundled checkpoint: small {doc['model']['backbone'].upper()} POSSM, {n_params / 1e6:.2f}M parameters, "
            f"validation R2 {valid['r2']:.3f} on held-out simulated trials ({sessions}); how it was trained: "
            f"[the bundled checkpoint](docs/default-checkpoint.md).\n")


def demo() -> str:
    d = _json("demo.json")
    names = _bundled_checkpoint()[0]["model"]["output_names"]
    r2, node = d["r2"], d["node_summary"]
    per = ", ".join(f"{n} {r2[f'r2_{i}']:.2f}" for i, n in enumerate(names))
    return (f"- One live run of `possm demo` ({d['duration_s']:g} s of simulated spike {d['form']} over LSL, the bundled "
            f"checkpoint): R2 {r2['mean']:.2f} ({per}) against the true velocity, {node['spikes_decoded']:,} spikes decoded, "
            f"{node['spikes_dropped']} dropped; runs differ by a few hundredths of R2 ([docs/demo.json](docs/demo.json)).\n")


def real_data() -> str:
    d = _json("real-data.json")
    single, transfer, verdict = d["single"], d["transfer"], d["verdict"]
    sids = list(single)
    both = " and ".join
    others = [m for m in next(iter(single.values())) if m not in ("possm", "wiener")]
    above_all = all(all(single[s]["possm"]["r2_mean"] > single[s][m]["r2_mean"] for m in others) for s in sids)
    won = [verdict[s]["possm_folds_won_vs_wiener"] for s in sids]
    ui = [transfer[s]["ui"]["0.25"]["r2_mean"] for s in sids]
    wi = [transfer[s]["wiener"]["0.25"]["r2_mean"] for s in sids]
    sc = [transfer[s]["scratch"]["0.25"]["r2_mean"] for s in sids]
    ft = {fr: [transfer[s]["ft"][fr]["r2_mean"] for s in sids] for fr in ("0.1", "0.25")}
    sc10 = [transfer[s]["scratch"]["0.1"]["r2_mean"] for s in sids]
    possm = [single[s]["possm"]["r2_mean"] for s in sids]
    wiener = [single[s]["wiener"]["r2_mean"] for s in sids]
    return (f"- Real recordings ({len(sids)} bundled Chewie M1 sessions, {d['budget']['folds']}-fold cross-validation by trials, "
            f"nothing tuned per session, [docs/real-data.md](docs/real-data.md)): POSSM trained by `possm train`'s defaults "
            f"R2 {both(f'{x:.3f}' for x in possm)} against the Wiener filter's "
            f"{both(f'{x:.3f}' for x in wiener)}, above it on {both(won)} folds"
            + (f", and above {', '.join(MODEL_NAMES.get(m, m) for m in others)}" if above_all else "") + ". With 25 % of the training trials, unit "
            f"identification after pretraining on the other day gives {both(f'{x:.3f}' for x in ui)} against Wiener "
            f"{both(f'{x:.3f}' for x in wi)} and POSSM from scratch {both(f'{x:.3f}' for x in sc)}; full fine-tuning after "
            f"that pretraining gives {both(f'{x:.3f}' for x in ft['0.25'])} (at 10 %: {both(f'{x:.3f}' for x in ft['0.1'])} against "
            f"scratch {both(f'{x:.3f}' for x in sc10)}).\n")


def accuracy() -> str:
    d = _json("accuracy.json")
    ss, tr, tm = d["single_session"], d["transfer"], d["transfer_meta"]
    full = d["verdict"]["ui_full_fraction"]
    cls, ctc = d["classification"], d["ctc"]
    return (f"- Accuracy on simulated sessions ({d['suite']} budget, [docs/accuracy.md](docs/accuracy.md), every POSSM fit "
            f"with `possm train`'s recipe): single session POSSM-GRU {ss['possm_gru']['r2_mean']:.3f} vs binned GRU "
            f"{ss['gru_binned']['r2_mean']:.3f} / MLP {ss['mlp']['r2_mean']:.3f} / Wiener {ss['wiener']['r2_mean']:.3f}; on "
            f"held-out sessions with all calibration trials, unit identification {tr['ui'][full]:.3f} training "
            f"{100 * tm['ui_trainable_fraction']:.2f} % of the parameters, vs fine-tuning {tr['ft'][full]:.3f} and "
            f"training from scratch {tr['scratch'][full]:.3f}. Classification accuracy {cls['possm']:.3f} vs binned GRU "
            f"{cls['gru_binned']:.3f}; CTC token error rate (lower is better) {ctc['possm']:.3f} vs {ctc['gru_binned']:.3f}.\n")


def chewie_wiener() -> str:
    d = _json("real-data.json")
    per = " and ".join(f"{v['wiener']['r2_mean']:.3f} on `{s}`" for s, v in d["single"].items())
    return (f"- The Wiener filter of the real-data benchmark ({d['budget']['folds']}-fold cross-validation by trials, "
            f"[real-data.md](real-data.md)) reaches R2 {per} (mean over x and y).\n")


def default_checkpoint(name: str = "default", what: str = "simulated motor-cortex sessions") -> str:
    doc, n_params = _bundled_checkpoint(name)
    meta, names = doc["meta"], doc["model"]["output_names"]
    valid, units = meta["valid"], doc["session_units"]
    per = "; ".join(f"`{s}` {r:.3f} ({', '.join(f'{n} {x:.3f}' for n, x in zip(names, valid['r2_per_output'][s]))})"
                    for s, r in valid["r2_per_session"].items())
    sessions = " and ".join(f"`{s}`, {len(units[s])} units" for s in doc["session_ids"])
    return (f"A small {doc['model']['backbone'].upper()} POSSM ({n_params / 1e6:.2f}M parameters) trained on "
            f"{len(doc['session_ids'])} {what} ({sessions}), default session `{doc['default_session']}`. "
            f"Its YAML records the run: {meta['train']['epochs']} epochs, best validation R2 {valid['r2']:.3f} at epoch "
            f"{meta['epoch']} (mean over {' and '.join(names)} and over the sessions, the held-out last "
            f"{100 * meta['train']['valid_fraction']:g} % of trials decoded continuously): {per}.\n")


def _latency(fn):
    return lambda: fn(_json("latency.json"))


def real_data_dev() -> str:
    """The development runs behind the recipe and the transfer experiments (docs/real-data-dev.json)."""
    d = _json("real-data-dev.json")
    a, b = (f"`{x}`" for x in d["sessions"])
    lines = [d["about"], "", d["recipe"]["about"], "", f"| change | {a} | {b} |", "| --- | --- | --- |"]
    lines += [f"| {r['change']} | {r['r2'][0]:.3f} | {r['r2'][1]:.3f} |" for r in d["recipe"]["rows"]]
    lines += ["", d["transfer"]["about"], "", f"| variant | budget | {a} | {b} |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['budget']} | {r['r2'][0]:.3f} | {r['r2'][1]:.3f} |" for r in d["transfer"]["rows"]]
    return "\n".join(lines) + "\n"


def accuracy_dev() -> str:
    """The development runs behind the accuracy benchmark's POSSM settings (docs/accuracy-dev.json)."""
    d = _json("accuracy-dev.json")
    lines = [d["about"]]
    for key in ("single", "classification", "ctc", "transfer"):
        sec = d[key]
        lines += ["", sec["about"], "", "| setting | result |", "| --- | --- |"]
        for r in sec["rows"]:
            v = r["value"]
            lines.append(f"| {r['setting']} | {' / '.join(f'{x:.3f}' for x in v) if isinstance(v, list) else f'{v:.3f}'} |")
    return "\n".join(lines) + "\n"


BLOCKS = {"checkpoint": checkpoint, "real-data-dev": real_data_dev, "accuracy-dev": accuracy_dev, "demo": demo, "real-data": real_data, "accuracy": accuracy,
          "default-checkpoint": default_checkpoint, "chewie-wiener": chewie_wiener,
          "chewie-checkpoint": lambda: default_checkpoint("chewie", "bundled real motor-cortex recordings"),
          "latency": lambda: lat.readme_latency(_json("latency.json"), _json("brand-latency.json")),
          "lsl-compute": _latency(lat.lsl_compute), "lsl-end-to-end": _latency(lat.lsl_end_to_end),
          "lsl-findings": _latency(lat.lsl_findings), "model-sizes": _latency(lat.model_sizes),
          "brand-latency": lambda: lat.brand_latency(_json("brand-latency.json")),
          "soak": lambda: lat.soak(_json("soak.json"))}


# -- whole reports ----------------------------------------------------------------------------------------
def _reports() -> dict[Path, str]:
    """Each generated report page -> its text rendered from its JSON (the discussion kept)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import accuracy_report
        import closed_loop
        import real_report
    finally:
        sys.path.pop(0)
    acc, real, loop = DOCS / "accuracy.md", DOCS / "real-data.md", DOCS / "closed-loop.md"
    with tempfile.TemporaryDirectory() as tmp:  # closed_loop.write_report draws its figure too: keep it out of docs/
        md = Path(tmp) / loop.name
        md.write_text(loop.read_text())
        closed_loop.write_report(_json("closed-loop.json"), md, md.with_suffix(".png"))
        loop_text = md.read_text()
    return {
        acc: accuracy_report.report_markdown(_json("accuracy.json"), "accuracy.png", acc.read_text()),
        real: real_report.report_markdown(_json("real-data.json"), "real-data.png", "real-data.json", real.read_text()),
        loop: loop_text,
    }


def render_blocks(text: str, *, where: str = "") -> str:
    """``text`` with every figure block re-rendered (an unknown block name is an error)."""
    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"render_docs: {where}: unknown figure block {name!r} (known: {', '.join(BLOCKS)})")
        return m.group(1) + BLOCKS[name]() + m.group(4)
    return BLOCK.sub(sub, text)


def rendered() -> dict[Path, str]:
    """Every page that holds generated text -> what it should hold."""
    out = _reports()
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = out.get(page, page.read_text())
        if BLOCK.search(text):
            out[page] = render_blocks(text, where=str(page.relative_to(ROOT)))
    return out


def stale() -> list[str]:
    """What differs from its rendering: pages, and the names of the stale blocks in them."""
    found = []
    for page, text in rendered().items():
        old = page.read_text()
        if old == text:
            continue
        old_blocks = {m.group(2): m.group(3) for m in BLOCK.finditer(old)}
        new_blocks = {m.group(2): m.group(3) for m in BLOCK.finditer(text)}
        names = [n for n in new_blocks if old_blocks.get(n) != new_blocks[n]]
        what = f"figure block(s) {', '.join(names)}" if names else "the page rendered from its JSON"
        found.append(f"{page.relative_to(ROOT)}: {what}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page differs from its rendering")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for b in bad:
            print(f"stale: {b}", file=sys.stderr)
        if bad:
            print(f"regenerate with: {COMMAND}", file=sys.stderr)
        return 1 if bad else 0
    for page, text in rendered().items():
        if page.read_text() != text:
            page.write_text(text)
            print(f"rendered {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
