"""Multi-session pretraining on many processes and machines: ``torchrun`` + DistributedDataParallel.

Run it with::

    torchrun --nproc_per_node=N -m possm_plugin.distributed --config FILE.yaml --data DIR --out DIR

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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import save_checkpoint
from .cli.formatter import HelpFormatter
from .data import PreparedSession, WindowSampler, prepare_sessions
from .errors import ConfigError, PossmError
from .evaluate import evaluate_prepared
from .model import POSSM
from .optim import flat_cosine
from .session import Session, load_sessions
from .train import (
    TrainConfig,
    _load_optim,
    _save_optim,
    best_so_far,
    load_train_config,
    make_optimizer,
    model_for_run,
    primary_metric,
    progress_bar,
    run_epoch,
)

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "distributed_context",
    "shard_sessions",
    "rank_seed",
    "epoch_batches",
    "merge_metrics",
    "state_digest",
    "pretrain",
    "add_arguments",
    "forward_argv",
    "config_from_args",
    "run_args",
    "main",
    "LR_PER_SAMPLE",
]

log = logging.getLogger("possm_plugin.distributed")

LR_PER_SAMPLE = 3.125e-5
"""The authors' learning-rate rule: ``lr = 3.125e-5 x effective batch`` (4e-3 at 128)."""

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a run.

    ``backend`` is None when no process group is used (a single process without torchrun).
    ``owns_group`` says whether :func:`shutdown_distributed` should destroy the group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer (it is set by torchrun)") from None
    if value < 0:
        raise ConfigError(f"environment variable {name}={raw!r} must not be negative")
    return value


