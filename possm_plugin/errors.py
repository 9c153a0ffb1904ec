"""The exceptions possm-plugin raises.

Every error derives from :class:`PossmError`, so a host can catch ours without catching everything.
Messages name the argument, show the value and say how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations

__all__ = [
    "PossmError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "UnknownUnitError",
    "StreamError",
    "PluginError",
]


class PossmError(Exception):
    """Base class of every error raised by possm-plugin."""


class ConfigError(PossmError, ValueError):
    """A configuration value or file is invalid (unknown key, wrong type, out of range)."""


class CheckpointError(PossmError):
    """A checkpoint is missing, corrupt, or does not match the model it claims to hold."""


class DataError(PossmError, ValueError):
    """A data file or an input array is malformed."""


class UnknownUnitError(PossmError, KeyError):
    """Unit (or session) ids that the vocabulary does not know."""

    def __init__(self, message: str, unknown: list[str] | None = None) -> None:
        super().__init__(message)
        self.unknown = list(unknown or [])

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StreamError(PossmError):
    """A stream could not be found, opened or read."""


class PluginError(PossmError):
    """A plugin could not be loaded, or no plugin provides what was asked for."""
