"""Class-conditional coupling (C2OT): source labels drawn before matching, pairs within labels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["draw_source_labels"]


def draw_source_labels(c1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Labels for a source batch, drawn from the target batch's label marginal, independent of ``x0``.

    A random permutation of ``c1``: each label keeps its count (so strict per-label matching is a
    bijection), and which noise sample carries which label depends on nothing but the generator.
    Matching ``x0`` with label ``k`` only among targets with label ``k`` then keeps every class's
    noise distributed as the prior, as it is at test time. Plain OT followed by giving each noise its
    partner's label does not: noise lands in the class whose data it sits nearest (the train/test
    skew C2OT describes).

    Args:
        c1: ``(n,)`` target labels.
        generator: random generator on ``c1``'s device.

    Returns:
        ``(n,)`` source labels on ``c1``'s device.
    """
    order = torch.randperm(c1.shape[0], generator=generator, device=c1.device)
    return c1[order]
