"""possm-plugin: real-time neural decoding with POSSM.

The public surface; everything else lives in modules named for what they do.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .checkpoint import default_checkpoint, load_checkpoint, save_checkpoint
from .config import ModelConfig, preset
from .errors import CheckpointError, ConfigError, DataError, PluginError, PossmError, StreamError, UnknownUnitError
from .io import Prediction, PredictionSink, SpikeBatch, SpikeSource
from .model import POSSM
from .plugins.markers import hookimpl, hookspec
from .session import Session, load_sessions
from .streaming import DecoderStats, StreamingDecoder
from .tokenize import Chunks, chunk_starts, collate, tokenize
from .vocab import Vocabulary

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
