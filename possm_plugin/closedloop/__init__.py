"""Closed-loop evaluation: a simulated BCI user steers a cursor with a decoder in the loop.

- :mod:`.task` - the cursor task and its state machine;
- :mod:`.user` - the simulated user (feedback delay, speed profile, noise, bias, drift);
- :mod:`.calibration` - the open-loop calibration block and the decoders fit on it;
- :mod:`.decoders` - POSSM (through the streaming decoder), Wiener, Kalman and reference decoders;
- :mod:`.runner` - the loop in process, faster than real time; :mod:`.realtime` - over LSL;
- :mod:`.metrics` - success rate, time to target, dial-in time, path efficiency, Fitts ITR;
- :mod:`.plot` - trajectories and metrics; :mod:`.experiment` - all decoders on the same seeds.
"""

from possm_plugin.closedloop.decoders import (
    BaselineLoopDecoder,
    LoopDecoder,
    OracleDecoder,
    PossmLoopDecoder,
    RotatedDecoder,
    ZeroDecoder,
)
from possm_plugin.closedloop.experiment import DECODERS, ExperimentConfig, run_experiment
from possm_plugin.closedloop.metrics import summarize, trial_metrics
from possm_plugin.closedloop.runner import LoopResult, run_loop
from possm_plugin.closedloop.task import CursorTask, TaskConfig
from possm_plugin.closedloop.user import SimulatedUser, UserConfig

__all__ = [
    "LoopDecoder", "PossmLoopDecoder", "BaselineLoopDecoder", "OracleDecoder", "ZeroDecoder", "RotatedDecoder",
    "DECODERS", "ExperimentConfig", "run_experiment", "summarize", "trial_metrics", "LoopResult", "run_loop",
    "CursorTask", "TaskConfig", "SimulatedUser", "UserConfig",
]
