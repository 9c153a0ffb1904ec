"""possm-plugin: real-time neural decoding with POSSM.

The public surface; everything else lives in modules named for what they do.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from possm_plugin.data.session import Session, load_sessions
from possm_plugin.errors import CheckpointError, ConfigError, DataError, PluginError, PossmError, StreamError, UnknownUnitError
from possm_plugin.model.checkpoint import default_checkpoint, load_checkpoint, save_checkpoint
from possm_plugin.model.config import ModelConfig, preset
from possm_plugin.model.possm import POSSM
from possm_plugin.model.tokenize import Chunks, chunk_starts, collate, tokenize
from possm_plugin.model.vocab import Vocabulary
from possm_plugin.plugins.markers import hookimpl, hookspec
from possm_plugin.realtime.io import Prediction, PredictionSink, SpikeBatch, SpikeSource
from possm_plugin.realtime.streaming import DecoderStats, StreamingDecoder

try:
    __version__ = version("possm-plugin")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "POSSM",
    "ModelConfig",
    "preset",
    "Vocabulary",
    "Session",
    "load_sessions",
    "Chunks",
    "tokenize",
    "collate",
    "chunk_starts",
    "StreamingDecoder",
    "DecoderStats",
    "SpikeSource",
    "PredictionSink",
    "SpikeBatch",
    "Prediction",
    "load_checkpoint",
    "save_checkpoint",
    "default_checkpoint",
    "hookimpl",
    "hookspec",
    "PossmError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "UnknownUnitError",
    "StreamError",
    "PluginError",
]
