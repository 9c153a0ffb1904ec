"""Recurrent backbones (GRU, S4D, Mamba) and their registry; see :mod:`.base` for the interface."""

from possm_plugin.model.backbones.base import Backbone, State, available_backbones, get_backbone, register_backbone
from possm_plugin.model.backbones.gru import GRUBackbone
from possm_plugin.model.backbones.mamba import MambaBackbone
from possm_plugin.model.backbones.s4d import S4DBackbone

__all__ = [
    "Backbone",
    "State",
    "register_backbone",
    "get_backbone",
    "available_backbones",
    "GRUBackbone",
    "S4DBackbone",
    "MambaBackbone",
]
