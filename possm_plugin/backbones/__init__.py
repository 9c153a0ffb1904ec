"""Recurrent backbones (GRU, S4D, Mamba) and their registry; see :mod:`.base` for the interface."""

from .base import Backbone, State, available_backbones, get_backbone, register_backbone
from .gru import GRUBackbone
from .mamba import MambaBackbone
from .s4d import S4DBackbone

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
