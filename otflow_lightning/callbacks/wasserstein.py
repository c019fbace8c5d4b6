"""``WassersteinCallback``: W2^2 between generated and real samples, exact (POT) or sliced."""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from ..metrics.sliced_wasserstein import SlicedWasserstein2
from ..metrics.wasserstein import Wasserstein2
from .common import (
    EvalCallback, check_protocol, check_real_args, check_real_set, eval_steps, generate, real_batches, real_indices,
    resolve_dataset, shard,
)

__all__ = ["WassersteinCallback"]


class WassersteinCallback(EvalCallback):
    """Log the squared 2-Wasserstein distance between ``n_samples`` generated and ``n_real`` real samples.

    ``method="exact"`` solves the OT problem (POT network simplex, float64, CPU): the true
    empirical :math:`W_2^2`, for low dimension and up to a few thousand samples; logged as
    ``val/w2_sq`` (1 step) and ``val/w2_sq_{k}step``. ``method="sliced"`` averages exact 1D
    distances over ``n_projections`` fixed random directions (cheap for images); logged as
    ``val/sw2_sq`` and ``val/sw2_sq_{k}step``. ``"auto"`` picks exact for vector data with at most
    5000 samples, sliced otherwise.

    Under DDP each rank generates and reads its own contiguous share (no padding, exact counts) and
    the metrics concatenate the shares at ``compute()``. The generated set is the same fixed noise
    (``seed``) at every call and for any number of ranks; the real set is ``n_real`` items of ``real``
    drawn once at random with ``seed`` (all of them when ``n_real`` is the dataset's size), so
    class-sorted data are not read one class first. Runs inside validation (see
    :class:`EvalCallback`), so EMA weights are evaluated.

    Args:
        n_samples: generated samples.
        n_real: real samples (default ``n_samples``; at most the dataset's size).
        method: ``auto``, ``exact`` or ``sliced``.
        steps: step count(s) to evaluate; default the module's ``supported_steps``, or ``[1]``.
        real: ``"val"`` / ``"train"`` (the trainer's loader's dataset) or a ``Dataset``.
        n_projections: directions of the sliced estimate.
        batch_size: generation and reading batch.
        seed: seed of the generated set's noise, of the real subset and of the sliced directions.
        every_n_epochs: evaluate every this many validation runs (default every run).
        every_n_steps: instead, evaluate when at least this many training steps have passed.
        name: log name stem instead of ``w2_sq`` / ``sw2_sq`` (e.g. ``w2_train`` for a second
            callback against the training set: ``val/w2_train``, ``val/w2_train_2step``).
    """

    state_key_attrs = EvalCallback.state_key_attrs + ("n_projections",)

    def __init__(
        self,
        n_samples: int = 2000,
        n_real: int | None = None,
        method: str = "auto",
        steps: Sequence[int] | int | None = None,
        real: str | Dataset = "val",
        n_projections: int = 256,
        batch_size: int = 1000,
        seed: int = 1234,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs, every_n_steps)
        if method not in ("auto", "exact", "sliced"):
            raise ValueError(f"method={method!r}: choose 'auto', 'exact' or 'sliced'")
        check_real_args(real, n_samples, n_real, "WassersteinCallback")
        if method == "exact" and max(n_samples, n_real or n_samples) > 10_000:
            size = max(n_samples, n_real or n_samples)
            rank_zero_warn(f"WassersteinCallback(method='exact', {size} samples) solves a {size} x {size} network "
                           f"simplex at every evaluation ({8 * size**2 / 1e9:.1f} GB of float64 cost, hours of CPU); "
                           "use method='sliced', or 'auto' (exact up to 5000 points of vectors)")
        self.n_samples, self.n_real, self.method, self.steps, self.real = n_samples, n_real or n_samples, method, steps, real
        self.n_projections, self.batch_size, self.seed, self.name = n_projections, batch_size, seed, name
        self._real_shard: list[Tensor] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _, shape = check_protocol(pl_module)
        eval_steps(pl_module, self.steps)
        check_real_set(trainer, self.real, self.n_real, shape, f"WassersteinCallback({self.name or self.method})")
        self._real_shard = None
        exact = len(shape) == 1 and max(self.n_samples, self.n_real) <= 5000
        self._exact = self.method == "exact" or (self.method == "auto" and exact)

    def _metric(self) -> Wasserstein2 | SlicedWasserstein2:
        return Wasserstein2() if self._exact else SlicedWasserstein2(self.n_projections, self.seed)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch) -> dict[str, Tensor]:
        rank, world = trainer.global_rank, trainer.world_size
        if self._real_shard is None:  # the real data do not change: read this rank's share once
            dataset = resolve_dataset(trainer, self.real, tuple(pl_module.data_shape), "WassersteinCallback")
            start, stop = shard(self.n_real, rank, world)
            indices = real_indices(len(dataset), self.n_real, self.seed)[start:stop]
            self._real_shard = [x.float().cpu() for x in real_batches(dataset, indices, self.batch_size, "cpu")]
        prefix = f"val/{self.name or ('w2_sq' if self._exact else 'sw2_sq')}"
        results = {}
        for steps in eval_steps(pl_module, self.steps):
            metric = self._metric().to(pl_module.device)
            for x1 in self._real_shard:
                metric.update(x1.to(pl_module.device), real=True)
            start, stop = shard(self.n_samples, rank, world)
            for x in generate(pl_module, start, stop, steps, self.seed, self.batch_size):
                metric.update(x, real=False)
            results[prefix if steps == 1 else f"{prefix}_{steps}step"] = metric.compute()
        return results