def init_distributed(device: str = "cpu", *, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that torchrun describes in the environment, or run alone.

    ``device`` is ``cpu`` (backend gloo) or ``cuda`` (backend nccl, one GPU per process: rank
    ``LOCAL_RANK`` of a node uses ``cuda:LOCAL_RANK``). Without ``WORLD_SIZE`` in the environment
    no group is created and the context describes one process. An already initialised group (made
    by the caller) is used as it is and left for the caller to destroy.
    """
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: distributed pretraining runs on 'cpu' (gloo) or 'cuda' (nccl)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use --device cpu")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        return DistContext(rank, world, local, dev, dist.get_backend(), owns_group=False)
    if "WORLD_SIZE" not in os.environ:
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)
        return DistContext(device=dev)
    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this torch build")
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {missing} are not: start the run with torchrun")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s): "
                f"give --nproc_per_node at most the number of GPUs"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
        # device_id (torch 2.3+) binds the group to this GPU; older torch guesses it from the rank
        bind = {"device_id": dev} if "device_id" in inspect.signature(dist.init_process_group).parameters else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **bind)
    else:
        dev, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, dev, backend, owns_group=True)


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if this context created it (safe to call twice)."""
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_context(device: str = "cpu", *, timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """:func:`init_distributed` whose group is torn down when the block ends, normally or not."""
    ctx = init_distributed(device, timeout_s=timeout_s)
    try:
        yield ctx
        if ctx.owns_group and dist.is_initialized():
            dist.barrier()  # no rank tears gloo down while a peer still has collectives in flight
    finally:
        shutdown_distributed(ctx)


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
    """Combine :func:`~possm_plugin.evaluate.evaluate_prepared` results of disjoint session sets into
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


# -- collectives that also work without a group ----------------------------------------------------
def _gather(ctx: DistContext, obj) -> list:
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _sum(ctx: DistContext, value: float) -> float:
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item())


# -- the run ---------------------------------------------------------------------------------------
def _sampler(prepared: list[PreparedSession], model: POSSM, cfg: TrainConfig, seed: int) -> WindowSampler:
    return WindowSampler(
        prepared, readout=model.config.readout, window_chunks=cfg.window_chunks, unit_dropout=cfg.unit_dropout,
        phase_weights=cfg.phase_weight_tuple, target_scale=model.config.target_scale, n_units=model.n_units,
        max_tokens=model.config.max_tokens_per_chunk, seed=seed, bin_jitter=cfg.bin_jitter, jitter_s=cfg.jitter_s,
    )


def pretrain(cfg: TrainConfig, *, resume: str | Path | None = None, timeout_s: float = 1800.0, ctx: DistContext | None = None) -> dict:
    """Pretrain on every session of ``cfg.data`` across the ranks torchrun started (or alone).

    Every rank returns the same result: ``best_epoch``, ``best`` (validation metrics), ``history``,
    ``n_parameters``, ``out``, ``world_size``, ``backend``, ``global_batch_size``,
    ``steps_per_epoch``, ``shards`` (rank -> its training session ids), ``rank_digests`` (each
    rank's :func:`state_digest` of its final weights) and ``ranks_in_sync``. The model ends at its
    best validation epoch, as :func:`~possm_plugin.train.fit` leaves it.

    ``ctx``: an existing context (its group is left alone); by default one is made from the
    environment and torn down before returning, on success or error.
    """
    if ctx is not None:
        return _run(cfg, ctx, resume)
    with distributed_context(cfg.device, timeout_s=timeout_s) as own:
        return _run(cfg, own, resume)


def _run(cfg: TrainConfig, ctx: DistContext, resume: str | Path | None) -> dict:
    if cfg.data is None:
        raise ConfigError("no training data: give data: DIR in the config or --data DIR (make some with `possm simulate`)")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rank, world = ctx.rank, ctx.world_size
    sessions: list[Session] = load_sessions(cfg.data)
    out_dir = Path(cfg.out)
    # a fresh model is built with the same seed on every rank
    model, start_epoch, optim_state = model_for_run(
        cfg, sessions, resume, hint=" (every rank must be able to read the run directory)"
    )
    torch.manual_seed(rank_seed(cfg.seed, rank, start_epoch))  # dropout differs between ranks
    model.to(ctx.device).train()

    cache: dict[int, PreparedSession] = {}

    def prepared(idx: list[int]) -> list[PreparedSession]:
        todo = [i for i in idx if i not in cache]
        for i, ps in zip(todo, prepare_sessions(model, [sessions[i] for i in todo], valid_fraction=cfg.valid_fraction)):
            cache[i] = ps
        return [cache[i] for i in idx]

    shard = shard_sessions(len(sessions), rank, world, sizes=[s.duration for s in sessions])
    sampler = _sampler(prepared(shard), model, cfg, rank_seed(cfg.seed, rank, start_epoch))
    # sessions this rank counts and validates: each session on exactly one rank
    owned = list(range(rank, len(sessions), world))
    owned_windows = len(_sampler(prepared(owned), model, cfg, 0)) if owned else 0
    total_windows = int(round(_sum(ctx, owned_windows)))
    global_batch = cfg.batch_size * world
    steps = max(1, math.ceil(total_windows / global_batch))
    shards = {r: [sessions[i].session_id for i in s] for r, s in enumerate(_gather(ctx, shard))}
    if ctx.is_main:
        log.info("%d rank(s) on %s (%s); %d sessions, %d training windows; %d steps/epoch of %d x %d windows",
                 world, ctx.device, ctx.backend or "no process group", len(sessions), total_windows, steps, cfg.batch_size, world)
        log.info("model: %s backbone, %d parameters, %d units", model.config.backbone, model.n_parameters(), model.n_units)
    log.debug("rank %d trains on %s", rank, shards[rank])

    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = make_optimizer(model, params, cfg)
    if optim_state is not None:
        _load_optim(opt, optim_state)
    epochs = cfg.epochs_for(steps)
    total, offset = steps * epochs, steps * start_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: flat_cosine(s + offset, total, flat_fraction=cfg.flat_fraction))
    net: torch.nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # wrapping broadcasts rank 0's parameters and buffers: identical starting weights. The buffers
        # are constants (rotary tables), so they need no sync at every forward.
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        net = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, **no_sync)

    best = best_so_far(out_dir, start_epoch)
    write = ctx.is_main and cfg.out is not None
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
    progress = contextlib.ExitStack()
    show = cfg.progress and ctx.is_main
    bar = progress.enter_context(progress_bar(total=total, initial=offset, desc=f"pretrain x{world}")) if show else None
    session_order = [s.session_id for s in sessions]
    dist_meta = {"world_size": world, "backend": ctx.backend, "global_batch_size": global_batch, "written_by_rank": rank}
    history: list[dict] = []
    best_state = None
    try:
        for epoch in range(start_epoch, epochs):
            net.train()
            t0 = time.perf_counter()
            losses = run_epoch(net, model, sampler, epoch_batches(sampler, cfg.batch_size, steps), device=ctx.device, opt=opt,
                               sched=sched, params=params, grad_clip=cfg.grad_clip, bar=bar, epoch=epoch)
            rank_losses = [float(v) for v in _gather(ctx, float(np.mean(losses)))]
            mine = [cache[i] for i in owned]
            local = evaluate_prepared(model, mine, split="valid", device=ctx.device) if mine else {}
            valid = merge_metrics(_gather(ctx, local), session_order)
            row = {"epoch": epoch, "train_loss": float(np.mean(rank_losses)), "train_loss_per_rank": rank_losses,
                   "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 2), "steps": steps,
                   "world_size": world, "global_batch_size": global_batch, "valid": valid}
            history.append(row)
            metric = primary_metric(valid)
            improved = bool(metric > best["metric"])  # every rank sees the same metrics: same decision
            if improved:
                best = {"epoch": epoch, "metric": metric, "metrics": valid}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if ctx.is_main:
                log.info("epoch %d loss %.4f valid %s", epoch, row["train_loss"], {k: v for k, v in valid.items() if not isinstance(v, dict)})
            if write:
                with open(out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                meta = {"epoch": epoch, "valid": valid, "train": dataclasses.asdict(cfg), "distributed": dist_meta}
                ds = cfg.default_session if cfg.default_session in model.session_vocab else None
                save_checkpoint(model, out_dir / "last", meta=meta, default_session=ds)
                _save_optim(opt, out_dir / "last.optim.safetensors", {"epoch": epoch})
                if improved:
                    save_checkpoint(model, out_dir / "best", meta=meta, default_session=ds)
    finally:
        progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    digests = _gather(ctx, state_digest(model))
    in_sync = len(set(digests)) == 1
    if not in_sync and ctx.is_main:
        log.error("ranks ended with different weights: %s", digests)
    return {"best_epoch": best["epoch"], "best": best["metrics"], "history": history, "n_parameters": model.n_parameters(),
            "out": str(out_dir), "world_size": world, "backend": ctx.backend, "global_batch_size": global_batch,
            "steps_per_epoch": steps, "shards": shards, "rank_digests": digests, "ranks_in_sync": in_sync}


# -- command line ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags shared by ``python -m possm_plugin.distributed`` and ``possm pretrain``."""
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
    """The parsed training flags as an argument list for ``-m possm_plugin.distributed``."""
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
        prog="python -m possm_plugin.distributed",
        description="Multi-session POSSM pretraining with DistributedDataParallel. Start it with "
                    "`torchrun --nproc_per_node=N -m possm_plugin.distributed ...`; without torchrun it runs as one process.",
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
    sys.exit(main())
