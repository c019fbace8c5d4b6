"""Networks: time-conditioned MLPs and the JVP-safe image U-Net."""

from .mlp import SinusoidalEmbedding, TimeMLP
from .unet import UNET_PRESETS, UNet

__all__ = ["TimeMLP", "SinusoidalEmbedding", "UNet", "UNET_PRESETS"]
