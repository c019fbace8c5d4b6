"""Clusters of a batch for the ``multiscale`` solver: k-means, and the exact transport of the sources
to the target clusters."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .costs import simplex_scaled, squared_euclidean

__all__ = ["kmeans", "cluster_means", "coarse_transport", "flat_features"]


def cluster_means(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(means (k, d), counts (k,))`` of the points ``x`` ``(n, d)`` in each of ``k`` clusters;
    an empty cluster's mean is 0 (its count says so)."""
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    return sums / counts.clamp_min(1).to(x.dtype)[:, None], counts


def kmeans(
    x: Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None, sample: int | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of ``x`` ``(n, d)``: ``(centres (k, d), labels (n,))``.

    Started by k-means++ (each new centre drawn with probability proportional to the squared
    distance to the nearest centre so far), then ``iterations`` Lloyd steps, vectorised on ``x``'s
    device (one matmul and one ``index_add_`` per step); a cluster left empty keeps its centre.
    With ``sample``, the centres are fitted on that many random points and every point then takes
    its nearest centre. ``generator`` is a CPU generator.
    """
    n = x.shape[0]
    mean = x.mean(0)
    x = x - mean  # centred once: the nearest centre is the argmin of |c|^2 - 2 x.c
    if sample is not None and sample < n:
        centres, _ = kmeans(x[torch.randperm(n, generator=generator)[:sample].to(x.device)], k, iterations, generator)
        return centres + mean, torch.addmm(centres.square().sum(1), x, centres.T, alpha=-2.0).argmin(1)
    norms = x.square().sum(1)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = (norms - 2 * x @ x[chosen[0]] + norms[chosen[0]]).clamp_min(0)
    for _ in range(1, k):
        chosen.append(int(torch.multinomial(nearest.cpu().double() + 1e-30, 1, generator=generator)))
        nearest = torch.minimum(nearest, (norms - 2 * x @ x[chosen[-1]] + norms[chosen[-1]]).clamp_min(0))
    centres = x[chosen].clone()
    for step in range(iterations + 1):
        labels = torch.addmm(centres.square().sum(1), x, centres.T, alpha=-2.0).argmin(1)
        if step == iterations:
            break
        means, counts = cluster_means(x, labels, k)
        centres = torch.where(counts[:, None] > 0, means, centres)
    return centres + mean, labels


def flat_features(x: Tensor) -> Tensor:
    """``(n, d)`` view of a batch: float32 in image dimensions (as the cost matrix) and for half
    precision (whose cluster sums overflow); in its own dtype otherwise."""
    x = x.detach().reshape(x.shape[0], -1)
    return x.float() if x.shape[1] > 64 or x.element_size() < 4 else x


def coarse_transport(a: Tensor, b: Tensor, k: int, iterations: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""Cluster the targets ``b`` into ``k`` clusters (k-means++, ``iterations`` Lloyd steps on
    ``128 k`` of them) and send every source ``a_i`` to one cluster by the exact transport of unit
    masses to the cluster means :math:`\mu_c` with capacities the cluster sizes (POT's network
    simplex on the ``n x k`` cost :math:`|a_i - \mu_c|^2`; with unit supplies and integer
    capacities its solution is integral). Restricted to plans uniform within each cluster, this is
    the full problem: the mean squared distance to a cluster's points is the squared distance to
    its mean plus a per-cluster constant, which fixed capacities make irrelevant.

    Args:
        a, b: ``(n, d)`` flattened source and target batches.
        k: number of target clusters.
        iterations: Lloyd steps of the k-means.
        seed: seed of the k-means++ start.

    Returns:
        ``(labels, assign)``: ``(n,)`` cluster of each target, and ``(n,)`` cluster each source is
        sent to (cluster ``c`` receives as many sources as it holds targets).
    """
    import ot

    n = a.shape[0]
    labels = kmeans(b, k, iterations, torch.Generator().manual_seed(seed), sample=128 * k)[1]
    centres, capacity = cluster_means(b, labels, k)  # the exact means of the final clusters (the argument above)
    coarse = simplex_scaled(squared_euclidean(a, centres))[0]
    plan = ot.emd(np.ones(n), capacity.cpu().double().numpy(), coarse, numItermax=100_000_000)
    assign = plan.argmax(1)
    if not np.array_equal(np.bincount(assign, minlength=k), capacity.cpu().numpy()):
        raise RuntimeError("the coarse transport did not fill every cluster exactly; please report this")
    return labels, torch.from_numpy(assign).to(a.device)
