import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from possm_plugin.errors import ConfigError
from possm_plugin.model.backbones import Backbone, register_backbone
from possm_plugin.model.config import ModelConfig, preset
from possm_plugin.model.possm import POSSM
from possm_plugin.model.tokenize import chunk_starts, collate, tokenize

BACKBONES = ["gru", "s4d", "mamba"]


def _tokens(n_chunks: int, n_units: int, *, seed: int = 0, rate_per_chunk: float = 20.0, batch: int = 1):
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(batch):
        n = rng.poisson(rate_per_chunk * n_chunks)
        times = np.sort(rng.uniform(0, n_chunks * 0.05, n))
        rows = rng.integers(1, n_units + 1, n)
        # a few silent chunks
        keep = ~((times > 0.3) & (times < 0.45))
        items.append(tokenize(rows[keep], times[keep], starts=chunk_starts(0.0, n_chunks, 0.05), width=0.05))
    return collate(items)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_streaming_steps_equal_the_sequence_forward(backbone):
    m = make_tiny_model(backbone, n_units=24)
    t = _tokens(40, 24, batch=2)
    sess = torch.tensor([1, 1])
    with torch.no_grad():
        full, _ = m(t["units"], t["times"], t["mask"], sess)
        state = m.initial_state(2)
        steps = []
        for i in range(40):
            o, state = m.step(t["units"][:, i], t["times"][:, i], t["mask"][:, i], sess, state)
            steps.append(o)
    diff = (torch.stack(steps, 1) - full).abs().max().item()
    assert diff <= 1e-5, diff
    assert full.abs().max() > 1e-3  # not a degenerate all-zero output


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_can_continue_from_a_state(backbone):
    m = make_tiny_model(backbone, n_units=12)
    t = _tokens(30, 12, seed=3)
    s = torch.tensor([1])
    with torch.no_grad():
        full, _ = m(t["units"], t["times"], t["mask"], s)
        a, st = m(t["units"][:, :13], t["times"][:, :13], t["mask"][:, :13], s)
        b, _ = m(t["units"][:, 13:], t["times"][:, 13:], t["mask"][:, 13:], s, st)
    assert (torch.cat([a, b], 1) - full).abs().max() <= 1e-5


def test_s4d_long_sequence_fft_path_matches_recurrence():
    m = make_tiny_model("s4d", n_units=8)
    t = _tokens(100, 8, seed=5, rate_per_chunk=5)  # > 64 chunks: FFT convolution
    s = torch.tensor([1])
    with torch.no_grad():
        full, _ = m(t["units"], t["times"], t["mask"], s)
        piecewise, st = m(t["units"][:, :1], t["times"][:, :1], t["mask"][:, :1], s)
        rest, _ = m(t["units"][:, 1:], t["times"][:, 1:], t["mask"][:, 1:], s, st)  # exact recurrence
    assert (torch.cat([piecewise, rest], 1) - full).abs().max() <= 1e-4


class _Stateless(Backbone):
    """No memory at all: chunk j's backbone output depends on chunk j only."""

    def __init__(self, *, d_input: int, hidden: int = 16) -> None:
        super().__init__()
        self.d_input, self.d_output = d_input, hidden
        self.lin = torch.nn.Linear(d_input, hidden)

    def initial_state(self, batch_size, *, device=None, dtype=torch.float32):
        return (torch.zeros(batch_size, 1, device=device, dtype=dtype),)

    def step(self, x, state):
        return torch.tanh(self.lin(x)), state


def test_output_sees_only_the_last_three_chunks():
    register_backbone("stateless-test", _Stateless, replace=True)
    m = make_tiny_model("stateless-test", n_units=8, backbone_kwargs={"hidden": 16}, context_chunks=3)
    t = _tokens(10, 8, seed=1)
    t2 = {k: v.clone() for k, v in t.items()}
    t2["units"][0, 2] = 0
    t2["mask"][0, 2] = False
    t2["mask"][0, 2, 0] = True  # chunk 2 replaced by an empty chunk
    s = torch.tensor([1])
    with torch.no_grad():
        a, _ = m(t["units"], t["times"], t["mask"], s)
        b, _ = m(t2["units"], t2["times"], t2["mask"], s)
    changed = ((a - b).abs().amax(-1) > 1e-6)[0].tolist()
    assert changed == [False, False, True, True, True, False, False, False, False, False]


def test_output_depends_on_spike_timing_within_a_chunk():
    m = make_tiny_model("gru", n_units=8)
    units = torch.tensor([[[3]]])
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    s = torch.tensor([1])
    with torch.no_grad():
        a, _ = m(units, torch.tensor([[[0.005]]]), mask, s)
        b, _ = m(units, torch.tensor([[[0.045]]]), mask, s)
    assert (a - b).abs().max() > 1e-5


@pytest.mark.parametrize("size,lo,hi", [("small", 0.4e6, 0.7e6), ("opossm", 5e6, 9e6)])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_named_sizes_match_the_paper(size, lo, hi, backbone):
    units = [f"s/u{i}" for i in range(96)]
    m = POSSM(preset(size, backbone), unit_ids=units, session_ids=["s"])
    n = m.n_parameters() - m.unit_emb.weight.numel() - m.session_emb.weight.numel()
    assert lo <= n <= hi, n


def test_gradients_reach_every_parameter():
    m = make_tiny_model("mamba", n_units=10).train()
    t = _tokens(20, 10, seed=2)
    out, _ = m(t["units"], t["times"], t["mask"], torch.tensor([1]))
    out.pow(2).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_config_rejects_bad_values_and_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"dimm": 3})
    with pytest.raises(ConfigError, match="chunk_step"):
        ModelConfig(chunk_step=0.1, chunk_width=0.05)
    with pytest.raises(ConfigError, match="backbone 'nope' is unknown"):
        POSSM(ModelConfig(backbone="nope"))
    with pytest.raises(ConfigError, match="rejected backbone_kwargs"):
        POSSM(ModelConfig(backbone="gru", backbone_kwargs={"hiden": 3}))
    with pytest.raises(ConfigError, match="no preset"):
        preset("huge")


@pytest.mark.parametrize("backbone", ["s4d", "mamba"])
def test_inference_caches_follow_weight_changes(backbone):
    m = make_tiny_model(backbone, n_units=8)
    t = _tokens(3, 8, seed=9)
    s = torch.tensor([1])

    def run():
        st = m.initial_state(1)
        outs = []
        with torch.no_grad():
            for i in range(3):
                o, st = m.step(t["units"][:, i], t["times"][:, i], t["mask"][:, i], s, st)
                outs.append(o)
        return torch.cat(outs)

    before = run()
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.mul_(1.1)
    after = run()
    with torch.no_grad():
        ref, _ = m(t["units"], t["times"], t["mask"], s)  # sequence form: never cached
    assert (after - ref[0]).abs().max() <= 1e-5 and (after - before).abs().max() > 1e-4
