"""What the one-step modules share: the source, ``generate``, optimiser and logging."""

from __future__ import annotations

import math
from typing import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..data.datamodule import Pair
from ..data.sources import check_source, draw_source
from ..utils import rank_generator

__all__ = ["OneStepModule"]


class OneStepModule(pl.LightningModule):
    """Base of OT-MF and OT-NFM: a generator ``source -> target`` trained on OT-paired batches.

    Subclasses implement :meth:`loss` (``Pair -> (loss, logs)``) and :meth:`sample`, and set
    :attr:`supported_steps`. Callbacks depend only on ``sample(x0, steps)`` and ``generate``.

    Args:
        net: the network (see the subclass for its call signature).
        source: the source distribution, as the DataModule names it (``gaussian`` or a 2D toy).
        data_shape: shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up.
    """

    #: step counts :meth:`sample` accepts (``None``: any positive number)
    supported_steps: Sequence[int] | None = None

    def __init__(
        self,
        net: nn.Module,
        source: str = "gaussian",
        data_shape: Sequence[int] = (2,),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        check_source(source, data_shape)
        self.net = net
        self.source = source
        self.data_shape = tuple(int(s) for s in data_shape)
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        self._time_generator: torch.Generator | None = None

    # ---------------------------------------------------------------- protocol
    def sample(self, x0: Tensor, steps: int = 1) -> Tensor:
        """Map source samples ``x0`` ``(n, *data_shape)`` to target samples of the same shape."""
        raise NotImplementedError

    def check_steps(self, steps: int) -> None:
        """Raise ``ValueError`` if :meth:`sample` does not support ``steps``."""
        if steps < 1 or (self.supported_steps is not None and steps not in self.supported_steps):
            allowed = "any positive number" if self.supported_steps is None else list(self.supported_steps)
            raise ValueError(f"{type(self).__name__}.sample does not support steps={steps}; allowed: {allowed}")

    @torch.no_grad()
    def generate(self, n: int, steps: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` source samples on the module's device and map them: ``(n, *data_shape)``."""
        x0 = draw_source(self.source, n, self.data_shape, generator=generator, device=self.device)
        return self.sample(x0, steps=steps)

    def loss(self, pair: Pair) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss of a paired batch and extra scalars to log."""
        raise NotImplementedError

    # ---------------------------------------------------------------- randomness
    def time_generator(self) -> torch.Generator:
        """Per-rank generator for times drawn in ``training_step`` (ranks must not share them)."""
        if self._time_generator is None or self._time_generator.device != self.device:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            step = self.trainer.global_step if self._trainer is not None else 0
            self._time_generator = rank_generator(self.device, torch.initial_seed(), rank, step, "time")
        return self._time_generator

    # ---------------------------------------------------------------- Lightning
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        dm_source = getattr(dm, "source", None)
        if dm_source is not None and dm_source != self.source:
            raise ValueError(
                f"mismatched config: the model's source is {self.source!r} but the data's is {dm_source!r}; "
                "set model.source and data.source alike (the otflow CLI links them)"
            )
        dm_shape = getattr(dm, "data_shape", None)
        if dm_shape is not None and tuple(dm_shape) != self.data_shape:
            raise ValueError(f"mismatched config: model.data_shape={self.data_shape} but the data have shape {tuple(dm_shape)}")

    def _as_pair(self, batch) -> Pair:
        if not isinstance(batch, Pair):
            raise TypeError(
                f"{type(self).__name__} expects a Pair batch from OTPairDataModule (got {type(batch).__name__}); "
                "train it with otflow_lightning.OTPairDataModule or build Pair(x0, x1) yourself"
            )
        return batch

    def training_step(self, batch: Pair, batch_idx: int) -> Tensor:
        pair = self._as_pair(batch)
        loss, logs = self.loss(pair)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}; lower lr or check the data")
        n = len(pair)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=n)
        if pair.stats:
            self.log_dict(pair.stats, batch_size=n)
        return loss

    def validation_step(self, batch: Pair, batch_idx: int) -> None:
        loss, _ = self.loss(self._as_pair(batch))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))

    def test_step(self, batch: Pair, batch_idx: int) -> None:
        loss, _ = self.loss(self._as_pair(batch))
        self.log("test/loss", loss, sync_dist=True, batch_size=len(batch))

    def predict_step(self, batch: Pair, batch_idx: int) -> Tensor:
        """One-step samples from the batch's source draws: ``(n, *data_shape)``."""
        return self.sample(self._as_pair(batch).x0, steps=1)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0:
            return opt
        warm = self.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def flat_dim(shape: Sequence[int]) -> int:
    """Number of features of one sample of ``shape``."""
    return math.prod(shape)
