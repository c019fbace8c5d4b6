"""Networks: time-conditioned MLPs, the JVP-safe image U-Net, and neural-flow maps."""

from .flows import AffineCouplingFlow, LipschitzLinear, LipSwish, ResidualFlowMap, ResNetFlow
from .mlp import SinusoidalEmbedding, TimeMLP
from .unet import UNET_PRESETS, UNet

__all__ = [
    "TimeMLP",
    "SinusoidalEmbedding",
    "UNet",
    "UNET_PRESETS",
    "ResidualFlowMap",
    "ResNetFlow",
    "AffineCouplingFlow",
    "LipschitzLinear",
    "LipSwish",
]
