"""The built-in backbones as a plugin: registered through ``possm_register_backbones`` exactly as a
third-party backbone is (entry point ``backbones = possm_plugin.model.backbones.plugin``)."""

from __future__ import annotations

from possm_plugin.model.backbones.gru import GRUBackbone
from possm_plugin.model.backbones.mamba import MambaBackbone
from possm_plugin.model.backbones.s4d import S4DBackbone
from possm_plugin.plugins.markers import hookimpl

__all__ = ["possm_register_backbones"]


@hookimpl
def possm_register_backbones(register):
    register("gru", GRUBackbone, description="stacked GRU (the authors' released POSSM backbone)")
    register("s4d", S4DBackbone, description="diagonal state-space model (S4D) layers")
    register("mamba", MambaBackbone, description="Mamba selective state-space layers (plain PyTorch scan)")
