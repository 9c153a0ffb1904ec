"""Neural-network building blocks of POSSM: rotary time embedding, rotary cross-attention, GEGLU."""

from possm_plugin.model.nn.attention import RotaryCrossAttention
from possm_plugin.model.nn.ffn import FeedForward
from possm_plugin.model.nn.rope import RotaryTimeEmbedding, apply_rotary

__all__ = ["RotaryTimeEmbedding", "apply_rotary", "RotaryCrossAttention", "FeedForward"]
