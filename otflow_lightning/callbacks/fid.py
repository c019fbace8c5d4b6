"""``FIDCallback``: FID of one-step (and few-step) samples, correct under DDP, offline, with cached real statistics."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..metrics.fid import build_fid, extractor_fingerprint, images_to_uint8, real_stats, set_real_stats
from .common import (
    EvalCallback, check_protocol, check_real_args, check_real_set, eval_steps, generate, real_batches, real_indices,
    resolve_dataset, shard,
)

__all__ = ["FIDCallback", "default_cache_dir"]


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/otflow_lightning/fid`` (default ``~/.cache/otflow_lightning/fid``)."""
    root = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(root, "otflow_lightning", "fid")


class FIDCallback(EvalCallback):
    """Log ``val/{name}_{k}step`` (``val/fid_1step``, ...): torchmetrics' FID between ``n_samples`` generated images and the real set.

    **Protocol** (stated in the log at the first evaluation, configurable):

    - features: torch-fidelity's Inception-v3 (``inception-v3-compat``, pool3, 2048-d), images
      resized with the TF1-compatible bilinear resize (``antialias=False``), as TTUR / torch-fidelity /
      the literature; or a custom ``feature`` module.
    - generated images (in [-1, 1]) are quantised to uint8 by rounding ``(x + 1) * 127.5``, the
      way saved PNGs are; real float images the same way; uint8 real images pass unchanged.
      Grayscale images are repeated to 3 channels for Inception.
    - CIFAR-10 standard: ``n_samples=50_000`` against the 50k training set (``real="train"``,
      ``n_real=None``). During training a smaller ``n_samples`` (default 10k) tracks progress; FID
      is biased upwards at small counts, so compare numbers only at equal counts.

    **Real statistics** are computed once (split across ranks, summed) and cached on disk in
    ``cache_dir``, keyed by dataset name, split, count, a fingerprint of the data and of the feature
    extractor's weights. Only global rank 0 holds them in the metric (the others hold zeros),
    because the metric sums its states across ranks at ``compute()``.

    **Generation** is split across ranks in contiguous shares of exactly ``n_samples`` in total (no
    sampler padding), from fixed noise (``seed``): the same sample set on any number of ranks.
    Runs inside validation (see :class:`EvalCallback`), so EMA weights are evaluated.

    **Offline**: the Inception weights are never downloaded here; pass ``weights_path`` or put them
    in the torch hub cache (:func:`~otflow_lightning.metrics.download_inception_weights`), or
    pass a custom ``feature`` module (uint8 images ``(n, *data_shape)`` to features ``(n, d)``).

    Args:
        real: ``"train"`` / ``"val"`` (the trainer's loader's dataset) or a ``Dataset`` of images
            (tensors or ``(tensor, label)``; no random augmentation).
        n_samples: generated images per evaluation.
        n_real: real images (default the whole dataset; fewer: a fixed random subset drawn with ``seed``).
        steps: step count(s) to evaluate; default the module's ``supported_steps``, or ``[1]``.
        feature: Inception feature size (64, 192, 768, 2048) or a custom feature module.
        weights_path: Inception weights file (default: the torch hub cache).
        antialias: torchmetrics' antialiased resize (``False`` matches the literature).
        batch_size: generation and feature batch.
        dataset_name: name in the cache key (default the dataset's class name).
        cache_dir: where real statistics are cached (default :func:`default_cache_dir`).
        seed: seed of the generated set's noise and of the real subset.
        name: log name stem (e.g. ``fid_val`` for a second FID against the validation set).
        every_n_epochs: evaluate every this many validation runs (default every run).
        every_n_steps: instead, evaluate when at least this many training steps have passed.
    """

    state_key_attrs = EvalCallback.state_key_attrs + ("feature", "weights_path", "antialias", "dataset_name")

    def __init__(
        self,
        real: str | Dataset = "train",
        n_samples: int = 10_000,
        n_real: int | None = None,
        steps: Sequence[int] | int | None = None,
        feature: int | nn.Module = 2048,
        weights_path: str | None = None,
        antialias: bool = False,
        batch_size: int = 250,
        dataset_name: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        name: str = "fid",
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
    ) -> None:
        super().__init__(every_n_epochs, every_n_steps)
        check_real_args(real, n_samples, n_real, "FIDCallback")
        if not isinstance(feature, nn.Module) and feature not in (64, 192, 768, 2048):
            raise ValueError(f"FIDCallback: feature={feature!r}; give an Inception feature size (64, 192, 768, 2048) "
                             "or a feature module (uint8 images (n, *data_shape) -> features (n, d))")
        self.real, self.n_samples, self.n_real, self.steps = real, n_samples, n_real, steps
        self.feature, self.weights_path, self.antialias = feature, weights_path, antialias
        self.batch_size, self.dataset_name, self.seed, self.name = batch_size, dataset_name, seed, name
        self.cache_dir = cache_dir or default_cache_dir()
        self.fid = None
        self.cache_path: str | None = None
        self._real_ready = False

    # ---------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _, shape = check_protocol(pl_module)
        if len(shape) != 3:
            raise ValueError(f"FIDCallback needs image data (c, h, w); {type(pl_module).__name__}.data_shape is {shape}")
        eval_steps(pl_module, self.steps)
        check_real_set(trainer, self.real, self.n_real, shape, f"FIDCallback(name={self.name!r})")
        if self.fid is None:  # kept in the callback: not in checkpoints, not copied by EMA
            self.fid = build_fid(self.feature, self.weights_path, self.antialias, input_shape=shape)
            self._real_ready = False

    @property
    def _inception(self) -> bool:
        return not isinstance(self.feature, nn.Module)

    def protocol(self, n_real: int, split: str) -> str:
        """One line stating the protocol, as logged at the first evaluation."""
        if self._inception:
            resize = "antialiased bilinear" if self.antialias else "TF1-compatible bilinear (antialias=False)"
            features = f"torch-fidelity inception-v3-compat, {self.feature} features, {resize} resize to 299"
        else:
            features = f"custom feature module {type(self.feature).__name__}"
        return f"FID protocol: {self.n_samples} generated vs {n_real} real ({split}) images, uint8 by rounding, {features}"

    def _update(self, x: Tensor, real: bool) -> None:
        """Quantise ``x`` (and repeat grayscale for Inception), then add its features."""
        x = images_to_uint8(x)
        if self._inception and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        self.fid.update(x, real=real)

    # ---------------------------------------------------------------- real statistics
    def _cache_key(self, dataset: Dataset, split: str, indices: Tensor) -> str:
        name, n_real = self.dataset_name or type(dataset).__name__, len(indices)
        h = hashlib.sha1(extractor_fingerprint(self.fid).encode())
        h.update(f"{len(dataset)}".encode())
        h.update(indices.numpy().tobytes())
        picks = [int(indices[i]) for i in sorted({0, n_real // 2, n_real - 1})]  # a fingerprint of the data, cheap
        h.update(images_to_uint8(next(real_batches(dataset, picks, len(picks), "cpu"))).numpy().tobytes())
        extractor = f"inception{self.feature}{'-aa' if self.antialias else ''}" if self._inception else type(self.feature).__name__
        return f"{name}-{split}-n{n_real}-{extractor}-{h.hexdigest()[:12]}"

    def _load_real(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = resolve_dataset(trainer, self.real, tuple(pl_module.data_shape), "FIDCallback")
        split = self.real if isinstance(self.real, str) else "custom"
        n_real = len(dataset) if self.n_real is None else self.n_real
        indices = real_indices(len(dataset), n_real, self.seed)
        self.cache_path = os.path.join(self.cache_dir, self._cache_key(dataset, split, indices) + ".pt")
        rank_zero_info(f"{self.protocol(n_real, split)}; real statistics cache: {self.cache_path}")
        cached = trainer.is_global_zero and os.path.isfile(self.cache_path)
        cached = trainer.strategy.broadcast(cached, src=0)
        stats = None
        if cached:
            if trainer.is_global_zero:
                stats = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        else:  # every rank: features of its share; sums over ranks; rank 0 writes the cache
            set_real_stats(self.fid, None)
            start, stop = shard(n_real, trainer.global_rank, trainer.world_size)
            for x in real_batches(dataset, indices[start:stop], self.batch_size, pl_module.device):
                self._update(x, real=True)
            stats = {k: trainer.strategy.reduce(v, reduce_op="sum") for k, v in real_stats(self.fid).items()}
            if trainer.is_global_zero:
                os.makedirs(self.cache_dir, exist_ok=True)
                tmp = f"{self.cache_path}.tmp{os.getpid()}"
                torch.save({k: v.cpu() for k, v in stats.items()}, tmp)
                os.replace(tmp, self.cache_path)
        set_real_stats(self.fid, stats if trainer.is_global_zero else None)
        self._real_ready = True

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch) -> dict[str, Tensor]:
        self.fid = self.fid.to(pl_module.device)
        if not self._real_ready:
            self._load_real(trainer, pl_module)
        start, stop = shard(self.n_samples, trainer.global_rank, trainer.world_size)
        results = {}
        for steps in eval_steps(pl_module, self.steps):
            self.fid.reset()  # fake statistics only (reset_real_features=False)
            for x in generate(pl_module, start, stop, steps, self.seed, self.batch_size):
                self._update(x, real=False)
            results[f"val/{self.name}_{steps}step"] = self.fid.compute()
        return results
