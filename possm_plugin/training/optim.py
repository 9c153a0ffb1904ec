"""LAMB (You et al. 2020), the constant-then-cosine learning-rate schedule, the moving average of the
weights, and the optimiser state file a run resumes from."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch

from possm_plugin.errors import CheckpointError

__all__ = ["Lamb", "flat_cosine", "WeightAverage", "save_optimizer_state", "load_optimizer_state"]


class Lamb(torch.optim.Optimizer):
    """Adam moments with a per-tensor trust ratio ``||w|| / ||update||`` (decoupled weight decay)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = float(st["step"])
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m = st["exp_avg"] / (1 - b1**t)
                v = st["exp_avg_sq"] / (1 - b2**t)
                upd = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    upd = upd.add(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), upd.norm()
                trust = (w_norm / u_norm) if (w_norm > 0 and u_norm > 0) else torch.ones(())
                p.add_(upd, alpha=-group["lr"] * float(trust))
        return loss


def flat_cosine(step: int, total: int, *, flat_fraction: float = 0.5, final: float = 0.0) -> float:
    """LR multiplier: 1 for the first ``flat_fraction`` of training, then cosine down to ``final``."""
    if total <= 0:
        return 1.0
    flat = int(total * flat_fraction)
    if step < flat:
        return 1.0
    p = min(1.0, (step - flat) / max(1, total - flat))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))


class WeightAverage:
    """Exponential moving average of a model's parameters (``decay`` per optimiser step, with the usual
    warm-up ``min(decay, (1 + n) / (10 + n))`` so that early steps are not swamped by the initial weights).
    :meth:`swapped` puts the averaged weights into the model for validation and checkpoints."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model, self.decay, self.n = model, float(decay), 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        for a, p in zip(self.shadow, self.model.parameters()):
            a.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def swapped(self):
        with torch.no_grad():
            live = [p.detach().clone() for p in self.model.parameters()]
            for a, p in zip(self.shadow, self.model.parameters()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, p in zip(live, self.model.parameters()):
                    p.copy_(v)


def save_optimizer_state(opt: torch.optim.Optimizer, path: Path, extra: dict) -> None:
    """Write ``opt``'s state (tensors, and the scalars with ``extra`` as JSON metadata) to a safetensors file."""
    from possm_plugin.model.checkpoint import write_safetensors

    tensors, scalars = {}, {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    tmp = path.with_name(path.name + ".tmp")
    write_safetensors(tensors, tmp, metadata={"extra": json.dumps({**extra, "scalars": scalars})})
    os.replace(tmp, path)  # a crash mid-write leaves the previous state whole


def load_optimizer_state(opt: torch.optim.Optimizer, path: Path) -> dict:
    """Load a file written by :func:`save_optimizer_state` into ``opt``; returns its ``extra``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            extra = json.loads(f.metadata()["extra"])
    except Exception as exc:  # noqa: BLE001 - any failure means the resume file is unusable
        raise CheckpointError(f"optimizer state {str(path)!r} is unreadable ({exc})") from None
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in [*tensors.items(), *extra.get("scalars", {}).items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    return extra
