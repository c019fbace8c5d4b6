"""Networks: time-conditioned MLPs (and, for images, U-Nets and neural-flow maps)."""

from .mlp import SinusoidalEmbedding, TimeMLP

__all__ = ["TimeMLP", "SinusoidalEmbedding"]
