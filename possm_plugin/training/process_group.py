"""Joining and leaving the process group that ``torchrun`` describes in the environment (or running
alone without one): :func:`init_distributed`, :func:`distributed_context` and :class:`DistContext`.
The training run on top of it is :mod:`possm_plugin.training.distributed`."""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from possm_plugin.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "distributed_context"]

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
