"""Real-data benchmark: POSSM against the baselines on real recordings, by cross-validation over trials,
and how well a model pretrained on the other recordings adapts to a new one.

    python benchmarks/real.py --quick                 # tables on stderr/stdout (both bundled sessions)
    python benchmarks/real.py --quick --json          # one JSON object on stdout, progress on stderr
    python benchmarks/real.py --quick --report        # also docs/real-data.{json,md,png}
    python benchmarks/real.py --data DIR              # every session file in DIR, default budget
    python benchmarks/real_report.py                  # re-render the report from docs/real-data.json

Protocol (docs/real-data.md repeats it):

* Data: every session file in ``--data DIR`` (the project's session NPZ format), or the real recordings
  bundled with the package. Binned recordings are scored on their own bins (``meta["import"]["bin_s"]``,
  100 ms for the bundled ones), other sessions on 100 ms bins.
* Folds: the trials of a session are split into 5 folds (``binning.kfold_trials(n, 5, seed=0)``); each
  fold is the test set once. A model sees only the training trials of its fold: they are cut into a
  session of their own, laid back to back in recording order (``accuracy_lib.cut_trials``), and so are
  the test trials, which every model decodes as one stream from a fresh state.
* Selection: whatever a model chooses (ridge penalty, best epoch, ...) it chooses on validation trials,
  the last 20 % of its training trials (in recording order), never on the test fold; the baselines get
  them as ``valid``, POSSM's recipe splits its training session the same way itself.
* Single session: Wiener (3 lags of the bins, refit on train + valid after choosing its penalty),
  Kalman, MLP, binned GRU, and POSSM trained by ``possm_plugin.training.recipe.train_recipe`` (the recipe
  ``possm train`` uses). Score: R2 (mean over the outputs, e.g. vx and vy) on the bins of the test
  fold; POSSM's output is taken at the chunk that ends where each bin ends.
* Transfer: for each session, POSSM is pretrained on all the *other* sessions (``train_recipe``), once.
  Then, per fold and calibration fraction (0.1, 0.25, 1.0: the first trials of the fold's training
  trials, in recording order), ``ui`` (``adapt_recipe(mode="ui")``: only the new unit and session
  embeddings train), ``ft`` (``mode="ft"``: UI, then everything), ``scratch`` (``train_recipe`` on those
  trials only) and ``wiener`` (on the same trials), all scored on the same test fold. Scratch and
  Wiener at 1.0 are the single-session POSSM and Wiener runs (same data, same seed).
* Seeds: every model of fold k uses seed k.

Code: this file (budgets, folds, jobs, scheduling, the JSON); ``real_report.py`` (tables, markdown,
figure); training and scoring helpers come from ``accuracy_lib.py``. Jobs run in ``--jobs`` worker
processes with ``--threads`` torch threads each.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # the benchmark's own modules, when imported from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_report as report  # noqa: E402
from accuracy_lib import REPO, TINY_BACKBONE, TINY_MODEL, VALID_FRACTION, _log, cut_trials, eval_grid, fit_baseline, r2_baseline  # noqa: E402
from accuracy_suites import Suite  # noqa: E402
from bench_util import init_torch_worker, run_jobs  # noqa: E402

from possm_plugin.baselines.binning import TrialSubset, kfold_trials  # noqa: E402
from possm_plugin.data.importers.binned import bundled_sessions  # noqa: E402
from possm_plugin.training.recipe import BUDGETS as RECIPE_STEPS  # noqa: E402
from possm_plugin.training.recipe import adapt_recipe, predict_session, train_recipe  # noqa: E402

MODELS = ("wiener", "kalman", "mlp", "gru_binned", "possm")
METHODS = ("ui", "ft", "scratch", "wiener")
FRACTIONS = (0.1, 0.25, 1.0)
N_FOLDS = 5
MIN_CALIBRATION_TRIALS = 5  # a fraction never leaves fewer (one of them validates)
DEFAULT_GRID_S = 0.1  # scoring bins of sessions that carry no bin width of their own


# =================================================================================================
# budgets
# =================================================================================================
@dataclass(frozen=True)
class Budget:
    """Sizes of one benchmark mode. ``recipe`` is the budget name given to ``possm_plugin.training.recipe``;
    ``transfer_folds`` the number of folds (the first ones) the transfer section runs."""

    name: str
    recipe: str
    folds: int = N_FOLDS
    transfer_folds: int = N_FOLDS
    fractions: tuple[float, ...] = FRACTIONS
    baseline_epochs: dict = field(default_factory=lambda: {"mlp": 20, "gru_binned": 20})
    tiny: bool = False  # smoke: a tiny POSSM
    reduced: str = ""  # what this mode runs less of than the protocol, in words

    def suite(self) -> Suite:
        """The accuracy benchmark's suite that ``accuracy_lib.fit_baseline`` reads its sizes from."""
        return Suite(name=f"real-{self.name}", baseline_epochs=dict(self.baseline_epochs), tiny=self.tiny)

    def model_spec(self) -> dict | None:
        if not self.tiny:
            return None  # the recipe's own model
        return {"preset": "small", "backbone": "gru", **TINY_MODEL, "backbone_kwargs": TINY_BACKBONE["gru"]}


