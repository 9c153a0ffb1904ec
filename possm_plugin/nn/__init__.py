"""Neural-network building blocks of POSSM: rotary time embedding, rotary cross-attention, GEGLU."""

from .attention import RotaryCrossAttention
from .ffn import FeedForward
from .rope import RotaryTimeEmbedding, apply_rotary

__all__ = ["RotaryTimeEmbedding", "apply_rotary", "RotaryCrossAttention", "FeedForward"]
