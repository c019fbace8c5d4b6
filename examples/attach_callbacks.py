"""Attach otflow_lightning's evaluation callbacks to your own LightningModule and Trainer.

The module below is plain user code (not an otflow_lightning class): a small flow-matching model on
a 2D mixture of Gaussians with an Euler sampler. The callbacks need only

- ``sample(x0, steps) -> Tensor``: map source samples ``(n, *data_shape)`` to data samples;
- ``data_shape``: the shape of one sample;
- optionally ``source`` (default ``"gaussian"``) and ``supported_steps``;

plus a validation loop (``validation_step`` and a validation dataloader), because they evaluate
inside validation, where ``EMAWeightAveraging`` has swapped its averaged weights in.

    python examples/attach_callbacks.py      # about a minute on a CPU; logs under runs/attach_callbacks
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from otflow_lightning.callbacks import SamplingCallback, WassersteinCallback


def ring_of_gaussians(n: int, seed: int) -> torch.Tensor:
    """``n`` points from 6 Gaussians on a circle of radius 2: ``(n, 2)``."""
    gen = torch.Generator().manual_seed(seed)
    angle = torch.randint(0, 6, (n,), generator=gen) * (2 * math.pi / 6)
    centres = 2 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + 0.15 * torch.randn(n, 2, generator=gen)


class FlowMatching(pl.LightningModule):
    """Conditional flow matching from N(0, I) to the data, sampled by Euler steps."""

    data_shape = (2,)  # what the callbacks read: the shape of one sample (source: N(0, I) by default)

    def __init__(self, hidden: int = 128, lr: float = 2e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))

    def loss(self, x1: torch.Tensor) -> torch.Tensor:
        x0, t = torch.randn_like(x1), torch.rand(x1.shape[0], device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return (self.velocity(xt, t) - (x1 - x0)).square().mean()

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch[0])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.loss(batch[0]))

    @torch.no_grad()
    def sample(self, x0: torch.Tensor, steps: int = 1) -> torch.Tensor:
        x = x0
        for i in range(steps):
            t = torch.full((x.shape[0],), i / steps, device=x.device)
            x = x + self.velocity(x, t) / steps
        return x

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(max_steps: int = 1500, root: str = "runs/attach_callbacks", seed: int = 0) -> pl.Trainer:
    torch.set_num_threads(1)
    pl.seed_everything(seed)
    train = DataLoader(TensorDataset(ring_of_gaussians(20_000, seed)), batch_size=256, shuffle=True)
    val = DataLoader(TensorDataset(ring_of_gaussians(1000, seed + 1)), batch_size=500)
    callbacks = [
        EMAWeightAveraging(decay=0.99),
        WassersteinCallback(n_samples=1000, steps=[1, 8]),  # val/w2_sq (1 step), val/w2_sq_8step
        SamplingCallback(n_samples=1000, steps=[1, 8], every_n_steps=max_steps // 2),
    ]
    trainer = pl.Trainer(
        max_steps=max_steps,
        val_check_interval=max_steps // 3,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(FlowMatching(), train, val)
    return trainer


if __name__ == "__main__":
    trainer = main()
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
