"""Small user-protocol modules and data for the callback tests (importable by spawned DDP workers)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

SHAPE = (1, 8, 8)


class ImageModule(pl.LightningModule):
    """A fixed random generator of 8x8 grayscale images in [-1, 1]: ``tanh(W x0 + b)``; ``steps`` scales the bias."""

    data_shape = SHAPE

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(64, 64, generator=gen) / 8)
        self.bias = nn.Parameter(torch.randn(64, generator=gen) / 2)

    def sample(self, x0: torch.Tensor, steps: int = 1) -> torch.Tensor:
        z = x0.flatten(1) @ self.weight.T + self.bias / steps
        return torch.tanh(z).reshape(-1, *SHAPE)

    def validation_step(self, batch, batch_idx) -> None:
        pass


class PixelFeatures(nn.Module):
    """A custom FID feature module: uint8 images ``(n, 1, 8, 8)`` to 6 fixed random features."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(64, 6, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin((x.flatten(1).float() / 255) @ self.proj)


def real_images(n: int = 48, seed: int = 2) -> Dataset:
    """``n`` images in [-1, 1] quantised to the uint8 grid (as a dataset read from PNGs is)."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return TensorDataset(torch.round((x + 1) * 127.5) / 127.5 - 1)
