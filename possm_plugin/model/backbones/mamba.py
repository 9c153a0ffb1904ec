"""Mamba backbone: selective state-space blocks (Gu & Dao 2023), pure PyTorch.

Block: LayerNorm -> in_proj to (x, z) -> causal depthwise conv (kernel ``d_conv``) -> SiLU ->
input-dependent (dt, B, C) -> selective scan ``h <- exp(dt*A)*h + dt*B*x``, ``y = C.h + D*x`` ->
``y * silu(z)`` -> out_proj -> residual. The scan is a loop over chunks (T is 20 in training).
The ``mamba-ssm`` CUDA kernels are not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from possm_plugin.model.backbones.base import Backbone, State, register_backbone

__all__ = ["MambaBackbone", "MambaBlock"]


class MambaBlock(nn.Module):
    def __init__(self, *, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.randn(d_inner, d_conv) / math.sqrt(d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner))
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self._a_cache: tuple | None = None

    def _a(self) -> torch.Tensor:
        """A = -exp(A_log); cached while gradients are off and A_log unchanged."""
        if torch.is_grad_enabled():
            return -torch.exp(self.A_log)
        key = (self.A_log.data_ptr(), self.A_log._version)
        if self._a_cache is None or self._a_cache[0] != key:
            self._a_cache = (key, -torch.exp(self.A_log))
        return self._a_cache[1]

    def step(self, x: torch.Tensor, conv: torch.Tensor, ssm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, d_model); conv (B, d_inner, d_conv-1) past inputs; ssm (B, d_inner, d_state)."""
        xz = self.in_proj(self.norm(x))
        u, z = xz.chunk(2, dim=-1)
        window = torch.cat([conv, u.unsqueeze(-1)], dim=-1)  # (B, d_inner, d_conv)
        u = F.silu((window * self.conv_weight).sum(-1) + self.conv_bias)
        dbc = self.x_proj(u)
        dt, b, c = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # (B, d_inner)
        a = self._a()  # (d_inner, d_state)
        da = torch.exp(dt.unsqueeze(-1) * a)
        ssm = da * ssm + (dt * u).unsqueeze(-1) * b.unsqueeze(1)
        y = (ssm * c.unsqueeze(1)).sum(-1) + self.D * u
        y = y * F.silu(z)
        return x + self.out_proj(y), window[..., 1:], ssm


class MambaBackbone(Backbone):
    """Input projection, ``layers`` Mamba blocks, LayerNorm.
    State: ``(conv, ssm)`` with conv (B, L, d_inner, d_conv-1) and ssm (B, L, d_inner, d_state)."""

    def __init__(self, *, d_input: int, hidden: int = 128, layers: int = 2, d_state: int = 16, expand: int = 2,
                 d_conv: int = 4, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        if hidden <= 0 or layers <= 0:
            raise ValueError(f"hidden and layers must be positive, got hidden={hidden}, layers={layers}")
        self.d_input, self.d_output = d_input, hidden
        self.proj = nn.Linear(d_input, hidden)
        self.blocks = nn.ModuleList(
            MambaBlock(d_model=hidden, d_state=d_state, expand=expand, d_conv=d_conv, dt_min=dt_min, dt_max=dt_max)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(hidden)

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> State:
        blk = self.blocks[0]
        n = len(self.blocks)
        return (
            torch.zeros(batch_size, n, blk.d_inner, blk.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, n, blk.d_inner, blk.d_state, device=device, dtype=dtype),
        )

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        conv_all, ssm_all = state
        h = self.proj(x)
        convs, ssms = [], []
        for i, blk in enumerate(self.blocks):
            h, c, s = blk.step(h, conv_all[:, i], ssm_all[:, i])
            convs.append(c)
            ssms.append(s)
        return self.norm(h), (torch.stack(convs, 1), torch.stack(ssms, 1))


register_backbone("mamba", MambaBackbone)
