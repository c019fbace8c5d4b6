"""Exact squared 2-Wasserstein distance between two point clouds (POT), class and functional."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ..ot.costs import simplex_scaled, squared_euclidean

__all__ = ["wasserstein2_squared", "Wasserstein2"]


def wasserstein2_squared(x: Tensor, y: Tensor) -> Tensor:
    r"""Exact :math:`W_2^2` between the empirical measures of ``x`` ``(n, *shape)`` and ``y`` ``(m, *shape)``.

    Solved by POT's network simplex in float64 on the CPU: fine up to a few thousand points.

    Example:
        >>> x = torch.zeros(4, 2); y = torch.ones(4, 2)
        >>> float(wasserstein2_squared(x, y))
        2.0
    """
    import ot

    check_samples(x, y)
    a, b = x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return torch.tensor(float("nan"), dtype=torch.float64)  # POT would report 0, the best score
    cost, low, scale = simplex_scaled(squared_euclidean(a, b, torch.float64))
    value = ot.emd2(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), cost, numItermax=10_000_000)
    return torch.tensor(float(value) * scale + low, dtype=torch.float64)


def check_samples(x: Tensor, y: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` ``(n, *shape)`` and ``y`` ``(m, *shape)`` hold samples of one shape."""
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(f"x and y must each hold at least one sample, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same sample shape")


class SampleShape:
    """Mixin of the two-set metrics: every ``update`` between resets must bring samples of one shape."""

    def check_shape(self, x: Tensor) -> None:
        shape = getattr(self, "_sample_shape", None)
        if not (self.real or self.fake) or shape is None:  # the first update since a reset sets the shape
            self._sample_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise ValueError(f"samples of shape {tuple(x.shape[1:])} after samples of shape {shape}; compare sets of one shape")


class Wasserstein2(SampleShape, Metric):
    """Exact :math:`W_2^2` between generated (``update(x, real=False)``) and real samples.

    States are concatenated and synced across ranks at ``compute()`` (a collective: call it on
    every rank).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("fake", default=[], dist_reduce_fx="cat")
        self.add_state("real", default=[], dist_reduce_fx="cat")

    def update(self, x: Tensor, real: bool) -> None:
        self.check_shape(x)
        (self.real if real else self.fake).append(x.detach().reshape(x.shape[0], -1).double())

    def compute(self) -> Tensor:
        return wasserstein2_squared(dim_zero_cat(self.fake), dim_zero_cat(self.real))