DEFAULT = Budget(name="default", recipe="default", baseline_epochs={"mlp": 60, "gru_binned": 60})
QUICK = Budget(name="quick", recipe="quick")
SMOKE = Budget(name="smoke", recipe="smoke", transfer_folds=1, fractions=(0.25, 1.0),
               baseline_epochs={"mlp": 1, "gru_binned": 1}, tiny=True,
               reduced="smoke: tiny POSSM, 1 baseline epoch, transfer on fold 0 at fractions 0.25 and 1.0 only")
BUDGETS = {b.name: b for b in (DEFAULT, QUICK, SMOKE)}


# =================================================================================================
# data and folds
# =================================================================================================
@functools.lru_cache(maxsize=4)
def load_data(source: str | None, max_trials: int | None = None) -> tuple:
    """The sessions of ``source`` (a folder of session files; None: the bundled recordings), each cut
    to its first ``max_trials`` trials if given (tests)."""
    from possm_plugin.data.session import load_sessions
    from possm_plugin.errors import DataError

    sessions = bundled_sessions() if source is None else load_sessions(source)
    ids = [s.session_id for s in sessions]
    if len(set(ids)) != len(ids):
        raise DataError(f"session ids in {source or 'the bundled data'} must be distinct, got {ids}")
    bad = [s.session_id for s in sessions if s.task != "regression"]
    if bad:
        raise DataError(f"the real-data benchmark decodes regression sessions; {bad} are not")
    if max_trials:
        sessions = [cut_trials(s, np.arange(min(max_trials, len(s.trials)))) for s in sessions]
    return tuple(sessions)


def session_by_id(source: str | None, max_trials: int | None, sid: str):
    return next(s for s in load_data(source, max_trials) if s.session_id == sid)


def grid_s(session) -> float:
    """Width of the bins a session is scored on: its own bins if it was imported from bins."""
    return float(session.meta.get("import", {}).get("bin_s", DEFAULT_GRID_S))


def n_calibration(n_train: int, fraction: float) -> int:
    """Training trials kept at ``fraction`` (the first ones in recording order)."""
    return int(min(n_train, max(MIN_CALIBRATION_TRIALS, round(fraction * n_train))))


