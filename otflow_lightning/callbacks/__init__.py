"""Evaluation callbacks that attach to any Trainer whose module implements ``sample(x0, steps)``."""

from .sampling import SamplingCallback, render_samples
from .wasserstein import WassersteinCallback

__all__ = ["SamplingCallback", "WassersteinCallback", "render_samples"]
