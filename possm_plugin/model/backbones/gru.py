"""GRU backbone (the authors' released POSSM backbone)."""

from __future__ import annotations

import torch
from torch import nn

from possm_plugin.model.backbones.base import Backbone, State, register_backbone

__all__ = ["GRUBackbone"]


class GRUBackbone(Backbone):
    """Stacked GRU. State: ``(h,)`` with h (B, layers, hidden).

    Args:
        d_input: input features.
        hidden: hidden size (256 small, 512 o-POSSM).
        layers: stacked layers (1 small, 4 o-POSSM).
        dropout: between layers (training only).
    """

    def __init__(self, *, d_input: int, hidden: int = 256, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden <= 0 or layers <= 0:
            raise ValueError(f"hidden and layers must be positive, got hidden={hidden}, layers={layers}")
        self.d_input, self.d_output = d_input, hidden
        self.layers = layers
        self.rnn = nn.GRU(d_input, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> State:
        return (torch.zeros(batch_size, self.layers, self.d_output, device=device, dtype=dtype),)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        h0 = None if state is None else state[0].transpose(0, 1).contiguous()
        y, h = self.rnn(x, h0)
        return y, (h.transpose(0, 1),)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, new = self.forward(x.unsqueeze(1), state)
        return y[:, 0], new


register_backbone("gru", GRUBackbone)
