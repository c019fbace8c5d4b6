"""``OTCoupler``: pair a source batch with a target batch by minibatch optimal transport."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .costs import label_mismatch, pair_cost, squared_euclidean
from .solvers import SOLVERS

__all__ = ["OTCoupler", "Coupling", "check_batch"]


@dataclass
class Coupling:
    """Result of one minibatch match.

    Attributes:
        perm: ``(n,)`` LongTensor; ``(x0[i], x1[perm[i]])`` are the pairs.
        cost: mean squared distance of the coupled pairs.
        independent_cost: mean squared distance of the identity (independent) pairing.
        ms: wall time of the solve, cost matrix included, in milliseconds.
        iterations: solver iterations, where the solver reports them.
    """

    perm: Tensor
    cost: float
    independent_cost: float
    ms: float
    iterations: int | None = None

    @property
    def cost_ratio(self) -> float:
        """OT cost over independent cost (1 for independent pairing, lower is better)."""
        return self.cost / max(self.independent_cost, 1e-30)

    def stats(self) -> dict[str, float]:
        """Scalars to log, under ``coupling/``."""
        out = {"coupling/cost_ratio": self.cost_ratio, "coupling/cost": self.cost, "coupling/ms": self.ms}
        if self.iterations is not None:
            out["coupling/iterations"] = float(self.iterations)
        return out


def check_batch(x0: Tensor, x1: Tensor, c0: Tensor | None = None, c1: Tensor | None = None) -> None:
    """Raise ``ValueError`` naming the argument for empty, mismatched or non-finite batches."""
    if x0.ndim == 0 or x1.ndim == 0 or x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ValueError(f"empty batch: x0 has shape {tuple(x0.shape)}, x1 has shape {tuple(x1.shape)}")
    if x0.shape != x1.shape:
        raise ValueError(
            f"source x0 {tuple(x0.shape)} and target x1 {tuple(x1.shape)} must have the same shape; "
            "check that the source's shape matches the data (DataModule `source` / `data_shape`)"
        )
    for name, x in (("x0 (source)", x0), ("x1 (target)", x1)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} holds NaN or Inf values; clean the data or check the transform that produced them")
    if (c0 is None) != (c1 is None):
        raise ValueError("give labels for both sides (c0 and c1) or for neither")
    if c0 is not None and (c0.shape[0] != x0.shape[0] or c1.shape[0] != x1.shape[0]):
        raise ValueError(f"labels c0 {tuple(c0.shape)} / c1 {tuple(c1.shape)} must have one entry per sample")


class OTCoupler:
    r"""Minibatch OT coupling as a permutation of the target batch.

    Solves :math:`\min_\sigma \sum_i C_{i\sigma(i)}` with :math:`C_{ij} = \|x_0^i - x_1^j\|^2`
    (plus ``label_weight`` times a label-mismatch cost when labels are given) and returns
    :math:`\sigma` as ``perm``. The result is always a bijection: no sample is duplicated or dropped,
    and a failed solve raises instead of falling back to independent pairs.

    Args:
        method: one of ``independent``, ``exact`` (POT network simplex, CPU float64),
            ``lsa`` (scipy Jonker-Volgenant, CPU), ``bsp`` (POT BSP-OT, fast in low dimension).
        label_weight: weight of the label-mismatch term when labels are passed to :meth:`match`;
            ``None`` (default) matches strictly within labels (infinite weight).
        **options: passed to the solver (e.g. ``n_plans`` for ``bsp``, ``max_iter`` for ``exact``).

    Example:
        >>> coupler = OTCoupler("exact")
        >>> x0, x1 = torch.randn(64, 2), torch.randn(64, 2) + 3
        >>> perm = coupler.match(x0, x1)
        >>> sorted(perm.tolist()) == list(range(64))
        True
    """

    def __init__(self, method: str = "exact", label_weight: float | None = None, **options) -> None:
        if method not in SOLVERS:
            raise ValueError(f"unknown coupling method {method!r}; choose one of {sorted(SOLVERS)}")
        self.method = method
        self.label_weight = label_weight
        self.options = options

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"OTCoupler({self.method!r}{opts})"

    def cost_matrix(self, x0: Tensor, x1: Tensor, c0: Tensor | None = None, c1: Tensor | None = None) -> Tensor:
        """``(n, n)`` cost the solver minimises (squared Euclidean, plus the label term)."""
        cost = squared_euclidean(x0, x1)
        if c0 is not None:
            mismatch = label_mismatch(c0, c1).to(cost)
            weight = self.label_weight
            if weight is None:  # strictly within labels: dearer than any transport cost
                weight = float(cost.max()) * cost.shape[0] + 1.0
            cost = cost + weight * mismatch
        return cost

    def couple(self, x0: Tensor, x1: Tensor, c0: Tensor | None = None, c1: Tensor | None = None) -> Coupling:
        """Match the batches and return the permutation with its statistics."""
        check_batch(x0, x1, c0, c1)
        start = time.perf_counter()
        with torch.no_grad():
            cost = self.cost_matrix(x0, x1, c0, c1)
            perm, iterations = SOLVERS[self.method](cost, x0, x1, **self.options)
            transport = pair_cost(x0, x1[perm]).mean()
            independent = pair_cost(x0, x1).mean()
            result = (float(transport), float(independent))
        ms = (time.perf_counter() - start) * 1e3
        return Coupling(perm=perm, cost=result[0], independent_cost=result[1], ms=ms, iterations=iterations)

    def match(self, x0: Tensor, x1: Tensor, c0: Tensor | None = None, c1: Tensor | None = None) -> Tensor:
        """Return ``perm`` (LongTensor ``(n,)`` on the inputs' device): ``(x0[i], x1[perm[i]])`` are the pairs.

        Args:
            x0: ``(n, *shape)`` source batch.
            x1: ``(n, *shape)`` target batch.
            c0, c1: optional ``(n,)`` labels of the source and target samples.
        """
        return self.couple(x0, x1, c0, c1).perm

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """Return the paired batch ``(x0, x1[perm])``."""
        return x0, x1[self.match(x0, x1)]
