"""``SampleWriter``: save what ``predict`` generates (``otflow predict`` otherwise discards it)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["SampleWriter"]


class SampleWriter(BasePredictionWriter):
    """Write each rank's ``predict`` samples to ``<dir>/samples_rank{r}.pt`` at the end of ``predict``.

    The file holds ``{"samples": (n, *data_shape), "index": (n,)}``: the one-step samples of
    ``predict_step`` (one per item of the predict loader; the data module's validation pairs) and
    the loader's item indices, so that the shares of several ranks can be merged and ordered. For a
    class-conditional module (``pl_module.num_classes`` set) it also holds ``"labels": (n,)``, the
    class each sample was generated for (the batch's ``Pair.labels``, read through the module's
    ``as_pair`` where it has one; ``num_classes``, the null class, for a batch without labels).

    Args:
        output_dir: folder of the files (default ``<trainer.log_dir>/predictions``).

    Example (CLI): ``otflow predict --config configs/toy.yaml --ckpt_path last.ckpt
    --trainer.callbacks+=otflow_lightning.callbacks.SampleWriter``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.last_path: str | None = None
        self._labels: list[torch.Tensor] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._labels = []

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if getattr(pl_module, "num_classes", None) is None or dataloader_idx != 0:
            return
        as_pair = getattr(pl_module, "as_pair", None)
        labels = getattr(as_pair(batch) if as_pair is not None else batch, "labels", None)
        if labels is None:  # sampled without labels: the null class num_classes (unconditional)
            labels = torch.full((len(outputs),), pl_module.num_classes, dtype=torch.long)
        self._labels.append(torch.as_tensor(labels).detach().cpu().reshape(-1))

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any] | None) -> None:
        folder = self.output_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "predictions")
        os.makedirs(folder, exist_ok=True)
        if predictions and isinstance(predictions[0], list):  # several predict loaders: the first
            predictions, batch_indices = predictions[0], (batch_indices or [None])[0]
        samples = torch.cat([p.detach().cpu() for p in predictions]) if predictions else torch.empty(0)
        flat = [i for batch in (batch_indices or []) for i in batch]
        index = torch.tensor(flat, dtype=torch.long) if len(flat) == len(samples) else torch.arange(len(samples))
        out = {"samples": samples, "index": index}
        if getattr(pl_module, "num_classes", None) is not None:
            out["labels"] = torch.cat(self._labels).long() if self._labels else torch.empty(0, dtype=torch.long)
            if len(out["labels"]) != len(samples):
                raise RuntimeError(f"SampleWriter: {len(out['labels'])} labels for {len(samples)} samples")
        self.last_path = os.path.join(folder, f"samples_rank{trainer.global_rank}.pt")
        torch.save(out, self.last_path)
        self._labels = []
