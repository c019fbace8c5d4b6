"""``WassersteinCallback``: exact W2^2 between one-step samples and held-out target samples."""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch

from ..metrics.wasserstein import Wasserstein2
from .common import batch_target, eval_steps, fixed_source

__all__ = ["WassersteinCallback"]


class WassersteinCallback(pl.Callback):
    """Log ``val/w2_sq`` (1 step) and ``val/w2_sq_{k}step``: exact W2^2 (POT) between ``n_samples``
    generated points and as many target points from the validation data.

    Samples are generated inside the validation epoch (in ``on_validation_batch_end`` of the first
    batch), where ``EMAWeightAveraging`` has its averaged weights swapped in whatever the callback
    order, so the figures are those of the EMA model when one is used. The generator's source is a
    fixed batch (``seed``), so successive figures differ only by the model.

    Args:
        n_samples: generated and real points (the issue protocol: 2000 against 2000).
        steps: step counts to evaluate; default the module's supported ones, or ``[1]``.
        seed: seed of the fixed source batch.
    """

    def __init__(self, n_samples: int = 2000, steps: Sequence[int] | None = None, seed: int = 1234) -> None:
        self.n_samples, self.steps, self.seed = n_samples, steps, seed
        self._metrics: dict[int, Wasserstein2] = {}
        self._real_count = 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._metrics = {s: Wasserstein2().to(pl_module.device) for s in eval_steps(pl_module, self.steps)}
        self._real_count = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        if batch_idx == 0:
            x0 = fixed_source(pl_module, self.n_samples, self.seed)
            for steps, metric in self._metrics.items():
                metric.update(pl_module.sample(x0, steps=steps), real=False)
        x1 = batch_target(batch)[: self.n_samples - self._real_count]
        self._real_count += x1.shape[0]
        for metric in self._metrics.values():
            metric.update(x1, real=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._metrics or self._real_count == 0:
            return
        for steps, metric in self._metrics.items():
            name = "val/w2_sq" if steps == 1 else f"val/w2_sq_{steps}step"
            pl_module.log(name, metric.compute().float(), prog_bar=steps == 1)
        self._metrics = {}
