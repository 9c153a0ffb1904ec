"""Plugins: the pluggy markers, hook specifications and the plugin manager.

The decoder node a host instantiates lives in :mod:`possm_plugin.plugins.decoder_node` (not imported
here, so that importing the markers stays light).
"""

from possm_plugin.plugins.manager import (
    ENV_VAR,
    PluginEntry,
    PluginFailure,
    PluginRow,
    get_backbones,
    get_decoder_node,
    get_decoder_nodes,
    get_plugin_manager,
    get_sink,
    get_sinks,
    get_source,
    get_sources,
    list_entries,
    list_failures,
    list_plugins,
    list_skipped,
    load_backbones,
    reset_plugin_manager,
)
from possm_plugin.plugins.markers import ENTRY_POINT_GROUP, PROJECT, hookimpl, hookspec

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "PROJECT",
    "PluginEntry",
    "PluginFailure",
    "PluginRow",
    "get_backbones",
    "get_decoder_node",
    "get_decoder_nodes",
    "get_plugin_manager",
    "get_sink",
    "get_sinks",
    "get_source",
    "get_sources",
    "hookimpl",
    "hookspec",
    "list_entries",
    "list_failures",
    "list_plugins",
    "list_skipped",
    "load_backbones",
    "reset_plugin_manager",
]
