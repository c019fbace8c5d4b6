"""Evaluation callbacks that attach to any Trainer whose module implements ``sample(x0, steps)``
and has a ``data_shape`` (see :mod:`otflow_lightning.callbacks.common` for the protocol)."""

from .common import EvalCallback
from .fid import FIDCallback
from .predictions import SampleWriter
from .sampling import SamplingCallback, render_samples
from .wasserstein import WassersteinCallback

__all__ = ["EvalCallback", "FIDCallback", "SampleWriter", "SamplingCallback", "WassersteinCallback", "render_samples"]
