"""The pluggy markers. Project name, marker name and entry-point group are all ``possm_plugin``."""

import pluggy

PROJECT = "possm_plugin"
ENTRY_POINT_GROUP = "possm_plugin"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl"]
