"""Sources drawn on the device: ``gaussian`` noise of any shape, or a 2D toy by name."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .toys import TOYS, sample_toy

__all__ = ["draw_source", "check_source"]


def check_source(name: str, shape: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` if ``name`` is no known source, or a 2D toy for non-2D data."""
    if name not in TOYS:
        raise ValueError(f"unknown source {name!r}; choose 'gaussian' or a toy: {sorted(TOYS)}")
    if name != "gaussian" and shape is not None and tuple(shape) != (2,):
        raise ValueError(f"source {name!r} is a 2D toy but the data have shape {tuple(shape)}; use source='gaussian'")


def draw_source(name: str, n: int, shape: Sequence[int], generator: torch.Generator | None = None, device=None) -> Tensor:
    """Draw ``n`` source samples of ``shape``: ``(n, *shape)`` on ``device``.

    ``gaussian`` is N(0, I) in any shape; any other name is a 2D toy (see ``toys.py``).
    """
    check_source(name, shape)
    if name == "gaussian":
        return torch.randn(n, *shape, generator=generator, device=device)
    return sample_toy(name, n, generator=generator, device=device)
