"""Accuracy benchmark: POSSM against the baselines on a fixed, seeded simulated suite and one real session.

    python benchmarks/accuracy.py --quick             # tables (about 8 min on a 2-core machine)
    python benchmarks/accuracy.py --quick --json      # one JSON object on stdout, tables and progress on stderr
    python benchmarks/accuracy.py --quick --report    # also docs/accuracy.md and docs/accuracy.png
    python benchmarks/accuracy.py                     # full mode: proper sizes (~15-20 CPU-hours; or --device cuda)
    python benchmarks/accuracy.py --from-json docs/accuracy.json --report   # re-render a saved run
    python benchmarks/accuracy.py --smoke --json      # every code path, 1 epoch, tiny sessions (tests)

Sections (the protocol; the docs/accuracy.md report repeats it):

1. ``single_session``: for each seed, one simulated reaching session (``simulate_motor_session`` with
   ``seed = 1000 + seed``: the seed draws the animal, the session and the initialisation). Trials are
   split in time: the first 64 % train, the next 16 % validate (best epoch / ridge penalty), the last
   20 % are the test trials that no model sees. Baselines (wiener, kalman, mlp, gru_binned, poyo) and
   POSSM (small preset; gru, s4d, mamba backbones; trained by ``possm_plugin.training.train.fit``) are scored
   by R2 (mean of vx and vy) on the chunks of the test trials, all on the same 50 ms chunk grid and
   the same chunks. Every decoder runs over the whole session as a live decoder would (POSSM and the
   GRU from a fresh state at 0 s, carrying their state; Wiener/MLP/Kalman on lagged bins; POYO
   re-reading the last 1 s). POSSM trains with the package's recipe (``possm train``'s defaults: MSE,
   flat then cosine LR, AdamW, each spike's time inside its 50 ms chunk drawn anew per window, the weight
   average, unit dropout by task) for a budget of optimiser steps per backbone (``Suite.possm_steps``,
   about equal CPU time each), with every chunk weighted alike (``Suite.phase_weights``: R2 is scored on
   every chunk of the test trials and the baselines train on all of them alike; the recipe's reach x5 /
   hold x0.1 aims at reach-period R2); multi-session pretraining keeps units dropout 0.6. POYO and POSSM's CTC are
   budgeted in optimiser steps too: both sit on a plateau (R2 ~0; blanks only) for their first
   ~100-200 steps.
2. ``transfer``: a multi-session POSSM is pretrained on sessions 0..n-1 of subject ``m0``. It is then
   adapted to held-out sessions of ``m0`` and to sessions of a held-out subject ``m1`` (other tuning
   statistics, unit counts and neuron pool) by unit identification (``ui``: only the new unit and
   session embeddings train) and full fine-tuning (``ft``: UI, then everything at the recipe's lr), against a
   small POSSM trained from scratch (``scratch``) and a Wiener filter (``wiener``), at several
   fractions of the calibration session's training trials (the first trials in time; the test trials,
   the last 20 %, stay fixed).
3. ``classification`` (simulated handwriting, 10 characters: accuracy) and ``ctc`` (simulated
   phoneme sequences: token error rate, lower is better): POSSM against a binned-count GRU of the same
   shape as ``baselines.GRUDecoder`` (in ``accuracy_lib.py``: the baseline decodes regression only).
4. ``real``: the Chewie M1 centre-out session (``importers.binned.load_chewie``, counts turned into
   events spread evenly inside each 100 ms bin, as live sources do), k disjoint 80/20 splits by trials. Wiener
   (3 lags), Kalman and the binned GRU see the original 100 ms bins; POSSM sees the events in 50 ms
   chunks and is scored at the bin ends, on exactly the samples the others are scored on. Also the
   simulator-pretrained model of section 2 adapted to the session by UI and FT.

Code: this file (jobs, scheduling, the JSON), ``accuracy_suites.py`` (the quick, full and smoke sizes),
``accuracy_lib.py`` (sessions, training, scoring, the binned GRU for classification/CTC),
``accuracy_report.py`` (tables, markdown, figure).
Jobs run in ``--jobs`` worker processes (default: 2 on a machine with 2+ cores), each with
``--threads`` torch threads (default 1): every job seeds itself, so results do not depend on the
number of workers. Progress and timing go to stderr; CPU seconds of all jobs are reported, which is
about what a clean machine needs per core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # the benchmark's own modules, when imported from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_lib as lib  # noqa: E402
import accuracy_report as report  # noqa: E402
from accuracy_lib import (  # noqa: E402
    DATA_NAME,
    REPO,
    VALID_FRACTION,
    SeqGRU,
    _log,
    adapt_possm,
    chewie,
    find_real_data,
    first_trials,
    fit_baseline,
    model_spec,
    motor_session,
    r2_baseline,
    r2_possm,
    real_split,
    seq_session,
    split_counts,
    train_possm,
)
from accuracy_suites import FULL, QUICK, SMOKE, SUITES, Suite  # noqa: E402, F401  (re-exported)
from bench_util import init_torch_worker, run_jobs  # noqa: E402

BASELINES = ("wiener", "kalman", "mlp", "gru_binned", "poyo")
BACKBONES = ("gru", "s4d", "mamba")
SS_MODELS = BASELINES + tuple(f"possm_{b}" for b in BACKBONES)
TRANSFER_METHODS = ("ui", "ft", "scratch", "wiener")
REAL_MODELS = ("wiener", "kalman", "gru_binned", "possm", "possm_ui", "possm_ft")


# =================================================================================================
# jobs (each runs in a worker process; plain arguments in, a JSON-able dict out)
# =================================================================================================
def job_single(suite: Suite, model_name: str, seed: int) -> dict:
    from possm_plugin.baselines.binning import TrialSubset

    s = motor_session(1000 + seed, "m0", 0, suite.ss_duration_s)
    n_tv, n_test = split_counts(len(s.trials))
    n_valid = int(round(n_tv * VALID_FRACTION))
    test = np.arange(n_tv, n_tv + n_test)
    if model_name.startswith("possm_"):
        backbone = model_name.split("_", 1)[1]
        model, info = train_possm(suite, model_spec(suite, backbone), [first_trials(s, n_tv)],
                                  seed=seed, steps=suite.possm_steps[backbone])
        return {"r2": r2_possm(model, s, test), **info}
    train, valid = TrialSubset(s, np.arange(n_tv - n_valid)), TrialSubset(s, np.arange(n_tv - n_valid, n_tv))
    dec = fit_baseline(suite, model_name, train, valid, seed=seed)
    return {"r2": r2_baseline(dec, s, test)}


def heldout_session(suite: Suite, subject: str, index: int):
    idx = suite.pretrain_sessions + (-index - 1) if index < 0 else index
    return motor_session(0, subject, idx, suite.transfer_duration_s)


def job_pretrain(suite: Suite, out_dir: str) -> dict:
    from possm_plugin.model.checkpoint import save_checkpoint

    sessions = [motor_session(0, "m0", i, suite.pretrain_duration_s) for i in range(suite.pretrain_sessions)]
    model, info = train_possm(suite, model_spec(suite, "gru", suite.pretrain_model), sessions, seed=0,
                              steps=suite.pretrain_steps, batch_size=suite.pretrain_batch_size)
    valid = []  # fit's validation trials: the last 20 % of each pretraining session
    for s in sessions:
        k = len(s.trials)
        valid.append(r2_possm(model, s, np.arange(k - int(round(k * VALID_FRACTION)), k)))
    valid = float(np.mean(valid))
    path = save_checkpoint(model, Path(out_dir) / "pretrained", meta={"benchmark": "accuracy", "suite": suite.name})
    return {"checkpoint": str(path), "valid_r2": valid, "sessions": [s.session_id for s in sessions],
            "units": [s.n_units for s in sessions], **info}


def job_transfer(suite: Suite, group: str, subject: str, index: int, method: str, fraction: float,
                 checkpoint: str | None) -> dict:
    from possm_plugin.baselines.binning import TrialSubset

    s = heldout_session(suite, subject, index)
    n_tv, n_test = split_counts(len(s.trials))
    test = np.arange(n_tv, n_tv + n_test)
    n_cal = min(n_tv, max(3, int(round(fraction * n_tv))))
    cal = first_trials(s, n_cal)
    seed = 7
    if method == "wiener":
        n_valid = max(1, int(round(n_cal * VALID_FRACTION)))
        dec = fit_baseline(suite, "wiener", TrialSubset(s, np.arange(n_cal - n_valid)),
                           TrialSubset(s, np.arange(n_cal - n_valid, n_cal)), seed=seed)
        r2 = r2_baseline(dec, s, test)
        info = {}
    elif method == "scratch":
        model, info = train_possm(suite, model_spec(suite, "gru"), [cal], seed=seed, steps=suite.adapt_steps)
        r2 = r2_possm(model, s, test)
    else:
        model, info = adapt_possm(suite, checkpoint, [cal], mode=method, seed=seed, steps=suite.adapt_steps)
        r2 = r2_possm(model, s, test)
    return {"r2": r2, "session": s.session_id, "n_units": s.n_units, "calibration_trials": n_cal,
            "calibration_s": float(s.trials[n_cal - 1, 1] - s.trials[0, 0]), **info}


def job_sequence(suite: Suite, task: str, model_name: str) -> dict:
    from possm_plugin.data.prepared import prepare_sessions
    from possm_plugin.training.evaluate import evaluate_prepared

    s = seq_session(task, 0, suite.cls_duration_s if task == "classification" else suite.ctc_duration_s)
    n_tv, n_test = split_counts(len(s.trials))
    n_valid = int(round(n_tv * VALID_FRACTION))
    metric = "accuracy" if task == "classification" else "token_error_rate"
    if model_name == "possm":
        steps, bs = (suite.seq_steps, suite.seq_batch_size) if task == "classification" else (suite.ctc_steps, suite.ctc_batch_size)
        model, info = train_possm(suite, model_spec(suite, "gru"), [first_trials(s, n_tv)], seed=0, steps=steps, batch_size=bs)
        ps = prepare_sessions(model, [s], valid_fraction=0.0, test_fraction=n_test / len(s.trials))
        if len(ps[0].split["test"]) != n_test:  # the same test trials as the GRU's, or the comparison is off
            raise RuntimeError(f"test split of {len(ps[0].split['test'])} trials, expected {n_test}")
        return {metric: evaluate_prepared(model, ps, split="test", device=next(model.parameters()).device)[metric], **info}
    gru = SeqGRU(task, s.n_classes).fit(s, np.arange(n_tv - n_valid), np.arange(n_tv - n_valid, n_tv),
                                        epochs=suite.seq_gru_epochs, seed=0)
    return {metric: gru.score(s, np.arange(n_tv, n_tv + n_test))}


def job_real(suite: Suite, path: str, split: int, model_name: str, checkpoint: str | None) -> dict:
    from possm_plugin.baselines.binning import TrialSubset

    train, test = real_split(path, split)
    bin_s = float(chewie(path).meta["import"]["bin_s"])
    test_trials = np.arange(len(test.trials))
    seed = split
    if model_name in ("wiener", "kalman", "gru_binned"):
        k = len(train.trials)
        n_valid = int(round(k * VALID_FRACTION))
        dec = fit_baseline(suite, model_name, TrialSubset(train, np.arange(k - n_valid)),
                           TrialSubset(train, np.arange(k - n_valid, k)), seed=seed, width=bin_s)
        return {"r2": r2_baseline(dec, test, test_trials)}
    if model_name == "possm":
        model, info = train_possm(suite, model_spec(suite, "gru"), [train], seed=seed, steps=suite.real_steps)
    else:
        model, info = adapt_possm(suite, checkpoint, [train], mode=model_name.split("_")[1], seed=seed,
                                  steps=suite.real_steps)
    return {"r2": r2_possm(model, test, test_trials, grid=bin_s), **info}


JOBS = {"single": job_single, "pretrain": job_pretrain, "transfer": job_transfer, "sequence": job_sequence,
        "real": job_real}


def run_job(kind: str, suite_name: str, args: tuple) -> tuple[dict, float, float]:
    """Run one job; returns (result, wall seconds, CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = JOBS[kind](SUITES[suite_name], *args)
    return out, time.perf_counter() - t0, time.process_time() - c0


# =================================================================================================
# orchestration
# =================================================================================================
def plan(suite: Suite, real_path: Path | None) -> list[tuple[str, tuple, tuple]]:
    """(kind, args, key) of the independent jobs, longest first; the pretrain-dependent jobs are
    made by :func:`dependent_jobs`."""
    jobs = [("pretrain", (None,), ("pretrain",))]
    for task in ("classification", "ctc"):
        for m in ("possm", "gru_binned"):
            jobs.append(("sequence", (task, m), ("sequence", task, m)))
    for seed in suite.seeds:
        for m in SS_MODELS:
            jobs.append(("single", (m, seed), ("single", m, seed)))
    for group, subject, index in suite.heldout:
        for f in suite.fractions:
            for m in ("scratch", "wiener"):
                jobs.append(("transfer", (group, subject, index, m, f, None), ("transfer", group, subject, index, m, f)))
    if real_path is not None:
        for split in range(suite.real_splits):
            for m in ("possm", "wiener", "kalman", "gru_binned"):
                jobs.append(("real", (str(real_path), split, m, None), ("real", m, split)))
    jobs.sort(key=lambda j: -job_cost(suite, j[0], j[1]))  # longest first: the two workers end together
    return jobs


def job_cost(suite: Suite, kind: str, args: tuple) -> float:
    """A rough cost (about CPU seconds on the quick suite's machine), for scheduling only."""
    if kind == "pretrain":
        return math.inf
    b = suite.batch_size / 16
    if kind == "single":
        m = args[0]
        if m == "poyo":
            return 0.19 * suite.poyo_steps * suite.poyo_batch_size / 16
        per_step = {"possm_gru": 0.1, "possm_s4d": 0.25, "possm_mamba": 0.22}.get(m)
        return per_step * suite.possm_steps[m.split("_", 1)[1]] * b if per_step else 2.0
    if kind == "sequence":
        task, m = args
        if m != "possm":
            return 0.4 * suite.seq_gru_epochs
        if task == "ctc":
            return 0.17 * suite.ctc_steps * suite.ctc_batch_size / 8
        return 0.37 * suite.seq_steps * suite.seq_batch_size / 32
    if kind == "real":
        return 0.06 * suite.real_steps * b if "possm" in args[2] else 1.0
    m, f = args[3], args[4]
    return 1.0 if m == "wiener" else 0.25 * suite.adapt_steps * b * min(1.0, 0.2 + f)


def dependent_jobs(suite: Suite, real_path: Path | None, checkpoint: str) -> list[tuple[str, tuple, tuple]]:
    jobs = []
    for group, subject, index in suite.heldout:
        for f in suite.fractions:
            for m in ("ui", "ft"):
                jobs.append(("transfer", (group, subject, index, m, f, checkpoint), ("transfer", group, subject, index, m, f)))
    if real_path is not None:
        for split in range(suite.real_splits):
            for m in ("possm_ui", "possm_ft"):
                jobs.append(("real", (str(real_path), split, m, checkpoint), ("real", m, split)))
    return jobs


def execute(suite: Suite, real_path: Path | None, *, jobs: int, threads: int, workdir: str) -> tuple[dict, dict]:
    """Run every job; returns ({key: result}, timing)."""
    todo = plan(suite, real_path)
    todo[0] = ("pretrain", (workdir,), ("pretrain",))
    total = len(todo) + len(dependent_jobs(suite, real_path, ""))

    def then(key, out) -> list[tuple]:
        return dependent_jobs(suite, real_path, out["checkpoint"]) if key == ("pretrain",) else []

    return run_jobs(todo, run_job, suite.name, jobs=jobs, threads=threads, init_worker=init_torch_worker, log=_log,
                    total=total, then=then, keys=("r2", "accuracy", "token_error_rate", "valid_r2", "epochs"))


# =================================================================================================
# summary
# =================================================================================================
def _ms(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"r2_mean": round(float(v.mean()), 4), "r2_std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
            "per_seed": [round(float(x), 4) for x in v]}


def summarize(suite: Suite, results: dict, real_path: Path | None) -> dict:
    out: dict = {"suite": suite.name, "seeds": list(suite.seeds)}
    out["single_session"] = {m: _ms([results[("single", m, s)]["r2"] for s in suite.seeds]) for m in SS_MODELS}
    by_group: dict = {}
    for group, subject, index in suite.heldout:
        g = by_group.setdefault(group, {m: {} for m in TRANSFER_METHODS})
        for m in TRANSFER_METHODS:
            for f in suite.fractions:
                g[m].setdefault(str(f), []).append(results[("transfer", group, subject, index, m, f)]["r2"])
    out["transfer"] = {m: {str(f): round(float(np.mean([results[("transfer", g, su, i, m, f)]["r2"] for g, su, i in suite.heldout])), 4)
                           for f in suite.fractions} for m in TRANSFER_METHODS}
    out["transfer_by_group"] = {g: {m: {f: round(float(np.mean(v)), 4) for f, v in d.items()} for m, d in gd.items()}
                                for g, gd in by_group.items()}
    pre = results[("pretrain",)]
    ui_frac = [results[("transfer", g, su, i, "ui", 1.0 if 1.0 in suite.fractions else suite.fractions[-1])]["trainable_fraction"]
               for g, su, i in suite.heldout]
    cal = {}
    for g, su, i in suite.heldout:
        for f in suite.fractions:
            r = results[("transfer", g, su, i, "scratch", f)]
            cal.setdefault(g, {})[str(f)] = {"trials": r["calibration_trials"], "seconds": round(r["calibration_s"], 1), "units": r["n_units"]}
    out["transfer_meta"] = {
        "pretrained": {"model": suite.pretrain_label, "n_parameters": pre["n_parameters"], "sessions": pre["sessions"],
                       "units": pre["units"], "epochs": pre["epochs"], "valid_r2": round(pre["valid_r2"], 4)},
        "heldout": [{"group": g, "session": results[("transfer", g, su, i, "ui", suite.fractions[-1])]["session"]} for g, su, i in suite.heldout],
        "ui_trainable_fraction": round(float(np.mean(ui_frac)), 5),
        "calibration": cal,
        "scratch": "small POSSM (gru) trained on the calibration trials only; wiener: ridge on the same trials",
    }
    out["classification"] = {m: round(results[("sequence", "classification", m)]["accuracy"], 4) for m in ("possm", "gru_binned")}
    out["ctc"] = {m: round(results[("sequence", "ctc", m)]["token_error_rate"], 4) for m in ("possm", "gru_binned")}
    if real_path is not None:
        out["real"] = {m: _ms([results[("real", m, k)]["r2"] for k in range(suite.real_splits)]) for m in REAL_MODELS}
        out["real_meta"] = {"file": real_path.name, "splits": suite.real_splits,
                            "protocol": "5 disjoint 80/20 folds of the shuffled trials (seed 0), the first `splits` used"}
    else:
        out["real"] = {}
        out["real_meta"] = {"skipped": f"{DATA_NAME} not found (neither bundled with the package nor at --data)"}
    # how far POSSM's training got: epochs run and the best validation epoch (0-based), per seed / split
    def ep(r: dict) -> list:
        return [r["epochs"], r["best_epoch"]]

    out["training_epochs"] = {
        "single_session": {m: [ep(results[("single", m, s)]) for s in suite.seeds] for m in SS_MODELS if m.startswith("possm_")},
        "sequence": {t: ep(results[("sequence", t, "possm")]) for t in ("classification", "ctc")},
        "pretrained": ep(pre),
        "note": "[epochs, best epoch]; a best epoch at the end means training was still improving",
    }
    if real_path is not None:
        out["training_epochs"]["real"] = {m: [ep(results[("real", m, k)]) for k in range(suite.real_splits)]
                                          for m in ("possm", "possm_ui", "possm_ft")}
    out["budget"] = {
        "possm_steps": dict(suite.possm_steps), "batch_size": suite.batch_size, "lr": suite.lr,
        "phase_weights": suite.phase_weights or "recipe", "ss_duration_s": suite.ss_duration_s,
        "poyo": {"steps": suite.poyo_steps, "batch_size": suite.poyo_batch_size, "lr": suite.poyo_lr},
        "baseline_epochs": dict(suite.baseline_epochs),
        "pretrain": {"steps": suite.pretrain_steps, "batch_size": suite.pretrain_batch_size},
        "adapt_steps": suite.adapt_steps, "real_steps": suite.real_steps,
        "classification": {"steps": suite.seq_steps, "batch_size": suite.seq_batch_size},
        "ctc": {"steps": suite.ctc_steps, "batch_size": suite.ctc_batch_size}, "seq_gru_epochs": suite.seq_gru_epochs,
    }
    out["verdict"] = verdict(out)
    return out


def verdict(out: dict) -> dict:
    ss = out["single_session"]
    base = {m: ss[m]["r2_mean"] for m in BASELINES}
    poss = {m: ss[m]["r2_mean"] for m in SS_MODELS if m.startswith("possm_")}
    best_base = max(base, key=base.get)
    best_possm = max(poss, key=poss.get)
    tr = out["transfer"]
    full = max(tr["ui"], key=float)
    v = {
        "best_baseline": best_base,
        "best_possm": best_possm,
        "possm_beats_every_baseline": bool(poss[best_possm] >= base[best_base]),
        "possm_backbones_beating_every_baseline": [m for m in poss if poss[m] >= base[best_base]],
        "margin_best_possm_minus_best_baseline": round(poss[best_possm] - base[best_base], 4),
        "ui_full_fraction": full,
        "ui_minus_scratch": round(tr["ui"][full] - tr["scratch"][full], 4),
        "ui_minus_ft": round(tr["ui"][full] - tr["ft"][full], 4),
        "ui_within_0.05_of_full_training": bool(tr["ui"][full] >= max(tr["scratch"][full], tr["ft"][full]) - 0.05),
        "classification_possm_minus_gru": round(out["classification"]["possm"] - out["classification"]["gru_binned"], 4),
        "ctc_possm_minus_gru": round(out["ctc"]["possm"] - out["ctc"]["gru_binned"], 4),
    }
    if out["real"]:
        r = {m: d["r2_mean"] for m, d in out["real"].items()}
        v["real_best"] = max(r, key=r.get)
        v["real_possm_minus_wiener"] = round(r["possm"] - r["wiener"], 4)
    return v


# =================================================================================================
# CLI
# =================================================================================================
def build_parser() -> argparse.ArgumentParser:
    from possm_plugin.cli.formatter import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], formatter_class=HelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick suite (about 8 min on a clean 2-core machine)")
    mode.add_argument("--smoke", action="store_true", help="every code path with 1 epoch on tiny sessions (for tests)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (tables go to stderr)")
    p.add_argument("--report", nargs="?", const=str(REPO / "docs" / "accuracy.md"), default=None, metavar="MD",
                   help="write the markdown report (and a PNG beside it); default path docs/accuracy.md")
    p.add_argument("--save-json", default=None, metavar="PATH", help="also write the JSON to PATH")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the tables (and with --report write the report) of a saved JSON")
    p.add_argument("--data", default=None, metavar="PATH",
                   help=f"the Chewie recording {DATA_NAME}, or a folder holding it (default: the one bundled with the package)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--device", default="cpu", help="device of the POSSM jobs (e.g. cuda; baselines stay on the CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        out = json.loads(Path(args.from_json).read_text())
        print(report.tables(out), file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.report:
            for p in report.write_report(out, Path(args.report)):
                _log(f"wrote {p}")
        if args.json:
            print(json.dumps(out), flush=True)
        return 0
    lib.DEVICE = os.environ["POSSM_BENCH_DEVICE"] = args.device  # spawned workers read it from the environment
    suite = SMOKE if args.smoke else QUICK if args.quick else FULL
    real_path = find_real_data(args.data)
    if real_path is None:
        _log(f"note: {DATA_NAME} not found; the real-data section is skipped")
    load0 = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    _log(f"accuracy benchmark, {suite.name} mode: {args.jobs} worker(s) x {args.threads} thread(s), load average {load0}")
    with tempfile.TemporaryDirectory(prefix="possm-acc-") as workdir:
        results, timing = execute(suite, real_path, jobs=max(1, args.jobs), threads=max(1, args.threads), workdir=workdir)
    out = summarize(suite, results, real_path)
    import torch

    out["meta"] = {
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(timing["cpu_s"], 1),
        "jobs": args.jobs,
        "threads": args.threads,
        "device": args.device,
        "cpus": os.cpu_count(),
        "load_avg_start": load0,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "job_seconds": timing["jobs"],
    }
    text = report.tables(out)
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.report:
        for p in report.write_report(out, Path(args.report)):
            _log(f"wrote {p}")
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
