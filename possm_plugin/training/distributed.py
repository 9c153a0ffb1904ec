"""Multi-session pretraining on many processes and machines: ``torchrun`` + DistributedDataParallel.

Run it with::

    torchrun --nproc_per_node=N -m possm_plugin.training.distributed --config FILE.yaml --data DIR --out DIR

(or ``possm pretrain --nproc-per-node N ...``, which launches exactly that). Without torchrun's
environment (``RANK``, ``WORLD_SIZE``, ...) it runs as a single process. See docs/pretraining.md.

How a run is laid out:

- Every rank builds the model from the same seed over the vocabularies of *all* sessions, and DDP
  broadcasts rank 0's weights when it wraps the model, so all ranks start identical.
- Training sessions are sharded across ranks (:func:`shard_sessions`, balanced by duration); with
  fewer sessions than ranks, ranks share sessions and draw different windows, because each rank's
  sampler has its own seed (:func:`rank_seed`).
- An epoch is one pass over the training windows of all sessions: every rank takes the same number
  of full batches, ``ceil(windows / (batch_size * world_size))``; DDP averages the gradients, so the
  effective batch is ``batch_size * world_size``.
- Validation is split across ranks by session and the per-session metrics are gathered, so every
  rank sees the same numbers and keeps the same best epoch.
- Only rank 0 writes checkpoints, ``metrics.jsonl`` and the progress bar. The process group is
  destroyed on exit and on error.

The epoch loop is :func:`possm_plugin.training.train.fit`, the one ``possm train`` runs, so every recipe feature
(weight average, ``min_steps``, jitter, best/last checkpoints, resume) works here too; this module adds
only what is distributed: the process group (:mod:`possm_plugin.training.process_group`), :class:`RankRuntime` (sharding, seeds, DDP, gathering the
losses and metrics) and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import hashlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.data.prepared import WindowSampler
from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, PossmError
from possm_plugin.model.possm import POSSM
from possm_plugin.training.process_group import DistContext, distributed_context, init_distributed, shutdown_distributed
from possm_plugin.training.train import Runtime, TrainConfig, load_train_config, train_model

__all__ = [
    "DistContext", "RankRuntime", "init_distributed", "shutdown_distributed", "distributed_context", "shard_sessions",
    "rank_seed", "epoch_batches", "merge_metrics", "state_digest", "pretrain", "add_arguments", "forward_argv",
    "config_from_args", "run_args", "main", "LR_PER_SAMPLE",
]

log = logging.getLogger("possm_plugin.training.distributed")

LR_PER_SAMPLE = 3.125e-5
"""The authors' learning-rate rule: ``lr = 3.125e-5 x effective batch`` (4e-3 at 128)."""

# -- pure helpers ------------------------------------------------------------------------------
def shard_sessions(n_sessions: int, rank: int, world_size: int, *, sizes: Sequence[float] | None = None) -> list[int]:
    """Indices of the sessions that ``rank`` trains on.

    With at least as many sessions as ranks, each session goes to exactly one rank: sessions are
    taken largest first (``sizes``, e.g. durations; equal if None) and each goes to the rank with
    the least data so far (ties: the lower rank), which makes the shards a deterministic partition
    of nearly equal size. With fewer sessions than ranks, rank r trains on session ``r % n``:
    every session is covered and ranks that share one draw different windows (see :func:`rank_seed`).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
    if n_sessions < 1:
        raise ConfigError(f"n_sessions={n_sessions}: there must be at least one training session")
    if n_sessions < world_size:
        return [rank % n_sessions]
    w = np.ones(n_sessions) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if w.shape != (n_sessions,):
        raise ConfigError(f"sizes has {w.size} entries for {n_sessions} sessions")
    load = np.zeros(world_size)
    mine: list[int] = []
    for i in sorted(range(n_sessions), key=lambda j: (-w[j], j)):
        r = int(np.argmin(load))  # first minimum: the lowest rank among the least loaded
        load[r] += w[i]
        if r == rank:
            mine.append(i)
    return sorted(mine)


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """A seed for one rank's window sampler and dropout, distinct per ``(seed, rank, epoch)``."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


