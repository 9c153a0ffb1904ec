"""The loop, in process and faster than real time: user -> spikes -> decoder -> cursor -> task -> user.

One iteration per chunk ``k`` (``[k T, (k + 1) T)``, T = 50 ms):

1. the user acts on the display of ``feedback_delay_s`` ago (:class:`~.user.SimulatedUser`); when it
   first sees a new target, the simulated cortex gets a movement-onset kick toward it;
2. the user's intent for the chunk drives the spikes of chunk ``k``
   (:class:`~possm_plugin.sim.motor_stream.MotorSpikeStream`);
3. the decoder gets chunk ``k``'s spikes at its end and returns a velocity;
4. the cursor moves by that velocity for one chunk (clamped to the workspace disc) and the task's state
   machine is updated at ``(k + 1) T`` (:class:`~.task.CursorTask`); the display shows it from then on.

Nothing reads the future: the decoder's output for chunk ``k`` depends only on spikes of chunks
``<= k``, and the spikes of chunk ``k`` only on what the user saw up to ``(k - D) T``. Seeded and
deterministic: the same arguments give the same arrays in every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from possm_plugin.closedloop.decoders import LoopDecoder
from possm_plugin.closedloop.task import CursorTask, TaskConfig
from possm_plugin.closedloop.user import SimulatedUser, UserConfig
from possm_plugin.errors import ConfigError
from possm_plugin.model.tokenize import chunk_starts
from possm_plugin.sim.motor_stream import MotorSpikeStream
from possm_plugin.sim.spiking import DT_S, make_rng

__all__ = ["LoopResult", "run_loop", "CHUNK_S"]

#: the chunk grid of the loop (the decoders' chunk width and step), seconds
CHUNK_S = 0.05


@dataclass
class LoopResult:
    """What one run recorded. Arrays have one row per chunk: ``t_end`` (s), ``pos`` cursor at the
    chunk end (cm), ``decoded`` the decoder's velocity for the chunk (cm/s), ``intent`` the user's
    (cm/s), ``trial`` the trial index at the chunk end."""

    decoder: str
    trials: list = field(default_factory=list)
    events: list = field(default_factory=list)
    t_end: np.ndarray = None
    pos: np.ndarray = None
    decoded: np.ndarray = None
    intent: np.ndarray = None
    trial: np.ndarray = None
    n_spikes: int = 0


def run_loop(
    decoder: LoopDecoder,
    stream: MotorSpikeStream,
    *,
    n_trials: int,
    seed: int = 0,
    task: TaskConfig | None = None,
    user: UserConfig | None = None,
    chunk_s: float = CHUNK_S,
    spike_hook=None,
) -> LoopResult:
    """Run ``n_trials`` trials of the task with ``decoder`` in the loop.

    Args:
        decoder: the decoder (reset here).
        stream: the simulated session's spike generator, at 0 s or where a previous block left it
            (the loop's clock starts at the stream's time).
        n_trials: trials to run (the task's timeouts bound the run's length).
        seed: keys the targets' order and the user's noise.
        spike_hook: ``(k, times, units) -> (times, units)``, applied to chunk ``k``'s spikes before the
            decoder sees them (tests use it to perturb one chunk).
    """
    task_cfg = task or TaskConfig()
    user_cfg = user or UserConfig()
    rows = int(round(chunk_s / DT_S))
    if abs(rows * DT_S - chunk_s) > 1e-12:
        raise ConfigError(f"chunk_s={chunk_s} must be a whole number of {DT_S} s rows, e.g. 0.05")
    k0 = int(round(stream.t / chunk_s))
    t0 = float(chunk_starts(0.0, k0 + 1, chunk_s)[-1])
    the_task = CursorTask(task_cfg, n_trials=n_trials, rng=make_rng(seed, "closed-loop-task"), t0=t0)
    the_user = SimulatedUser(user_cfg, chunk_s=chunk_s, rng=make_rng(seed, "closed-loop-user"))
    decoder.reset(t0)
    pos = np.zeros(2)
    the_user.observe(pos, the_task.target, the_task.current.index)
    max_chunks = int(math.ceil(n_trials * task_cfg.timeout_s / chunk_s)) + 2
    out_t, out_pos, out_dec, out_int, out_trial = [], [], [], [], []
    n_spikes = 0
    kicked = -1
    for k in range(k0, k0 + max_chunks):
        start, end = chunk_starts(0.0, k + 2, chunk_s)[k:]
        seen_pos, seen_target, seen_trial = the_user.seen()
        if seen_trial != kicked:  # the user notices a new target: a movement onset
            d = seen_target - seen_pos
            stream.kick(math.atan2(d[1], d[0]), float(np.hypot(*d)) / task_cfg.radius_cm)
            kicked = seen_trial
        intent = the_user.intent()
        times, units = stream.step(np.tile(intent, (rows, 1)))
        times = np.clip(times, start, np.nextafter(end, -np.inf))  # on the decoders' grid, bit for bit
        if spike_hook is not None:
            times, units = spike_hook(k, times, units)
        n_spikes += len(times)
        v = np.asarray(decoder.step(times, units, float(end), intent), np.float64).reshape(2)
        pos = pos + v * chunk_s
        r = float(np.hypot(*pos))
        if r > task_cfg.workspace_cm:
            pos = pos * (task_cfg.workspace_cm / r)
        the_task.update(float(end), pos)
        the_user.observe(pos, the_task.target, the_task.current.index)
        out_t.append(end)
        out_pos.append(pos.copy())
        out_dec.append(v)
        out_int.append(intent)
        out_trial.append(the_task.current.index)
        if the_task.done:
            break
    return LoopResult(
        decoder=decoder.name, trials=the_task.trials, events=the_task.events, t_end=np.asarray(out_t),
        pos=np.asarray(out_pos), decoded=np.asarray(out_dec), intent=np.asarray(out_int), trial=np.asarray(out_trial),
        n_spikes=n_spikes,
    )
