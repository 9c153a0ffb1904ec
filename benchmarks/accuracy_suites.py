"""Suites of the accuracy benchmark (``benchmarks/accuracy.py``): the sizes of its quick, full and smoke
modes. ``benchmarks/real.py`` reads its baselines' sizes from a :class:`Suite` too."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Suite:
    """Sizes of one benchmark mode. ``*_steps`` are optimiser steps aimed at (epochs are derived
    from them and the data size, within ``[min_epochs, max_epochs]``). ``heldout`` lists (group,
    subject, session index); a negative index -k means the k-th session after the pretraining ones."""

    name: str
    seeds: tuple[int, ...] = (0, 1, 2)
    ss_duration_s: float = 300.0
    # single-session POSSM steps per backbone: about equal CPU time each (an S4D or Mamba step costs ~2
    # GRU steps here, and S4D's best validation epoch came at a third to a half of 300 steps)
    possm_steps: dict = field(default_factory=lambda: {"gru": 300, "s4d": 150, "mamba": 200})
    batch_size: int = 16  # POSSM regression fits (single session, UI/FT, scratch, real)
    lr: float = 2e-3
    unit_dropout: float | None = None  # single-session fits (incl. UI/FT): the recipe's by task; pretraining keeps 0.6
    # POSSM's loss weights of (other, hold, reach) chunks; None: the recipe's (1, 0.1, 5). Every section
    # scores R2 on all chunks of the test trials (and the baselines train on all of them alike)
    phase_weights: dict | None = field(default_factory=lambda: {"other": 1.0, "hold": 1.0, "reach": 1.0})
    min_epochs: int = 3
    max_epochs: int = 80
    baseline_epochs: dict = field(default_factory=lambda: {"mlp": 20, "gru_binned": 20})
    poyo_steps: int = 200  # POYO: optimiser steps of poyo_batch_size windows of 1 s (20 queries each)
    poyo_batch_size: int = 16
    poyo_lr: float = 1e-3
    poyo_evals: int = 2  # validations over the run (the best weights are kept)
    # transfer
    pretrain_model: dict = field(default_factory=lambda: {"preset": "small", "backbone": "gru"})
    pretrain_label: str = "small preset (D=64, GRU 256x1), multi-session"
    pretrain_sessions: int = 4
    pretrain_duration_s: float = 150.0
    pretrain_steps: int = 250
    pretrain_batch_size: int = 32
    heldout: tuple[tuple[str, str, int], ...] = (("m0_heldout", "m0", -1), ("m1", "m1", 0))
    transfer_duration_s: float = 150.0
    fractions: tuple[float, ...] = (0.05, 0.2, 1.0)
    adapt_steps: int = 300  # the recipe's quick budget, as `possm finetune` and benchmarks/real.py (60 left the weight average behind)
    ui_lr: float = 1e-2
    # classification / CTC
    cls_duration_s: float = 600.0
    ctc_duration_s: float = 600.0
    seq_steps: int = 600  # the recipe's budget: with unit dropout the best validation epoch comes late (0.80 at 600 x 16)
    seq_batch_size: int = 16
    ctc_steps: int = 600  # the recipe's budget; CTC sits on its all-blank plateau for ~150-200 steps, and the
    ctc_batch_size: int = 16  # weight average lags behind the escape: 300 steps of 8 left it all blank
    seq_gru_epochs: int = 60
    # real
    real_splits: int = 3
    real_steps: int = 300  # the recipe's quick budget, as benchmarks/real.py
    tiny: bool = False  # smoke: tiny models and sessions, 1 epoch


QUICK = Suite(name="quick")
FULL = Suite(
    name="full",
    seeds=(0, 1, 2, 3, 4),
    ss_duration_s=600.0,
    possm_steps={"gru": 1500, "s4d": 1500, "mamba": 1500},
    batch_size=64,
    max_epochs=200,
    baseline_epochs={"mlp": 60, "gru_binned": 60},
    poyo_steps=3000,
    poyo_evals=20,
    pretrain_model={"preset": "opossm", "backbone": "gru"},
    pretrain_label="o-POSSM preset (D=256, GRU 512x4), multi-session",
    pretrain_sessions=16,
    pretrain_duration_s=300.0,
    pretrain_steps=6000,
    pretrain_batch_size=64,
    heldout=(("m0_heldout", "m0", -1), ("m0_heldout", "m0", -2), ("m1", "m1", 0), ("m1", "m1", 1)),
    transfer_duration_s=300.0,
    fractions=(0.05, 0.1, 0.2, 0.5, 1.0),
    adapt_steps=400,
    cls_duration_s=1200.0,
    ctc_duration_s=1200.0,
    seq_steps=1500,
    ctc_steps=3000,
    seq_batch_size=64,
    ctc_batch_size=16,
    seq_gru_epochs=100,
    real_splits=5,
    real_steps=800,
)
SMOKE = Suite(
    name="smoke",
    seeds=(0, 1, 2),
    ss_duration_s=20.0,
    possm_steps={"gru": 1, "s4d": 1, "mamba": 1},
    batch_size=16,
    min_epochs=1,
    max_epochs=1,
    baseline_epochs={"mlp": 1, "gru_binned": 1},
    poyo_steps=2,
    poyo_evals=1,
    pretrain_sessions=2,
    pretrain_duration_s=20.0,
    pretrain_steps=1,
    pretrain_batch_size=16,
    transfer_duration_s=30.0,
    fractions=(0.2, 1.0),
    adapt_steps=2,
    cls_duration_s=30.0,
    ctc_duration_s=30.0,
    seq_steps=1,
    ctc_steps=1,
    seq_batch_size=16,
    ctc_batch_size=16,
    seq_gru_epochs=1,
    real_splits=3,
    real_steps=1,
    tiny=True,
)
SUITES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}
