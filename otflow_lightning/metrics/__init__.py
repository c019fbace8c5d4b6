"""torchmetrics-style metrics for generated samples (class + functional), and FID helpers."""

from .fid import build_fid, download_inception_weights, images_to_uint8
from .sliced_wasserstein import SlicedWasserstein2, sliced_wasserstein2_squared
from .wasserstein import Wasserstein2, wasserstein2_squared

__all__ = [
    "Wasserstein2",
    "wasserstein2_squared",
    "SlicedWasserstein2",
    "sliced_wasserstein2_squared",
    "build_fid",
    "download_inception_weights",
    "images_to_uint8",
]
