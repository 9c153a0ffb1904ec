"""Accuracy benchmark: POSSM against the baselines on a fixed, seeded simulated suite and one real session.

    python benchmarks/accuracy.py --quick             # tables (about 8 min on a clean 2-core machine)
    python benchmarks/accuracy.py --quick --json      # one JSON object on stdout, tables and progress on stderr
    python benchmarks/accuracy.py --quick --report    # also docs/accuracy.md, docs/accuracy*.png
    python benchmarks/accuracy.py                     # full mode: proper sizes (~15 CPU-hours; --device cuda)
    python benchmarks/accuracy.py --from-json docs/accuracy.json --report   # re-render a saved run
    python benchmarks/accuracy.py --smoke --json      # every code path, 1 epoch, tiny sessions (tests)

Sections (the protocol; the docs/accuracy.md report repeats it):

1. ``single_session``: for each seed, one simulated reaching session (``simulate_motor_session`` with
   ``seed = 1000 + seed``: the seed draws the animal, the session and the initialisation). Trials are
   split in time: the first 64 % train, the next 16 % validate (best epoch / ridge penalty), the last
   20 % are the test trials that no model sees. Baselines (wiener, kalman, mlp, gru_binned, poyo) and
   POSSM (small preset; gru, s4d, mamba backbones; trained by ``possm_plugin.train.fit``) are scored
   by R2 (mean of vx and vy) on the chunks of the test trials, all on the same 50 ms chunk grid and
   the same chunks. Every decoder runs over the whole session as a live decoder would (POSSM and the
   GRU from a fresh state at 0 s, carrying their state; Wiener/MLP/Kalman on lagged bins; POYO
   re-reading the last 1 s). POSSM trains with the package's recipe (phase-weighted MSE, flat then
   cosine LR, AdamW) for a budget of optimiser steps; unit dropout is used in multi-session
   pretraining only.
2. ``transfer``: a multi-session POSSM is pretrained on sessions 0..n-1 of subject ``m0``. It is then
   adapted to held-out sessions of ``m0`` and to sessions of a held-out subject ``m1`` (other tuning
   statistics, unit counts and neuron pool) by unit identification (``ui``: only the new unit and
   session embeddings train) and full fine-tuning (``ft``: UI, then everything at lr/10), against a
   small POSSM trained from scratch (``scratch``) and a Wiener filter (``wiener``), at several
   fractions of the calibration session's training trials (the first trials in time; the test trials,
   the last 20 %, stay fixed).
3. ``classification`` (simulated handwriting, 10 characters: accuracy) and ``ctc`` (simulated
   phoneme sequences: token error rate, lower is better): POSSM against a binned-count GRU of the same
   shape as ``baselines.GRUDecoder`` (defined here, since the baseline decodes regression only).
4. ``real``: the Chewie M1 centre-out session (``importers.binned.load_chewie``, counts turned into
   events at seeded uniform times inside each 100 ms bin), k disjoint 80/20 splits by trials. Wiener
   (3 lags), Kalman and the binned GRU see the original 100 ms bins; POSSM sees the events in 50 ms
   chunks and is scored at the bin ends, on exactly the samples the others are scored on. Also the
   simulator-pretrained model of section 2 adapted to the session by UI and FT.

Jobs run in ``--jobs`` worker processes (default: 2 on a machine with 2+ cores), each with
``--threads`` torch threads (default 1): every job seeds itself, so results do not depend on the
number of workers. Progress and timing go to stderr; CPU seconds of all jobs are reported, which is
about what a clean machine needs per core.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_NAME = "chewie_m1_center_out_2013-10-03_100ms.npz"
DATA_CANDIDATES = (REPO.parent / "shared" / "data" / DATA_NAME, Path("/work/shared/data") / DATA_NAME)

BASELINES = ("wiener", "kalman", "mlp", "gru_binned", "poyo")
BACKBONES = ("gru", "s4d", "mamba")
SS_MODELS = BASELINES + tuple(f"possm_{b}" for b in BACKBONES)
TRANSFER_METHODS = ("ui", "ft", "scratch", "wiener")
REAL_MODELS = ("wiener", "kalman", "gru_binned", "possm", "possm_ui", "possm_ft")
TEST_FRACTION = 0.2
VALID_FRACTION = 0.2  # of the training trials


# =================================================================================================
# suites
# =================================================================================================
@dataclass(frozen=True)
class Suite:
    """Sizes of one benchmark mode. ``*_steps`` are optimiser steps aimed at (epochs are derived
    from them and the data size, within ``[min_epochs, max_epochs]``). ``heldout`` lists (group,
    subject, session index); a negative index -k means the k-th session after the pretraining ones."""

    name: str
    seeds: tuple[int, ...] = (0, 1, 2)
    ss_duration_s: float = 150.0
    possm_steps: int = 120
    batch_size: int = 32
    lr: float = 2e-3
    unit_dropout: float = 1.0  # single-session fits (incl. UI/FT); pretraining keeps the recipe's 0.6
    min_epochs: int = 3
    max_epochs: int = 80
    baseline_epochs: dict = field(default_factory=lambda: {"mlp": 20, "gru_binned": 20, "poyo": 5})
    # transfer
    pretrain_model: dict = field(default_factory=lambda: {"preset": "small", "backbone": "gru"})
    pretrain_label: str = "small preset (D=64, GRU 256x1), multi-session"
    pretrain_sessions: int = 4
    pretrain_duration_s: float = 150.0
    pretrain_steps: int = 300
    heldout: tuple[tuple[str, str, int], ...] = (("m0_heldout", "m0", -1), ("m1", "m1", 0))
    transfer_duration_s: float = 150.0
    fractions: tuple[float, ...] = (0.05, 0.2, 1.0)
    adapt_steps: int = 60
    ui_lr: float = 1e-2
    # classification / CTC
    cls_duration_s: float = 600.0
    ctc_duration_s: float = 600.0
    seq_steps: int = 120
    ctc_steps: int = 60
    seq_gru_epochs: int = 60
    # real
    real_splits: int = 3
    real_steps: int = 120
    tiny: bool = False  # smoke: tiny models and sessions, 1 epoch


QUICK = Suite(name="quick")
FULL = Suite(
    name="full",
    seeds=(0, 1, 2, 3, 4),
    ss_duration_s=600.0,
    possm_steps=1500,
    batch_size=64,
    max_epochs=200,
    baseline_epochs={"mlp": 60, "gru_binned": 60, "poyo": 60},
    pretrain_model={"preset": "opossm", "backbone": "gru"},
    pretrain_label="o-POSSM preset (D=256, GRU 512x4), multi-session",
    pretrain_sessions=16,
    pretrain_duration_s=300.0,
    pretrain_steps=6000,
    heldout=(("m0_heldout", "m0", -1), ("m0_heldout", "m0", -2), ("m1", "m1", 0), ("m1", "m1", 1)),
    transfer_duration_s=300.0,
    fractions=(0.05, 0.1, 0.2, 0.5, 1.0),
    adapt_steps=400,
    cls_duration_s=1200.0,
    ctc_duration_s=1200.0,
    seq_steps=1500,
    ctc_steps=1500,
    seq_gru_epochs=100,
    real_splits=5,
    real_steps=800,
)
SMOKE = Suite(
    name="smoke",
    seeds=(0, 1, 2),
    ss_duration_s=20.0,
    possm_steps=1,
    batch_size=16,
    min_epochs=1,
    max_epochs=1,
    baseline_epochs={"mlp": 1, "gru_binned": 1, "poyo": 1},
    pretrain_sessions=2,
    pretrain_duration_s=20.0,
    pretrain_steps=1,
    transfer_duration_s=30.0,
    fractions=(0.2, 1.0),
    adapt_steps=2,
    cls_duration_s=30.0,
    ctc_duration_s=30.0,
    seq_steps=1,
    ctc_steps=1,
    seq_gru_epochs=1,
    real_splits=3,
    real_steps=1,
    tiny=True,
)
SUITES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}

TINY_MODEL = {"dim": 32, "dim_head": 32}
TINY_BACKBONE = {"gru": {"hidden": 32, "layers": 1}, "s4d": {"hidden": 32, "layers": 1, "d_state": 8},
                 "mamba": {"hidden": 32, "layers": 1, "d_state": 8}}


def model_spec(suite: Suite, backbone: str = "gru", base: dict | None = None) -> dict:
    spec = dict(base or {"preset": "small"})
    spec["backbone"] = backbone
    if suite.tiny:
        spec.update(TINY_MODEL, backbone_kwargs=TINY_BACKBONE[backbone])
    return spec


# =================================================================================================
# data
# =================================================================================================
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=32)
def motor_session(seed: int, subject: str, index: int, duration_s: float):
    from possm_plugin.sim import simulate_motor_session

    return simulate_motor_session(index, seed=seed, subject=subject, duration_s=duration_s)


@functools.lru_cache(maxsize=4)
def seq_session(task: str, seed: int, duration_s: float):
    from possm_plugin.sim import simulate_handwriting_session, simulate_phoneme_session

    if task == "classification":
        return simulate_handwriting_session(0, seed=seed, subject="h0", duration_s=duration_s)
    return simulate_phoneme_session(0, seed=seed, subject="p0", duration_s=duration_s)


def split_counts(n_trials: int) -> tuple[int, int]:
    """(training trials incl. validation, test trials): the last 20 % of trials are the test set."""
    n_test = max(1, int(round(n_trials * TEST_FRACTION)))
    return n_trials - n_test, n_test


def first_trials(session, n: int):
    """The session with only its first ``n`` trials listed (spikes and behaviour untouched, so a
    model decodes it continuously; training never samples outside the listed trials)."""
    return dataclasses.replace(
        session, trials=session.trials[:n], trial_labels=session.trial_labels[:n],
        label_offsets=session.label_offsets[: n + 1],
    )


def cut_trials(session, trials: np.ndarray):
    """A session made of the given trials only, laid back to back from 0 s in their order (spikes,
    behaviour samples in ``(start, end]`` and phases shifted; same session and unit ids)."""
    from possm_plugin.session import Session

    times, units, tt, tg, ph, tr = [], [], [], [], [], []
    clock = 0.0
    for k in np.asarray(trials, dtype=np.int64):
        a, b = session.trials[k]
        lo, hi = np.searchsorted(session.spike_times, [a, b], side="left")
        times.append(session.spike_times[lo:hi] - a + clock)
        units.append(session.spike_units[lo:hi])
        sel = (session.target_times > a) & (session.target_times <= b)
        tt.append(session.target_times[sel] - a + clock)
        tg.append(session.targets[sel])
        ph.append(session.phase[sel])
        tr.append((clock, clock + (b - a)))
        clock += b - a
    return Session(
        session_id=session.session_id, spike_times=np.concatenate(times), spike_units=np.concatenate(units),
        unit_ids=list(session.unit_ids), target_times=np.concatenate(tt), targets=np.concatenate(tg),
        trials=np.asarray(tr), subject=session.subject, task=session.task, target_names=list(session.target_names),
        phase=np.concatenate(ph), target_scale=session.target_scale, meta=dict(session.meta),
    )


def find_real_data(explicit: str | None = None) -> Path | None:
    for p in ([Path(explicit)] if explicit else list(DATA_CANDIDATES)):
        if p.is_dir():
            p = p / DATA_NAME
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=2)
def chewie(path: str):
    from possm_plugin.importers.binned import load_chewie

    return load_chewie(path, placement="uniform", seed=0)


def real_split(path: str, split: int):
    """(train session, test session) of split ``split`` of the Chewie session: the 5 disjoint test
    folds of the shuffled trials (seed 0), each 20 %; a suite uses the first ``real_splits``."""
    from possm_plugin.binning import kfold_trials

    s = chewie(path)
    fold = kfold_trials(len(s.trials), 5, seed=0)[split]
    return cut_trials(s, fold["train"]), cut_trials(s, fold["test"])


# =================================================================================================
# scoring
# =================================================================================================
def possm_predict(model, session, n_chunks: int | None = None) -> np.ndarray:
    """POSSM outputs (physical units) for chunks 0..n-1 of the session's grid, decoded as one stream
    from a fresh state at 0 s."""
    from possm_plugin.data import prepare_sessions
    from possm_plugin.evaluate import predict_span

    ps = prepare_sessions(model, [session], valid_fraction=0.0)[0]
    step = model.config.chunk_step
    if n_chunks is None:
        n_chunks = int(np.floor((session.duration - model.config.chunk_width) / step + 1e-9)) + 1
    model.eval()
    device = next(model.parameters()).device
    return predict_span(model, ps, 0, n_chunks, device=device) * model.config.target_scale


def eval_grid(session, trials: np.ndarray, width: float):
    """Targets and chunk ends of the scored chunks: those of ``trials`` on the ``width`` grid."""
    from possm_plugin.binning import bin_session

    b = bin_session(session, width=width, step=width)
    m = b.mask(trials)
    return b.targets[m], b.ends[m]


def r2_possm(model, session, trials: np.ndarray, *, grid: float = 0.05) -> float:
    """R2 (mean over outputs) of POSSM on the chunks of ``trials`` of the ``grid`` bins: POSSM's
    output at the chunk that ends where each scored bin ends."""
    from possm_plugin.metrics import r2_mean

    y, ends = eval_grid(session, trials, grid)
    step = model.config.chunk_step
    if model.config.chunk_width != step:
        raise ValueError("r2_possm assumes chunks that tile time (chunk_width == chunk_step)")
    idx = np.rint(ends / step).astype(np.int64) - 1  # chunk i ends at (i + 1) * step (width == step)
    if np.abs((idx + 1) * step - ends).max() > 1e-6:
        raise ValueError(f"scoring bins of {grid} s do not end on POSSM chunk ends ({step} s)")
    pred = possm_predict(model, session, int(idx.max()) + 1)
    return r2_mean(y, pred[idx])


def r2_baseline(dec, session, trials: np.ndarray) -> float:
    from possm_plugin.binning import TrialSubset
    from possm_plugin.metrics import r2_mean

    if dec.name == "poyo":  # a window decoder: predicting only the scored chunks is the same, and faster
        part = dec._parts([TrialSubset(session, trials)])[0]
        pred = dec._predict_part(part, only=part.mask) * dec.target_scale
        return r2_mean(part.binned.targets[part.mask], pred)
    return dec.r2_mean(TrialSubset(session, trials))


# =================================================================================================
# training
# =================================================================================================
def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


DEVICE = os.environ.get("POSSM_BENCH_DEVICE", "cpu")  # POSSM's device (set by --device, inherited by workers)


def train_config(suite: Suite, *, seed: int, lr: float | None = None, multi_session: bool = False):
    """``fit``'s config: the package's recipe (phase weights, schedule, clipping) with the suite's batch
    and learning rate; unit dropout only in multi-session pretraining (on one session it slowed
    convergence: -0.02 R2 at the quick budget on development seeds 100 and 101)."""
    from possm_plugin.train import TrainConfig

    cfg = TrainConfig(batch_size=suite.batch_size, lr=lr or suite.lr, seed=seed, progress=False,
                      valid_fraction=VALID_FRACTION, device=DEVICE)
    return cfg if multi_session else dataclasses.replace(cfg, unit_dropout=suite.unit_dropout)


def steps_per_epoch(model, sessions, cfg) -> int:
    """Optimiser steps of one epoch of ``fit`` on ``sessions`` (the windows its sampler draws)."""
    from possm_plugin.data import WindowSampler, prepare_sessions

    prepared = prepare_sessions(model, sessions, valid_fraction=cfg.valid_fraction)
    sampler = WindowSampler(prepared, readout=model.config.readout, window_chunks=cfg.window_chunks,
                            n_units=model.n_units, seed=0)
    return max(1, math.ceil(len(sampler) / cfg.batch_size))


def epochs_for(suite: Suite, steps: int, per_epoch: int) -> int:
    return int(min(suite.max_epochs, max(suite.min_epochs, math.ceil(steps / per_epoch))))


def train_possm(suite: Suite, spec: dict, sessions, *, seed: int, steps: int, lr: float | None = None):
    """A fresh POSSM fit on ``sessions`` (valid: the last 20 % of their listed trials)."""
    from possm_plugin.train import build_model, fit

    _seed_all(seed)
    model = build_model(spec, sessions, seed=seed)
    cfg = train_config(suite, seed=seed, lr=lr, multi_session=len(sessions) > 1)
    cfg = dataclasses.replace(cfg, epochs=epochs_for(suite, steps, steps_per_epoch(model, sessions, cfg)))
    res = fit(model, sessions, cfg=cfg)
    info = {"epochs": cfg.epochs, "best_epoch": res["best_epoch"], "n_parameters": model.n_parameters()}
    return model, info


def adapt_possm(suite: Suite, checkpoint: str, sessions, *, mode: str, seed: int, steps: int):
    """The pretrained model adapted to ``sessions`` by UI or FT (``finetune``)."""
    from possm_plugin.checkpoint import load_checkpoint
    from possm_plugin.finetune import add_sessions, finetune

    _seed_all(seed)
    model, _ = load_checkpoint(checkpoint)
    cfg = train_config(suite, seed=seed)
    probe, _ = load_checkpoint(checkpoint)  # count the windows on a copy that knows the new units
    add_sessions(probe, sessions)
    epochs = epochs_for(suite, steps, steps_per_epoch(probe, sessions, cfg))
    if mode == "ft":
        epochs = max(2, epochs)
    res = finetune(model, sessions, mode=mode, epochs=epochs, ui_epochs=None if mode == "ui" else max(1, epochs // 2),
                   lr=suite.ui_lr, ft_lr=suite.lr / 10, batch_size=suite.batch_size, seed=seed, train_config=cfg)
    info = {"epochs": epochs, "trainable_fraction": res["trainable_fraction"], "trainable_parameters": res["trainable_parameters"]}
    return model, info


def fit_baseline(suite: Suite, name: str, train, valid, *, seed: int, width: float = 0.05):
    from possm_plugin.baselines import make_baseline

    _seed_all(seed)
    if name == "wiener":
        return make_baseline("wiener", n_lags=3 if width > 0.05 else 5, width=width, step=width).fit(train, valid)
    if name == "kalman":
        return make_baseline("kalman", width=width, step=width).fit(train, valid)
    epochs = suite.baseline_epochs[name]
    kw = {}
    if suite.tiny and name == "poyo":
        kw = {"dim": 32, "dim_head": 32, "depth": 1, "latents_per_step": 1}
    key = "gru" if name == "gru_binned" else name
    window = {"window_chunks": 10} if (key == "gru" and width > 0.05) else {}
    return make_baseline(key, width=width, step=width, **kw, **window).fit(train, valid, epochs=epochs, seed=seed)


# =================================================================================================
# a binned GRU for classification and CTC (the regression baseline's shape, other readouts)
# =================================================================================================
def _trial_chunks(session, k: int, step: float, width: float, readout: str, window: int = 20) -> tuple[int, int]:
    """Chunks [i0, i0 + n) of trial k as POSSM's data path takes them (``PreparedSession.chunk_range``):
    the whole trial for CTC, its first ``window`` chunks for classification."""
    ta, tb = session.trials[k]
    i0 = int(np.ceil(ta / step - 1e-9))
    i1 = max(i0, int(np.floor((tb - width) / step + 1e-9)) + 1)
    n = i1 - i0 if readout == "ctc" else min(i1 - i0, window)
    return i0, n


class SeqGRU:
    """GRU on z-scored binned counts -> per-chunk logits; classification reads the last chunk of the
    trial's window, CTC the whole trial (blank = 0). Same layers as ``baselines.gru_binned.BinnedGRU``."""

    def __init__(self, readout: str, n_classes: int, *, hidden: int = 128, dropout: float = 0.1, width: float = 0.05) -> None:
        self.readout, self.n_classes, self.hidden, self.dropout, self.width = readout, n_classes, hidden, dropout, width

    def _trials(self, session, trials):
        from possm_plugin.binning import bin_session

        b = bin_session(session, width=self.width, step=self.width)
        first = int(round(b.starts[0] / self.width))
        x = (b.counts - self.mu) / self.sd if hasattr(self, "mu") else b.counts
        out = []
        for k in trials:
            i0, n = _trial_chunks(session, int(k), self.width, self.width, self.readout)
            if n > 0:
                out.append((x[i0 - first : i0 - first + n].astype(np.float32), int(k)))
        return b, out

    def fit(self, session, train_trials, valid_trials, *, epochs: int, seed: int, batch_size: int = 32, lr: float = 3e-3,
            weight_decay: float = 1e-4):
        import copy

        import torch
        from torch import nn

        from possm_plugin.baselines.gru_binned import BinnedGRU

        b, _ = self._trials(session, [])
        self.mu = b.counts.mean(0)
        self.sd = np.maximum(b.counts.std(0), 1e-3)
        _, tr = self._trials(session, train_trials)
        n_out = self.n_classes + (1 if self.readout == "ctc" else 0)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.net = BinnedGRU(n_units=session.n_units, n_outputs=n_out, hidden=self.hidden, dropout=self.dropout)
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state = -math.inf, None
        for _ in range(epochs):
            self.net.train()
            order = rng.permutation(len(tr))
            for a in range(0, len(order), batch_size):
                items = [tr[i] for i in order[a : a + batch_size]]
                x = nn.utils.rnn.pad_sequence([torch.from_numpy(v) for v, _ in items], batch_first=True)
                lens = torch.tensor([len(v) for v, _ in items])
                out, _ = self.net(x)
                if self.readout == "classification":
                    logits = out[torch.arange(len(items)), lens - 1]
                    y = torch.tensor([int(session.trial_labels[k]) for _, k in items])
                    loss = nn.functional.cross_entropy(logits, y)
                else:
                    seqs = [session.trial_labels_seq(k) for _, k in items]
                    tgt = torch.cat([torch.as_tensor(s, dtype=torch.long) + 1 for s in seqs])
                    loss = nn.functional.ctc_loss(out.log_softmax(-1).transpose(0, 1), tgt, lens,
                                                  torch.tensor([len(s) for s in seqs]), blank=0, zero_infinity=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                opt.step()
            score = self.score(session, valid_trials)
            score = score if self.readout == "classification" else -score
            if score > best:
                best, best_state = score, copy.deepcopy(self.net.state_dict())
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return self

    def score(self, session, trials) -> float:
        """Accuracy (classification) or token error rate (CTC) on ``trials``."""
        import torch

        from possm_plugin.metrics import ctc_greedy_decode, token_error_rate

        _, items = self._trials(session, trials)
        self.net.eval()
        hits, refs, hyps = [], [], []
        with torch.no_grad():
            for x, k in items:
                out, _ = self.net(torch.from_numpy(x)[None])
                if self.readout == "classification":
                    hits.append(int(out[0, -1].argmax()) == int(session.trial_labels[k]))
                else:
                    refs.append(session.trial_labels_seq(k))
                    hyps.append(ctc_greedy_decode(out[0].numpy()))
        if self.readout == "classification":
            return float(np.mean(hits))
        return float(token_error_rate(refs, hyps))


# =================================================================================================
# jobs (each runs in a worker process; plain arguments in, a JSON-able dict out)
# =================================================================================================
def job_single(suite: Suite, model_name: str, seed: int) -> dict:
    from possm_plugin.binning import TrialSubset

    s = motor_session(1000 + seed, "m0", 0, suite.ss_duration_s)
    n_tv, n_test = split_counts(len(s.trials))
    n_valid = int(round(n_tv * VALID_FRACTION))
    test = np.arange(n_tv, n_tv + n_test)
    if model_name.startswith("possm_"):
        model, info = train_possm(suite, model_spec(suite, model_name.split("_", 1)[1]), [first_trials(s, n_tv)],
                                  seed=seed, steps=suite.possm_steps)
        return {"r2": r2_possm(model, s, test), **info}
    train, valid = TrialSubset(s, np.arange(n_tv - n_valid)), TrialSubset(s, np.arange(n_tv - n_valid, n_tv))
    dec = fit_baseline(suite, model_name, train, valid, seed=seed)
    return {"r2": r2_baseline(dec, s, test)}


def heldout_session(suite: Suite, subject: str, index: int):
    idx = suite.pretrain_sessions + (-index - 1) if index < 0 else index
    return motor_session(0, subject, idx, suite.transfer_duration_s)


def job_pretrain(suite: Suite, out_dir: str) -> dict:
    from possm_plugin.checkpoint import save_checkpoint

    sessions = [motor_session(0, "m0", i, suite.pretrain_duration_s) for i in range(suite.pretrain_sessions)]
    model, info = train_possm(suite, model_spec(suite, "gru", suite.pretrain_model), sessions, seed=0,
                              steps=suite.pretrain_steps)
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
    from possm_plugin.binning import TrialSubset

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
    from possm_plugin.data import prepare_sessions
    from possm_plugin.evaluate import evaluate_prepared

    s = seq_session(task, 0, suite.cls_duration_s if task == "classification" else suite.ctc_duration_s)
    n_tv, n_test = split_counts(len(s.trials))
    n_valid = int(round(n_tv * VALID_FRACTION))
    metric = "accuracy" if task == "classification" else "token_error_rate"
    if model_name == "possm":
        steps = suite.seq_steps if task == "classification" else suite.ctc_steps
        model, info = train_possm(suite, model_spec(suite, "gru"), [first_trials(s, n_tv)], seed=0, steps=steps)
        ps = prepare_sessions(model, [s], valid_fraction=0.0, test_fraction=n_test / len(s.trials))
        if len(ps[0].split["test"]) != n_test:  # the same test trials as the GRU's, or the comparison is off
            raise RuntimeError(f"test split of {len(ps[0].split['test'])} trials, expected {n_test}")
        return {metric: evaluate_prepared(model, ps, split="test", device=next(model.parameters()).device)[metric], **info}
    gru = SeqGRU(task, s.n_classes).fit(s, np.arange(n_tv - n_valid), np.arange(n_tv - n_valid, n_tv),
                                        epochs=suite.seq_gru_epochs, seed=0)
    return {metric: gru.score(s, np.arange(n_tv, n_tv + n_test))}


def job_real(suite: Suite, path: str, split: int, model_name: str, checkpoint: str | None) -> dict:
    from possm_plugin.binning import TrialSubset

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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


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
    """A rough relative cost, for scheduling only (POSSM steps of 32 windows of 1 s ~ 1)."""
    if kind == "pretrain":
        return math.inf
    if kind == "single":
        m = args[0]
        return {"possm_gru": 1.0, "possm_s4d": 1.4, "possm_mamba": 1.5, "poyo": 0.6}.get(m, 0.02) * suite.possm_steps
    if kind == "sequence":
        task, m = args
        if m != "possm":
            return 0.2 * suite.seq_gru_epochs
        return 2.5 * suite.ctc_steps if task == "ctc" else 0.8 * suite.seq_steps
    if kind == "real":
        return 0.3 * suite.real_steps if "possm" in args[2] else 1.0
    m, f = args[3], args[4]
    return 1.0 if m == "wiener" else suite.adapt_steps * min(1.0, 0.2 + f)


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
    results: dict[tuple, dict] = {}
    timing = {"cpu_s": 0.0, "jobs": {}}
    total = len(todo) + len(dependent_jobs(suite, real_path, ""))
    done = 0

    def record(key, out, wall, cpu):
        nonlocal done
        done += 1
        results[key] = out
        timing["cpu_s"] += cpu
        timing["jobs"]["/".join(map(str, key))] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()
                 if k in ("r2", "accuracy", "token_error_rate", "valid_r2", "epochs")}
        _log(f"[{done:3d}/{total}] {'/'.join(map(str, key)):<44} {brief}  ({wall:.1f} s wall, {cpu:.1f} s cpu)")
        if key == ("pretrain",):
            return dependent_jobs(suite, real_path, out["checkpoint"])
        return []

    if jobs <= 1:
        _init_worker(threads)
        queue = list(todo)
        while queue:
            kind, args, key = queue.pop(0)
            out, wall, cpu = run_job(kind, suite.name, args)
            queue.extend(record(key, out, wall, cpu))
        return results, timing
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        pending = {pool.submit(run_job, kind, suite.name, args): key for kind, args, key in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key = pending.pop(fut)
                out, wall, cpu = fut.result()
                for kind, args, k2 in record(key, out, wall, cpu):
                    pending[pool.submit(run_job, kind, suite.name, args)] = k2
    return results, timing


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
        out["real_meta"] = {"file": str(real_path), "splits": suite.real_splits,
                            "protocol": "5 disjoint 80/20 folds of the shuffled trials (seed 0), the first `splits` used"}
    else:
        out["real"] = {}
        out["real_meta"] = {"skipped": f"{DATA_NAME} not found in {[str(p.parent) for p in DATA_CANDIDATES]}"}
    # how far POSSM's training got: epochs run and the best validation epoch (0-based), per seed / split
    ep = lambda r: [r["epochs"], r["best_epoch"]] if "best_epoch" in r else [r.get("epochs")]  # noqa: E731
    out["training_epochs"] = {
        "single_session": {m: [ep(results[("single", m, s)]) for s in suite.seeds] for m in SS_MODELS if m.startswith("possm_")},
        "sequence": {t: ep(results[("sequence", t, "possm")]) for t in ("classification", "ctc")},
        "pretrained": ep(pre),
        "note": "[epochs, best epoch]; a best epoch at the end means training was still improving",
    }
    if real_path is not None:
        out["training_epochs"]["real"] = {m: [ep(results[("real", m, k)]) for k in range(suite.real_splits)]
                                          for m in ("possm", "possm_ui", "possm_ft")}
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


def tables(out: dict) -> str:
    lines = []
    ss = out["single_session"]
    lines.append(f"single session: R2 on held-out trials (mean ± std over seeds {out['seeds']})")
    for m in SS_MODELS:
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
        for g, gd in out["transfer_by_group"].items():
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
        f"[`accuracy.json`](accuracy.json). Protocol: the docstring of `benchmarks/accuracy.py` and the notes below.",
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
    png = md_path.with_suffix(".png")
    plot(out, png)
    old = md_path.read_text() if md_path.is_file() else None
    md_path.write_text(report_markdown(out, png.name, old))
    return [md_path, png]


# =================================================================================================
# CLI
# =================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick suite (about 10 min of CPU on 2 cores)")
    mode.add_argument("--smoke", action="store_true", help="every code path with 1 epoch on tiny sessions (for tests)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (tables go to stderr)")
    p.add_argument("--report", nargs="?", const=str(REPO / "docs" / "accuracy.md"), default=None, metavar="MD",
                   help="write the markdown report (and a PNG beside it); default path docs/accuracy.md")
    p.add_argument("--save-json", default=None, metavar="PATH", help="also write the JSON to PATH")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the tables (and with --report write the report) of a saved JSON")
    p.add_argument("--data", default=None, help=f"the Chewie file or its folder (default: ../shared/data/{DATA_NAME})")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--device", default="cpu", help="device of the POSSM jobs (e.g. cuda; baselines stay on the CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        out = json.loads(Path(args.from_json).read_text())
        print(tables(out), file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.report:
            for p in write_report(out, Path(args.report)):
                _log(f"wrote {p}")
        if args.json:
            print(json.dumps(out), flush=True)
        return 0
    global DEVICE
    DEVICE = os.environ["POSSM_BENCH_DEVICE"] = args.device  # workers (spawned) read it from the environment
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
    text = tables(out)
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.report:
        for p in write_report(out, Path(args.report)):
            _log(f"wrote {p}")
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
