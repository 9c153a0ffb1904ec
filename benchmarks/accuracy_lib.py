"""Parts of the accuracy benchmark (``benchmarks/accuracy.py``): the simulated and real sessions it
uses, how each decoder is trained, and how it is scored, plus a binned GRU for classification and CTC.

Shared by the benchmark's worker processes; see ``accuracy.py`` for the protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from accuracy_suites import Suite

REPO = Path(__file__).resolve().parents[1]
DATA_NAME = "chewie_m1_center_out_2013-10-03_100ms.npz"
TEST_FRACTION = 0.2
VALID_FRACTION = 0.2  # of the training trials

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
    """A session made of the given trials only, laid back to back from 0 s (``Session.cut``)."""
    return session.cut(trials)


def find_real_data(explicit: str | None = None) -> Path | None:
    """The Chewie 2013-10-03 recording: ``explicit`` (the file, or a folder holding it), else the one
    bundled with the package (``bundled_files``); None when it is not there."""
    from possm_plugin.data.importers.binned import bundled_files
    from possm_plugin.errors import DataError

    if not explicit:
        try:
            return next((f for f in bundled_files() if f.name == DATA_NAME), None)
        except DataError:  # the package data is missing
            return None
    p = Path(explicit)
    if p.is_dir():
        p = p / DATA_NAME
    return p if p.is_file() else None


@functools.lru_cache(maxsize=2)
def chewie(path: str):
    from possm_plugin.data.importers.binned import load_chewie

    return load_chewie(path)


def real_split(path: str, split: int):
    """(train session, test session) of split ``split`` of the Chewie session: the 5 disjoint test
    folds of the shuffled trials (seed 0), each 20 %; a suite uses the first ``real_splits``."""
    from possm_plugin.baselines.binning import kfold_trials

    s = chewie(path)
    fold = kfold_trials(len(s.trials), 5, seed=0)[split]
    return cut_trials(s, fold["train"]), cut_trials(s, fold["test"])


# =================================================================================================
# scoring
# =================================================================================================
def possm_predict(model, session, n_chunks: int | None = None) -> np.ndarray:
    """POSSM outputs (physical units) for chunks 0..n-1 of the session's grid, decoded as one stream
    from a fresh state at 0 s (``recipe.predict_session``)."""
    from possm_plugin.training.recipe import predict_session

    return predict_session(model, session, n_chunks)


def eval_grid(session, trials: np.ndarray, width: float):
    """Targets and chunk ends of the scored chunks: those of ``trials`` on the ``width`` grid."""
    from possm_plugin.baselines.binning import bin_session

    b = bin_session(session, width=width, step=width)
    m = b.mask(trials)
    return b.targets[m], b.ends[m]


def r2_possm(model, session, trials: np.ndarray, *, grid: float = 0.05) -> float:
    """R2 (mean over outputs) of POSSM on the chunks of ``trials`` of the ``grid`` bins: POSSM's
    output at the chunk that ends where each scored bin ends."""
    from possm_plugin.training.metrics import r2_mean

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
    from possm_plugin.baselines.binning import TrialSubset
    from possm_plugin.training.metrics import r2_mean

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


def train_config(suite: Suite, *, seed: int, lr: float | None = None, multi_session: bool = False,
                 batch_size: int | None = None):
    """``fit``'s config: the recipe of ``possm train`` (schedule, clipping, AdamW, spike times re-drawn
    inside their chunks, weight average, unit dropout by task: :data:`possm_plugin.training.train.RECIPE`)
    with the suite's batch size, learning rate and phase weights (``suite.phase_weights``: the benchmark
    scores R2 on every chunk of the test trials, as the baselines are trained, so it weights all phases
    alike; the recipe's reach x5 / hold x0.1 aims at reach-period R2). Multi-session pretraining keeps
    unit dropout 0.6."""
    from possm_plugin.training.train import RECIPE, TrainConfig

    budget = ("batch_size", "lr", "min_steps", "epochs", "unit_dropout")  # the suite sets these itself
    cfg = TrainConfig(**{k: v for k, v in RECIPE.items() if k not in budget}, batch_size=batch_size or suite.batch_size,
                      lr=lr or suite.lr, seed=seed, progress=False, valid_fraction=VALID_FRACTION, device=DEVICE)
    if suite.phase_weights is not None:
        cfg = dataclasses.replace(cfg, phase_weights=dict(suite.phase_weights))
    return cfg if multi_session else dataclasses.replace(cfg, unit_dropout=suite.unit_dropout)


def steps_per_epoch(model, sessions, cfg) -> int:
    """Optimiser steps of one epoch of ``fit`` on ``sessions`` (the windows its sampler draws)."""
    from possm_plugin.data.prepared import WindowSampler, prepare_sessions

    prepared = prepare_sessions(model, sessions, valid_fraction=cfg.valid_fraction)
    sampler = WindowSampler(prepared, readout=model.config.readout, window_chunks=cfg.window_chunks,
                            n_units=model.n_units, seed=0)
    return max(1, math.ceil(len(sampler) / cfg.batch_size))


def epochs_for(suite: Suite, steps: int, per_epoch: int) -> int:
    return int(min(suite.max_epochs, max(suite.min_epochs, math.ceil(steps / per_epoch))))


def train_possm(suite: Suite, spec: dict, sessions, *, seed: int, steps: int, lr: float | None = None,
                batch_size: int | None = None):
    """A fresh POSSM fit on ``sessions`` (valid: the last 20 % of their listed trials) for about
    ``steps`` optimiser steps of ``batch_size`` (default ``suite.batch_size``) windows."""
    from possm_plugin.training.train import build_model, fit

    _seed_all(seed)
    model = build_model(spec, sessions, seed=seed)
    cfg = train_config(suite, seed=seed, lr=lr, multi_session=len(sessions) > 1, batch_size=batch_size)
    cfg = dataclasses.replace(cfg, epochs=epochs_for(suite, steps, steps_per_epoch(model, sessions, cfg)))
    res = fit(model, sessions, cfg=cfg)
    info = {"epochs": cfg.epochs, "best_epoch": res["best_epoch"], "n_parameters": model.n_parameters()}
    return model, info


def adapt_possm(suite: Suite, checkpoint: str, sessions, *, mode: str, seed: int, steps: int):
    """The pretrained model adapted to ``sessions`` by UI or FT (``finetune``)."""
    from possm_plugin.model.checkpoint import load_checkpoint
    from possm_plugin.training.finetune import add_sessions, finetune
    from possm_plugin.training.recipe import FT_LR_SCALE

    _seed_all(seed)
    model, _ = load_checkpoint(checkpoint)
    cfg = train_config(suite, seed=seed)
    probe, _ = load_checkpoint(checkpoint)  # count the windows on a copy that knows the new units
    add_sessions(probe, sessions)
    epochs = epochs_for(suite, steps, steps_per_epoch(probe, sessions, cfg))
    if mode == "ft":
        epochs = max(2, epochs)
    res = finetune(model, sessions, mode=mode, epochs=epochs, ui_epochs=None if mode == "ui" else max(1, epochs // 2),
                   lr=suite.ui_lr, ft_lr=suite.lr * FT_LR_SCALE, batch_size=suite.batch_size, seed=seed, train_config=cfg)
    from possm_plugin.training.train import primary_metric

    scores = [primary_metric(h["valid"]) for h in res["history"]]  # UI epochs, then FT's
    info = {"epochs": epochs, "best_epoch": int(np.nanargmax(scores)) if np.isfinite(scores).any() else -1,
            "trainable_fraction": res["trainable_fraction"], "trainable_parameters": res["trainable_parameters"]}
    return model, info


def fit_baseline(suite: Suite, name: str, train, valid, *, seed: int, width: float = 0.05):
    from possm_plugin.baselines import make_baseline

    _seed_all(seed)
    if name == "wiener":
        return make_baseline("wiener", n_lags=3 if width > 0.05 else 5, width=width, step=width).fit(train, valid)
    if name == "kalman":
        return make_baseline("kalman", width=width, step=width).fit(train, valid)
    if name == "poyo":
        # POYO is trained for a number of optimiser steps: its "epoch" (every training chunk once as a
        # query) is only ~6-12 steps of 16 windows on a quick session, and a transformer reading raw
        # spike tokens needs ~100 steps before its latents localise in time (R2 ~0 until then)
        kw = {"dim": 32, "dim_head": 32, "depth": 1, "latents_per_step": 1} if suite.tiny else {}
        return make_baseline("poyo", width=width, step=width, **kw).fit(
            train, valid, epochs=1, steps=suite.poyo_steps, batch_size=suite.poyo_batch_size, lr=suite.poyo_lr,
            eval_every=max(1, suite.poyo_steps // suite.poyo_evals), seed=seed)
    epochs = suite.baseline_epochs[name]
    kw = {}
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
        from possm_plugin.baselines.binning import bin_session

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

        from possm_plugin.training.metrics import ctc_greedy_decode, token_error_rate

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
