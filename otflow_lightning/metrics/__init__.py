"""torchmetrics-style metrics for generated samples."""

from .wasserstein import Wasserstein2, wasserstein2_squared

__all__ = ["Wasserstein2", "wasserstein2_squared"]
