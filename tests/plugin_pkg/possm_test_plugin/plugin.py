"""A backbone (``lstm-test``) and a source (``constant-test``), registered through the hooks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from possm_plugin.model.backbones import Backbone
from possm_plugin.plugins import hookimpl
from possm_plugin.realtime.io import SpikeBatch, SpikeSource


class LSTMBackbone(Backbone):
    """Stacked LSTM. State: ``(h, c)``, each (B, layers, hidden)."""

    def __init__(self, *, d_input: int, hidden: int = 32, layers: int = 1) -> None:
        super().__init__()
        self.d_input, self.d_output, self.layers = d_input, hidden, layers
        self.rnn = nn.LSTM(d_input, hidden, num_layers=layers, batch_first=True)

    def initial_state(self, batch_size, *, device=None, dtype=torch.float32):
        z = torch.zeros(batch_size, self.layers, self.d_output, device=device, dtype=dtype)
        return (z, z.clone())

    def forward(self, x, state=None):
        hc = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state)
        y, (h, c) = self.rnn(x, hc)
        return y, (h.transpose(0, 1), c.transpose(0, 1))

    def step(self, x, state):
        y, new = self.forward(x.unsqueeze(1), state)
        return y[:, 0], new


class ConstantSource(SpikeSource):
    """Every channel fires at a constant rate, ``step`` seconds of events per ``acquire``."""

    name = "constant-test"

    def __init__(self, n_channels="4", rate="20", step="0.05", duration="1.0") -> None:
        super().__init__()
        self.n_channels, self.rate = int(n_channels), float(rate)
        self.step, self.duration = float(step), float(duration)
        self._t = 0.0

    def _connect(self, timeout):
        self.unit_ids = [f"const/u{i:03d}" for i in range(self.n_channels)]
        self._t = 0.0

    def _acquire(self, timeout):
        if self._t >= self.duration:
            return SpikeBatch.empty(self._t)
        t0, t1 = self._t, min(self._t + self.step, self.duration)
        ticks = np.arange(np.ceil(t0 * self.rate), np.ceil(t1 * self.rate)) / self.rate
        times = np.repeat(ticks, self.n_channels)
        channels = np.tile(np.arange(self.n_channels), len(ticks))
        self._t = t1
        return SpikeBatch(channels.astype(np.int64), times.astype(np.float64), t1)

    def _disconnect(self):
        pass


@hookimpl
def possm_register_backbones(register):
    register("lstm-test", LSTMBackbone, description="LSTM backbone from possm-test-plugin")


@hookimpl
def possm_register_sources(register):
    register("constant-test", ConstantSource, description="constant-rate spikes from possm-test-plugin")
