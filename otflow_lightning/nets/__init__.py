"""Networks: time-conditioned MLPs (and, for images, U-Nets) and neural-flow maps."""

from .flows import AffineCouplingFlow, LipschitzLinear, LipSwish, ResidualFlowMap, ResNetFlow
from .mlp import SinusoidalEmbedding, TimeMLP

__all__ = ["TimeMLP", "SinusoidalEmbedding", "ResidualFlowMap", "ResNetFlow", "AffineCouplingFlow", "LipschitzLinear", "LipSwish"]
