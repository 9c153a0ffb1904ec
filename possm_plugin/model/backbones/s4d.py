"""S4D backbone: diagonal state-space layers (Gu et al. 2022), pure PyTorch.

Each layer runs H independent complex diagonal SSMs of N/2 modes (conjugate pairs implied):
S4D-Lin init (A = -1/2 + i*pi*n), zero-order-hold discretisation with a learned step
dt in [dt_min, dt_max] (log-uniform init), C complex, B fixed to 1, a skip D.

Block: LayerNorm -> SSM -> GELU -> dropout -> Linear(H, 2H) -> GLU -> residual.
Sequence form: causal convolution with the SSM kernel (direct for short sequences, FFT for long);
step form: the recurrence ``s <- Abar*s + Bbar*x``, ``y = 2*Re(C.s) + D*x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from possm_plugin.model.backbones.base import Backbone, State, register_backbone

__all__ = ["S4DBackbone", "S4DLayer"]

_DIRECT_MAX_T = 64


class S4DLayer(nn.Module):
    def __init__(self, *, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, dropout: float = 0.0) -> None:
        super().__init__()
        if d_state % 2:
            raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
        h, n2 = d_model, d_state // 2
        self.d_model, self.n2 = h, n2
        log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(h, n2)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n2, dtype=torch.float32).repeat(h, 1))
        self.C = nn.Parameter(torch.randn(h, n2, 2) * (0.5**0.5))
        self.D = nn.Parameter(torch.randn(h))
        self.norm = nn.LayerNorm(h)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(h, 2 * h)
        self._step_cache: tuple | None = None

    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Abar (H, N2), C*Bbar (H, N2), both complex; and dt*A."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dtA = A * torch.exp(self.log_dt).unsqueeze(-1)
        abar = torch.exp(dtA)
        bbar = (abar - 1.0) / A
        c = torch.view_as_complex(self.C.contiguous())
        return abar, c * bbar, dtA

    def kernel(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The SSM convolution kernel K (H, length), and Abar**l (H, N2, length) complex."""
        _, cb, dtA = self._discrete()
        pos = torch.arange(length, device=dtA.device, dtype=torch.float32)
        powers = torch.exp(dtA.unsqueeze(-1) * pos)  # (H, N2, L)
        return 2.0 * torch.einsum("hn,hnl->hl", cb, powers).real, powers

    def _post(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(F.gelu(y))
        return x + F.glu(self.out(y), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) from the zero state -> y (B, T, H) and the final state (B, H, N2) complex."""
        t = x.shape[1]
        u = self.norm(x).transpose(1, 2)  # (B, H, T)
        k, powers = self.kernel(t)
        s_final = torch.einsum("hnt,bht->bhn", powers.flip(-1), u.to(powers.dtype))
        if t <= _DIRECT_MAX_T:
            # Toeplitz matrix: y[b,h,i] = sum_j K[h, i-j] u[b,h,j], j <= i
            idx = torch.arange(t, device=x.device)
            diff = idx.unsqueeze(1) - idx.unsqueeze(0)
            toe = k[:, diff.clamp(min=0)] * (diff >= 0)
            y = torch.einsum("hij,bhj->bhi", toe, u)
        else:
            n = 2 * t
            y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :t]
        y = y + u * self.D.unsqueeze(-1)
        return self._post(y.transpose(1, 2), x), s_final

    def _discrete_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Abar and C*Bbar for stepping; cached while gradients are off and the weights unchanged."""
        if torch.is_grad_enabled():
            abar, cb, _ = self._discrete()
            return abar, cb
        key = tuple((p.data_ptr(), p._version) for p in (self.log_dt, self.log_A_real, self.A_imag, self.C))
        if self._step_cache is None or self._step_cache[0] != key:
            abar, cb, _ = self._discrete()
            self._step_cache = (key, abar, cb)
        return self._step_cache[1], self._step_cache[2]

    def step(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, H), s (B, H, N2) complex -> y (B, H), new s."""
        abar, cb = self._discrete_step()
        u = self.norm(x)
        s = abar * s + u.unsqueeze(-1).to(s.dtype)
        y = 2.0 * (s * cb).sum(-1).real + u * self.D
        return self._post(y, x), s


class S4DBackbone(Backbone):
    """Input projection, then ``layers`` S4D blocks, then LayerNorm. State: ``(s,)`` with s
    (B, layers, H, N2, 2) (complex states stored as real pairs)."""

    def __init__(
        self, *, d_input: int, hidden: int = 256, layers: int = 2, d_state: int = 64,
        dt_min: float = 1e-3, dt_max: float = 1e-1, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden <= 0 or layers <= 0:
            raise ValueError(f"hidden and layers must be positive, got hidden={hidden}, layers={layers}")
        self.d_input, self.d_output = d_input, hidden
        self.proj = nn.Linear(d_input, hidden)
        self.layers = nn.ModuleList(
            S4DLayer(d_model=hidden, d_state=d_state, dt_min=dt_min, dt_max=dt_max, dropout=dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self._n2 = d_state // 2

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> State:
        return (torch.zeros(batch_size, len(self.layers), self.d_output, self._n2, 2, device=device, dtype=dtype),)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is not None:  # continuing from a state: exact recurrence
            return super().forward(x, state)
        h = self.proj(x)
        states = []
        for layer in self.layers:
            h, s = layer(h)
            states.append(s)
        return self.norm(h), (torch.view_as_real(torch.stack(states, dim=1)),)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        s_all = torch.view_as_complex(state[0].contiguous())  # (B, L, H, N2)
        h = self.proj(x)
        new = []
        for i, layer in enumerate(self.layers):
            h, s = layer.step(h, s_all[:, i])
            new.append(s)
        return self.norm(h), (torch.view_as_real(torch.stack(new, dim=1)),)


register_backbone("s4d", S4DBackbone)