def split_valid(trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, valid) of training trials: valid is the last 20 % in recording order (as POSSM's recipe
    splits its training session, ``Session.split_trials``), at least one trial."""
    trials = np.sort(np.asarray(trials, dtype=np.int64))
    n_valid = max(1, int(round(len(trials) * VALID_FRACTION)))
    return trials[: len(trials) - n_valid], trials[len(trials) - n_valid:]


def fold_plan(n_trials: int, fractions: tuple[float, ...] = FRACTIONS, *, folds: int = N_FOLDS) -> list[dict]:
    """Per fold: ``test`` and ``train`` trial indices (sorted) and, per fraction (key ``str(f)``), the
    ``calibration`` trials: the first of ``train`` in recording order."""
    out = []
    for f in kfold_trials(n_trials, folds, seed=0):
        train = np.sort(f["train"])
        cal = {str(fr): train[: n_calibration(len(train), fr)] for fr in fractions}
        out.append({"test": np.sort(f["test"]), "train": train, "calibration": cal})
    return out


def cut(session, trials: np.ndarray, *, fold: int, role: str):
    """The given trials of ``session`` as a session of their own (``cut_trials``), recording in
    ``meta["benchmark"]`` which trials of the original they are (the tests check it)."""
    s = cut_trials(session, trials)
    s.meta["benchmark"] = {"fold": int(fold), "role": role, "trials": [int(k) for k in trials]}
    return s


# =================================================================================================
# fitting and scoring
# =================================================================================================
def r2_recipe(model, session) -> float:
    """R2 (mean over outputs) of POSSM on every bin of ``session`` (``grid_s``): its output at the chunk
    that ends where each bin ends, decoded as one stream by ``recipe.predict_session``."""
    from possm_plugin.training.metrics import r2_mean

    y, ends = eval_grid(session, np.arange(len(session.trials)), grid_s(session))
    step = model.config.chunk_step
    if model.config.chunk_width != step:
        raise ValueError("r2_recipe assumes chunks that tile time (chunk_width == chunk_step)")
    idx = np.rint(ends / step).astype(np.int64) - 1  # chunk i ends at (i + 1) * step
    if np.abs((idx + 1) * step - ends).max() > 1e-6:
        raise ValueError(f"scoring bins of {grid_s(session)} s do not end on POSSM chunk ends ({step} s)")
    pred = predict_session(model, session, int(idx.max()) + 1)
    return r2_mean(y, pred[idx])


def fit_score(budget: Budget, name: str, session, trials: np.ndarray, test, *, fold: int,
              pretrained=None) -> dict:
    """Fit decoder ``name`` on ``trials`` of ``session`` (validation: their last 20 %) and score it on
    the ``test`` session; POSSM methods: ``possm``/``scratch`` (from scratch), ``ui``, ``ft``."""
    train = cut(session, trials, fold=fold, role="train")
    if name in ("wiener", "kalman", "mlp", "gru_binned"):
        n_fit = len(split_valid(trials)[0])
        k = len(trials)
        dec = fit_baseline(budget.suite(), name, TrialSubset(train, np.arange(n_fit)), TrialSubset(train, np.arange(n_fit, k)),
                           seed=fold, width=grid_s(session))
        return {"r2": r2_baseline(dec, test, np.arange(len(test.trials)))}
    if name in ("possm", "scratch"):
        model, info = train_recipe([train], seed=fold, budget=budget.recipe, model_spec=budget.model_spec())
    else:
        model = copy.deepcopy(pretrained)
        info = adapt_recipe(model, [train], mode=name, seed=fold, budget=budget.recipe)
    return {"r2": r2_recipe(model, test), **{k: v for k, v in info.items() if k in ("epochs", "best_epoch")}}


# =================================================================================================
# jobs (each runs in a worker process; plain arguments in, a JSON-able dict out)
# =================================================================================================
def job_single(budget: Budget, source: str | None, max_trials: int | None, sid: str, fold: int, model: str) -> dict:
    s = session_by_id(source, max_trials, sid)
    f = fold_plan(len(s.trials), budget.fractions, folds=budget.folds)[fold]
    test = cut(s, f["test"], fold=fold, role="test")
    return fit_score(budget, model, s, f["train"], test, fold=fold)


def job_pretrain(budget: Budget, source: str | None, max_trials: int | None, sid: str, workdir: str) -> dict:
    """POSSM pretrained on every session but ``sid`` (all their trials), saved as a checkpoint."""
    from possm_plugin.model.checkpoint import save_checkpoint

    others = [s for s in load_data(source, max_trials) if s.session_id != sid]
    model, info = train_recipe(list(others), seed=0, budget=budget.recipe, model_spec=budget.model_spec())
    path = save_checkpoint(model, Path(workdir) / f"pretrained-for-{sid}", meta={"benchmark": "real", "target": sid})
    return {"checkpoint": str(path), "sessions": [s.session_id for s in others], **info}


@functools.lru_cache(maxsize=4)
def _pretrained(checkpoint: str):
    from possm_plugin.model.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)[0]


def job_transfer(budget: Budget, source: str | None, max_trials: int | None, sid: str, fold: int, method: str,
                 fraction: float, checkpoint: str | None) -> dict:
    s = session_by_id(source, max_trials, sid)
    f = fold_plan(len(s.trials), budget.fractions, folds=budget.folds)[fold]
    cal = f["calibration"][str(fraction)]
    test = cut(s, f["test"], fold=fold, role="test")
    out = fit_score(budget, method, s, cal, test, fold=fold,
                    pretrained=_pretrained(checkpoint) if method in ("ui", "ft") else None)
    out["calibration_trials"] = len(cal)
    out["calibration_s"] = float(np.sum(s.trials[cal, 1] - s.trials[cal, 0]))
    return out


JOBS = {"single": job_single, "pretrain": job_pretrain, "transfer": job_transfer}
COST = {"pretrain": 100, "possm": 40, "scratch": 20, "ui": 10, "ft": 12, "gru_binned": 8, "mlp": 4, "kalman": 1, "wiener": 1}


def run_job(kind: str, budget: str, args: tuple) -> tuple[dict, float, float]:
    """Run one job of budget ``budget`` (a name: workers look it up); returns (result, wall seconds,
    CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = JOBS[kind](BUDGETS[budget], *args)
    return out, time.perf_counter() - t0, time.process_time() - c0


# =================================================================================================
# orchestration
# =================================================================================================
def plan_jobs(budget: Budget, sessions, source: str | None, max_trials: int | None, workdir: str) -> list[tuple]:
    """(kind, args, key) of the jobs that need nothing else, most expensive first. Scratch and Wiener
    at fraction 1.0 are not jobs: they are the single-session runs."""
    jobs = []
    ids = [s.session_id for s in sessions]
    for sid in ids:
        if len(ids) > 1:
            jobs.append(("pretrain", (source, max_trials, sid, workdir), ("pretrain", sid)))
        for fold in range(budget.folds):
            for m in MODELS:
                jobs.append(("single", (source, max_trials, sid, fold, m), ("single", sid, m, fold)))
        for fold in range(budget.transfer_folds if len(ids) > 1 else 0):
            for fr in budget.fractions:
                for m in ("scratch", "wiener"):
                    if fr != 1.0:
                        jobs.append(("transfer", (source, max_trials, sid, fold, m, fr, None), ("transfer", sid, m, fr, fold)))
    return sorted(jobs, key=lambda j: -COST["pretrain" if j[0] == "pretrain" else j[2][2]])


def dependent_jobs(budget: Budget, source: str | None, max_trials: int | None, sid: str, checkpoint: str) -> list[tuple]:
    return [("transfer", (source, max_trials, sid, fold, m, fr, checkpoint), ("transfer", sid, m, fr, fold))
            for m in ("ft", "ui") for fold in range(budget.transfer_folds) for fr in budget.fractions]


def execute(budget: Budget, source: str | None, max_trials: int | None, *, jobs: int, threads: int,
            workdir: str) -> tuple[dict, dict]:
    """Run every job (in ``jobs`` worker processes, or in this one for ``jobs=1``); ({key: result}, timing)."""
    sessions = load_data(source, max_trials)
    todo = plan_jobs(budget, sessions, source, max_trials, workdir)
    n_pre = sum(1 for j in todo if j[0] == "pretrain")
    total = len(todo) + n_pre * 2 * budget.transfer_folds * len(budget.fractions)
    def then(key, out) -> list[tuple]:
        return dependent_jobs(budget, source, max_trials, key[1], out["checkpoint"]) if key[0] == "pretrain" else []

    return run_jobs(todo, run_job, budget.name, jobs=jobs, threads=threads, init_worker=init_torch_worker, log=_log,
                    total=total, then=then, keys=("r2", "epochs", "best_epoch"))


# =================================================================================================
# summary
# =================================================================================================
def _scores(values) -> dict:
    v = [round(float(x), 4) for x in values]
    return {"r2_mean": round(float(np.mean(v)), 4), "r2_folds": v}


def transfer_result(results: dict, sid: str, method: str, fraction: float, fold: int) -> dict:
    """A transfer result; scratch and Wiener on all training trials are the single-session runs."""
    if fraction == 1.0 and method in ("scratch", "wiener"):
        return results[("single", sid, "possm" if method == "scratch" else "wiener", fold)]
    return results[("transfer", sid, method, fraction, fold)]


def summarize(budget: Budget, sessions, results: dict) -> dict:
    out: dict = {"single": {}, "transfer": {}}
    folds, tfolds = range(budget.folds), range(budget.transfer_folds)
    for s in sessions:
        sid = s.session_id
        out["single"][sid] = {m: _scores(results[("single", sid, m, k)]["r2"] for k in folds) for m in MODELS}
        if ("pretrain", sid) in results:
            out["transfer"][sid] = {m: {str(fr): _scores(transfer_result(results, sid, m, fr, k)["r2"] for k in tfolds)
                                        for fr in budget.fractions} for m in METHODS}
    out["budget"] = {
        "name": budget.name,
        "recipe_budget": budget.recipe,
        "recipe_steps": RECIPE_STEPS[budget.recipe],
        "folds": budget.folds,
        "transfer_folds": budget.transfer_folds,
        "fractions": list(budget.fractions),
        "models": list(MODELS),
        "methods": list(METHODS),
        "baseline_epochs": dict(budget.baseline_epochs),
        "reduced": budget.reduced or "nothing: every section runs the full protocol",
    }
    out["sessions"] = {}
    for s in sessions:
        sid = s.session_id
        d = {"units": s.n_units, "trials": len(s.trials), "seconds": round(float(np.sum(s.trials[:, 1] - s.trials[:, 0])), 1),
             "bin_s": grid_s(s), "dataset": s.meta.get("dataset", "")}
        if ("pretrain", sid) in results:
            pre = results[("pretrain", sid)]
            d["pretrained_on"] = pre["sessions"]
            d["calibration"] = {str(fr): {
                "trials": round(float(np.mean([transfer_result(results, sid, "ui", fr, k)["calibration_trials"] for k in tfolds])), 1),
                "seconds": round(float(np.mean([transfer_result(results, sid, "ui", fr, k)["calibration_s"] for k in tfolds])), 1)}
                for fr in budget.fractions}
        d["possm_epochs"] = [[results[("single", sid, "possm", k)].get("epochs"), results[("single", sid, "possm", k)].get("best_epoch")]
                             for k in folds]
        out["sessions"][sid] = d
    out["verdict"] = verdict(out)
    return out


def verdict(out: dict) -> dict:
    """Per session: POSSM minus Wiener (mean, folds won), the best model, and the issue's targets."""
    v = {}
    for sid, ss in out["single"].items():
        p, w = ss["possm"], ss["wiener"]
        won = int(sum(a > b for a, b in zip(p["r2_folds"], w["r2_folds"])))
        d = {"best_model": max(ss, key=lambda m: ss[m]["r2_mean"]),
             "possm_minus_wiener": round(p["r2_mean"] - w["r2_mean"], 4),
             "possm_folds_won_vs_wiener": f"{won}/{len(p['r2_folds'])}",
             "target_single_met": bool(p["r2_mean"] >= w["r2_mean"] + 0.02 and won >= 0.8 * len(p["r2_folds"]))}
        tr = out["transfer"].get(sid)
        if tr and "0.25" in tr["ui"]:
            ui, sc, wi = (tr[m]["0.25"]["r2_mean"] for m in ("ui", "scratch", "wiener"))
            d.update({"ui_0.25_minus_wiener": round(ui - wi, 4), "ui_0.25_minus_scratch": round(ui - sc, 4),
                      "target_transfer_met": bool(ui >= wi and ui >= sc)})
        v[sid] = d
    return v


# =================================================================================================
# CLI
# =================================================================================================
def build_parser() -> argparse.ArgumentParser:
    from possm_plugin.cli.formatter import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], formatter_class=HelpFormatter)
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder of session files (session NPZ format); default: the recordings bundled with the package")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the recipe's quick budget (both bundled sessions in < 20 min on 2 cores)")
    mode.add_argument("--smoke", action="store_true", help="every code path with a tiny model and almost no training (tests)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (tables and progress go to stderr)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--report", nargs="?", const=str(REPO / "docs" / "real-data.md"), default=None, metavar="MD",
                   help="write the markdown report, the JSON it is rendered from and a PNG beside it "
                        "(default docs/real-data.md, .json, .png)")
    p.add_argument("--max-trials", type=int, default=None, help="cut every session to its first N trials (tests)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    return p


def run(budget: Budget, source: str | None, *, max_trials: int | None = None, jobs: int = 1, threads: int = 1,
        argv: str = "") -> dict:
    """The whole benchmark; returns its JSON document."""
    import torch

    sessions = load_data(source, max_trials)
    load0 = [round(x, 2) for x in os.getloadavg()]
    _log(f"real-data benchmark, {budget.name} budget: {len(sessions)} session(s) "
         f"{[s.session_id for s in sessions]}, {jobs} worker(s) x {threads} thread(s), load average {load0}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="possm-real-") as workdir:
        results, timing = execute(budget, source, max_trials, jobs=max(1, jobs), threads=max(1, threads), workdir=workdir)
    out = summarize(budget, sessions, results)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["meta"] = {"argv": argv, "data": source or "bundled", "cpu_s": round(timing["cpu_s"], 1), "jobs": jobs,
                   "threads": threads, "cpus": os.cpu_count(), "load_avg_start": load0,
                   "load_avg_end": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
                   "python": platform.python_version(), "job_seconds": timing["jobs"]}
    return out


def main(argv: list[str] | None = None) -> int:
    from possm_plugin.errors import PossmError

    args = build_parser().parse_args(argv)
    budget = SMOKE if args.smoke else QUICK if args.quick else DEFAULT
    try:
        out = run(budget, args.data, max_trials=args.max_trials, jobs=args.jobs, threads=args.threads,
                  argv=" ".join(sys.argv[1:] if argv is None else argv))
    except PossmError as exc:
        _log(f"error: {exc}")
        return 2
    print(report.tables(out), file=sys.stderr if args.json else sys.stdout, flush=True)
    _log(f"wall time {out['wall_s']:.0f} s ({out['meta']['cpu_s']:.0f} CPU s in jobs)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if args.report:
        for p in report.write_report(out, Path(args.report)):
            _log(f"wrote {p}")
    if args.json:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
