"""Exact squared 2-Wasserstein distance between two point clouds (POT), class and functional."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

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

    a = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy()
    b = y.detach().reshape(y.shape[0], -1).to("cpu", torch.float64).numpy()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same sample shape")
    cost = ot.dist(a, b, metric="sqeuclidean")
    value = ot.emd2(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), cost, numItermax=10_000_000)
    return torch.tensor(float(value), dtype=torch.float64)


class Wasserstein2(Metric):
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
        (self.real if real else self.fake).append(x.detach().reshape(x.shape[0], -1).double())

    def compute(self) -> Tensor:
        return wasserstein2_squared(dim_zero_cat(self.fake), dim_zero_cat(self.real))
