"""Cost matrices for minibatch OT."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["squared_euclidean", "pair_cost", "label_mismatch"]


def squared_euclidean(x0: Tensor, x1: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    r"""Pairwise squared Euclidean cost :math:`C_{ij} = \|x_0^i - x_1^j\|^2`.

    The matmul form :math:`\|a\|^2 + \|b\|^2 - 2 a^\top b` cancels badly in float32 when the points
    sit far from the origin, so both clouds are first centred on their joint mean (the cost is
    translation invariant), and low-dimensional inputs are computed in float64.

    Args:
        x0: ``(n, *shape)`` source batch.
        x1: ``(m, *shape)`` target batch.
        dtype: computation dtype; default float64 for ``d <= 64`` features, else float32.

    Returns:
        ``(n, m)`` cost matrix on the inputs' device, clamped at 0.
    """
    a = x0.reshape(x0.shape[0], -1)
    b = x1.reshape(x1.shape[0], -1)
    if dtype is None:
        dtype = torch.float64 if a.shape[1] <= 64 else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    centre = 0.5 * (a.mean(0) + b.mean(0))
    a, b = a - centre, b - centre
    cost = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return cost.clamp_min_(0.0)


def label_mismatch(c0: Tensor, c1: Tensor) -> Tensor:
    """``(n, m)`` float matrix that is 1 where the labels differ and 0 where they agree."""
    return (c0.reshape(-1, 1) != c1.reshape(1, -1)).to(torch.float64)


def pair_cost(x0: Tensor, x1: Tensor) -> Tensor:
    """``(n,)`` squared distances of the pairs ``(x0[i], x1[i])``, in float64."""
    return (x0.double() - x1.double()).reshape(x0.shape[0], -1).square().sum(1)
