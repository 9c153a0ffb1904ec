"""LAMB (You et al. 2020) and the constant-then-cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

__all__ = ["Lamb", "flat_cosine"]


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
