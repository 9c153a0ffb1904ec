"""The open-loop calibration block, and the decoders fit on it.

In the block the cursor moves on its own, centre-out-and-back to the 8 targets (minimum-jerk reaches of
``reach_s`` with holds of ``hold_s`` at both ends), and the user is taken to intend exactly that
movement: the intent at time ``s`` is the cursor velocity at ``s + delay_s``
(:class:`~possm_plugin.sim.motor_stream.MotorSpikeStream`), so the spikes relate to the cursor velocity
as they relate to the hand in ``possm simulate``. The spikes come from the same stream, chunk by
chunk, that the closed loop uses. The block is returned as a :class:`~possm_plugin.data.session.Session`
(cursor velocity at 100 Hz, one trial per reach, phases), and every decoder is fit on it:

- Wiener and Kalman filters (:mod:`possm_plugin.baselines`) on all its trials;
- POSSM by unit identification (:func:`possm_plugin.training.finetune.finetune` with ``mode="ui"``) from a
  checkpoint (default: the bundled one).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from possm_plugin.baselines import KalmanFilter, WienerFilter
from possm_plugin.data.session import PHASE_HOLD, PHASE_REACH, Session
from possm_plugin.sim.motor import TARGET_SCALE, _Schedule
from possm_plugin.sim.motor_stream import MotorSpikeStream
from possm_plugin.sim.spiking import DT_S, make_rng

__all__ = ["calibration_session", "fit_wiener", "fit_kalman", "fit_possm"]


def calibration_session(
    stream: MotorSpikeStream,
    *,
    duration_s: float = 120.0,
    seed: int = 0,
    radius_cm: float = 10.0,
    reach_s: tuple[float, float] = (0.6, 1.0),
    hold_s: tuple[float, float] = (0.3, 0.6),
    chunk_s: float = 0.05,
) -> Session:
    """Drive ``stream`` (fresh, at 0 s) through a calibration block of ``duration_s`` and return it."""
    rng = make_rng(seed, "closed-loop-calibration")
    sched = _Schedule()
    trials: list[tuple[float, float]] = []
    kicks: list[tuple[float, float, float]] = []
    order: list[int] = []
    pos = np.zeros(2)
    while sched.t < duration_s:
        sched.add(rng.uniform(*hold_s), pos, pos, PHASE_HOLD)
        if not order:
            order = list(rng.permutation(8))
        a = 2 * math.pi * order.pop() / 8
        for target in (radius_cm * np.array([math.cos(a), math.sin(a)]), np.zeros(2)):
            t0 = sched.t
            kicks.append((t0, math.atan2(*(target - pos)[::-1]), float(np.linalg.norm(target - pos)) / radius_cm))
            sched.add(rng.uniform(*reach_s), pos, target, PHASE_REACH)
            if np.any(target):
                sched.add(rng.uniform(*hold_s), target, target, PHASE_HOLD)
            trials.append((t0, sched.t))
            pos = target
    n_chunks = int(math.floor(duration_s / chunk_s + 1e-9))
    rows = int(round(chunk_s / DT_S))
    n_steps = n_chunks * rows
    times = np.arange(n_steps) * DT_S
    velocity, phase = sched.evaluate(times)
    intent, _ = sched.evaluate(times + stream.delay_s)
    spikes_t, spikes_u = [], []
    k_next = 0
    for c in range(n_chunks):
        t_start = c * chunk_s
        while k_next < len(kicks) and kicks[k_next][0] - stream.delay_s < t_start + chunk_s:
            stream.kick(kicks[k_next][1], kicks[k_next][2])  # the intent of a reach starts delay_s early
            k_next += 1
        t, u = stream.step(intent[c * rows : (c + 1) * rows])
        spikes_t.append(t)
        spikes_u.append(u)
    end = n_chunks * chunk_s
    trials = [(a, b) for a, b in trials if b <= end]
    return Session(
        session_id=stream.session_id,
        spike_times=np.concatenate(spikes_t),
        spike_units=np.concatenate(spikes_u),
        unit_ids=stream.unit_ids,
        target_times=times,
        targets=velocity.astype(np.float32),
        trials=np.asarray(trials, np.float64).reshape(-1, 2),
        subject=stream.profile.subject,
        task="regression",
        target_names=["vx", "vy"],
        phase=phase,
        target_scale=TARGET_SCALE,
        meta={"closed_loop_calibration": True, "duration_s": float(end), "delay_s": stream.delay_s},
    )


def fit_wiener(cal: Session, *, n_lags: int = 5) -> WienerFilter:
    """A Wiener filter on all the block's trials (ridge penalty chosen on its last 20 %)."""
    return WienerFilter(n_lags=n_lags).fit(cal)


def fit_kalman(cal: Session) -> KalmanFilter:
    """A velocity Kalman filter (steady-state gain, as clinical systems run it) on all the block's trials."""
    return KalmanFilter().fit(cal)


def fit_possm(cal: Session, *, checkpoint=None, epochs: int = 15, seed: int = 0, lr: float = 1e-2, batch_size: int = 16,
              train_latents: bool = True):
    """A copy of the checkpoint's POSSM adapted to the block by unit identification (the new unit and
    session embeddings, and the latent queries); returns ``(model, finetune_result)`` (the model knows
    ``cal.session_id`` and its units). Measured on a 120 s block (session 10, seed 0, 15 epochs):
    validation R2 0.63 with the latents trained, 0.57 without; lr 3e-2 instead of 1e-2: 0.27."""
    from possm_plugin.model.checkpoint import load_checkpoint
    from possm_plugin.training.finetune import finetune
    from possm_plugin.training.train import TrainConfig

    model, _ = load_checkpoint(checkpoint)
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    cfg = TrainConfig(progress=False, unit_dropout=1.0, valid_fraction=0.2,
                      phase_weights={"other": 1.0, "hold": 1.0, "reach": 1.0})
    res = finetune(model, [cal], mode="ui", epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, train_config=cfg,
                   train_latents=train_latents)
    model.eval()
    return model, res
