"""Finite datasets for the toys, and the index wrapper the DataModule puts around every dataset."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .toys import sample_toy

__all__ = ["ToyDataset", "IndexedDataset"]


class ToyDataset(Dataset):
    """``size`` points of a 2D toy, drawn once with ``seed`` (a finite data set, so indices exist).

    Items are ``(2,)`` float tensors. Two instances with the same arguments hold the same points.
    """

    def __init__(self, name: str = "moons", size: int = 50_000, seed: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"ToyDataset size must be positive, got {size}")
        self.name = name
        self.points = sample_toy(name, size, torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.points[index]


class IndexedDataset(Dataset):
    """Wrap a dataset so that item ``i`` becomes ``(i, item)``: couplings keyed by index need it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]
