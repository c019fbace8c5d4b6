"""Pieces the evaluation callbacks share."""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

__all__ = ["eval_steps", "fixed_source", "batch_target"]


def eval_steps(module: pl.LightningModule, steps: Sequence[int] | None) -> list[int]:
    """Step counts to evaluate: ``steps``, or 1 (plus the module's ``supported_steps`` if listed)."""
    if steps is not None:
        return [int(s) for s in steps]
    supported = getattr(module, "supported_steps", None)
    return [1] if supported is None else sorted(set(supported))


def fixed_source(module: pl.LightningModule, n: int, seed: int) -> Tensor:
    """``n`` source samples from the module's source, the same ones at every call (fixed ``seed``)."""
    from ..data.sources import draw_source

    gen = torch.Generator(device="cpu").manual_seed(seed)
    x0 = draw_source(module.source, n, module.data_shape, generator=gen, device="cpu")
    return x0.to(module.device)


def batch_target(batch) -> Tensor:
    """The target tensor of a validation batch: ``Pair.x1``, or the first tensor of a tuple."""
    x1 = getattr(batch, "x1", None)
    if x1 is not None:
        return x1
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"cannot find the target samples in a batch of type {type(batch).__name__}")
    return batch