def epoch_batches(sampler: WindowSampler, batch_size: int, steps: int) -> list[list[int]]:
    """Exactly ``steps`` full batches of window indices, from as many random passes over the
    sampler's windows as it takes (every rank must take the same number of equal steps)."""
    need = steps * batch_size
    order: list[int] = []
    while len(order) < need:
        order.extend(sampler.rng.permutation(len(sampler)).tolist())
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def merge_metrics(parts: Sequence[dict], session_order: Sequence[str]) -> dict:
    """Combine :func:`~possm_plugin.training.evaluate.evaluate_prepared` results of disjoint session sets into
    the result for all of them: per-session tables are joined (in ``session_order``) and each
    headline metric is the mean over sessions, as evaluate_prepared computes it."""
    tables: dict[str, dict] = {}
    for part in parts:
        for key, val in part.items():
            if isinstance(val, dict):
                tables.setdefault(key, {}).update(val)
    out: dict = {}
    for key, table in tables.items():
        if key.endswith("_per_session"):
            ordered = [table[s] for s in session_order if s in table]
            out[key[: -len("_per_session")]] = float(np.mean(ordered)) if ordered else float("nan")
    for key, table in tables.items():
        out[key] = {s: table[s] for s in session_order if s in table}
    return out


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the model's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- one rank of a run ------------------------------------------------------------------------------
class RankRuntime(Runtime):
    """One rank of a run, for :func:`~possm_plugin.training.train.fit`: it trains on its shard of the sessions
    (:func:`shard_sessions`), validates every ``world_size``-th session, draws its own windows and dropout
    (:func:`rank_seed`), takes the same number of full batches as every other rank (:func:`epoch_batches`),
    trains through DDP (which averages the gradients), and gathers the losses and validation metrics so
    that every rank sees the same numbers and keeps the same best epoch. Without a process group it is
    a single rank. ``shards`` (rank -> its training session ids) and ``steps`` are set as fit asks."""

    def __init__(self, ctx: DistContext, *, batch_size: int) -> None:
        self.ctx, self.batch_size = ctx, batch_size
        self.rank, self.world_size, self.device = ctx.rank, ctx.world_size, ctx.device
        self.resume_hint = " (every rank must be able to read the run directory)"
        self.shards: dict[int, list[str]] = {}
        self.steps = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def meta(self) -> dict:
        return {"distributed": {"world_size": self.world_size, "backend": self.ctx.backend,
                                "global_batch_size": self.global_batch_size, "written_by_rank": self.rank}}

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (alone: ``[obj]``)."""
        if not self.ctx.distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def shard(self, sessions: list[Session]) -> list[int]:
        mine = shard_sessions(len(sessions), self.rank, self.world_size, sizes=[s.duration for s in sessions])
        self.shards = {r: [sessions[i].session_id for i in s] for r, s in enumerate(self.gather(mine))}
        log.debug("rank %d trains on %s", self.rank, self.shards[self.rank])
        return mine

    def owned(self, sessions: list[Session]) -> list[int]:
        return list(range(self.rank, len(sessions), self.world_size))  # each session on exactly one rank

    def seed(self, seed: int, start_epoch: int) -> int:
        s = rank_seed(seed, self.rank, start_epoch)
        torch.manual_seed(s)  # dropout differs between ranks
        return s

    def steps_per_epoch(self, sampler: WindowSampler, batch_size: int) -> int:
        """One epoch is one pass over the training windows of all sessions, in full batches of every rank."""
        windows: dict[str, int] = {}
        for si, *_ in sampler.items:
            windows[sampler.sessions[si].sid] = windows.get(sampler.sessions[si].sid, 0) + 1
        total = sum({sid: n for part in self.gather(windows) for sid, n in part.items()}.values())  # shared sessions once
        self.steps = max(1, math.ceil(total / self.global_batch_size))
        if self.is_main:
            log.info("%d rank(s) on %s (%s); %d training windows; %d steps/epoch of %d x %d windows", self.world_size,
                     self.device, self.ctx.backend or "no process group", total, self.steps, batch_size, self.world_size)
        return self.steps

    def batches(self, sampler: WindowSampler, batch_size: int, steps: int) -> list[list[int]]:
        return epoch_batches(sampler, batch_size, steps)

    def wrap(self, model: POSSM) -> torch.nn.Module:
        if not self.ctx.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # wrapping broadcasts rank 0's parameters and buffers: identical starting weights. The buffers
        # are constants (rotary tables), so they need no sync at every forward.
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_sync)

    def epoch_losses(self, losses: list[float]) -> dict:
        per_rank = [float(v) for v in self.gather(float(np.mean(losses)))]
        return {"train_loss": float(np.mean(per_rank)), "train_loss_per_rank": per_rank, "steps": self.steps,
                "world_size": self.world_size, "global_batch_size": self.global_batch_size}

    def merge_valid(self, local: dict, session_order: list[str]) -> dict:
        return merge_metrics(self.gather(local), session_order)


def pretrain(cfg: TrainConfig, *, resume: str | Path | None = None, timeout_s: float = 1800.0, ctx: DistContext | None = None) -> dict:
    """Pretrain on every session of ``cfg.data`` across the ranks torchrun started (or alone), with
    :func:`~possm_plugin.training.train.fit` and a :class:`RankRuntime`.

    Every rank returns the same result: ``best_epoch``, ``best`` (validation metrics), ``history``,
    ``n_parameters``, ``out``, ``world_size``, ``backend``, ``global_batch_size``,
    ``steps_per_epoch``, ``shards`` (rank -> its training session ids), ``rank_digests`` (each
    rank's :func:`state_digest` of its final weights) and ``ranks_in_sync``. The model ends at its
    best validation epoch, as :func:`~possm_plugin.training.train.fit` leaves it.

    ``ctx``: an existing context (its group is left alone); by default one is made from the
    environment and torn down before returning, on success or error.
    """
    if ctx is not None:
        return _run(cfg, ctx, resume)
    with distributed_context(cfg.device, timeout_s=timeout_s) as own:
        return _run(cfg, own, resume)


def _run(cfg: TrainConfig, ctx: DistContext, resume: str | Path | None) -> dict:
    rt = RankRuntime(ctx, batch_size=cfg.batch_size)
    model, res = train_model(cfg, resume=resume, runtime=rt)  # a fresh model is built with the same seed on every rank
    digests = rt.gather(state_digest(model))
    in_sync = len(set(digests)) == 1
    if not in_sync and ctx.is_main:
        log.error("ranks ended with different weights: %s", digests)
    return {**res, "world_size": ctx.world_size, "backend": ctx.backend, "global_batch_size": rt.global_batch_size,
            "shards": rt.shards, "rank_digests": digests, "ranks_in_sync": in_sync}


# -- command line ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags shared by ``python -m possm_plugin.training.distributed`` and ``possm pretrain``."""
    p.add_argument("--config", help="YAML training config (sections model/data/train/out), as for `possm train`")
    p.add_argument("--data", help="directory of session .npz files (every rank reads it)")
    p.add_argument("--out", help="run directory that rank 0 writes (best.*, last.*, metrics.jsonl)")
    p.add_argument("--epochs", type=int, help="epochs (one epoch = one pass over all training windows)")
    p.add_argument("--batch-size", type=int, help="windows per batch on each rank (effective batch: x world size)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--scale-lr", action="store_true",
                   help=f"set the learning rate to {LR_PER_SAMPLE:g} x batch size x world size (overrides --lr and the config)")
    p.add_argument("--seed", type=int, help="random seed (each rank derives its own sampling seed from it)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="cpu (gloo) or cuda (nccl, one GPU per process)")
    p.add_argument("--resume", help="run directory (or last.yaml) to resume from; every rank must be able to read it")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a collective may wait for the other ranks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="rank 0 prints the result as one JSON object")


_FORWARD = (("config", "--config"), ("data", "--data"), ("out", "--out"), ("epochs", "--epochs"),
            ("batch_size", "--batch-size"), ("lr", "--lr"), ("seed", "--seed"), ("device", "--device"),
            ("resume", "--resume"), ("timeout", "--timeout"))
_FLAGS = (("scale_lr", "--scale-lr"), ("no_progress", "--no-progress"), ("json", "--json"))


def forward_argv(args: argparse.Namespace) -> list[str]:
    """The parsed training flags as an argument list for ``-m possm_plugin.training.distributed``."""
    argv: list[str] = []
    for attr, flag in _FORWARD:
        v = getattr(args, attr, None)
        if v is not None:
            argv += [flag, str(v)]
    for attr, flag in _FLAGS:
        if getattr(args, attr, False):
            argv.append(flag)
    return argv


def config_from_args(args: argparse.Namespace, world_size: int = 1) -> TrainConfig:
    """The config file with the flags applied; ``--scale-lr`` sets lr for ``world_size`` ranks."""
    cfg = load_train_config(
        args.config, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=args.device, progress=False if args.no_progress else None,
    )
    if args.scale_lr:
        cfg = dataclasses.replace(cfg, lr=LR_PER_SAMPLE * cfg.batch_size * world_size)
    return cfg


def summary(result: dict) -> dict:
    """The one-line summary printed by rank 0."""
    keep = ("out", "best_epoch", "n_parameters", "world_size", "backend", "global_batch_size", "steps_per_epoch",
            "shards", "rank_digests", "ranks_in_sync")
    return {**{k: result[k] for k in keep}, **result["best"]}


def run_args(args: argparse.Namespace) -> int:
    """Run pretraining in this process (one rank of a torchrun job, or alone); 0 if the ranks agree."""
    cfg = config_from_args(args)  # config errors surface before any rank waits for the others
    with distributed_context(cfg.device, timeout_s=args.timeout) as ctx:
        cfg = config_from_args(args, ctx.world_size)
        if ctx.is_main:
            log.info("learning rate %.3g, effective batch %d x %d = %d", cfg.lr, cfg.batch_size, ctx.world_size,
                     cfg.batch_size * ctx.world_size)
        result = pretrain(cfg, resume=args.resume, ctx=ctx)
    if ctx.is_main:
        s = summary(result)
        if args.json:
            print(json.dumps(s), flush=True)
        else:
            metrics = ", ".join(f"{k}={v:.4f}" for k, v in result["best"].items() if isinstance(v, float))
            print(f"best epoch {s['best_epoch']} on {s['world_size']} rank(s): {metrics}")
            print(f"ranks in sync: {s['ranks_in_sync']}; checkpoint: {s['out']}/best.yaml", flush=True)
    return 0 if result["ranks_in_sync"] else 1


def _raise_on_sigterm(signum, frame):  # torchrun stops the other workers with SIGTERM when one fails
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m possm_plugin.training.distributed",
        description="Multi-session POSSM pretraining with DistributedDataParallel. Start it with "
                    "`torchrun --nproc_per_node=N -m possm_plugin.training.distributed ...`; without torchrun it runs as one process.",
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level of rank 0")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    level = args.log_level if rank == "0" else "WARNING"
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_on_sigterm)  # so that the finally blocks tear the group down
    try:
        return run_args(args)
    except PossmError as exc:
        print(f"possm pretrain [rank {rank}]: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"possm pretrain [rank {rank}]: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover - exercised through torchrun in tests
    faulthandler.enable()  # a native abort (gloo, a library's thread) prints every thread's Python stack first
    sys.exit(main())
