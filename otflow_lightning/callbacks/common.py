"""What the evaluation callbacks share: the module protocol, fixed noise split across ranks, real
data read by index, and when evaluation runs (inside validation, so EMA weights are in).

**Module protocol.** A callback needs only

- ``sample(x0, steps) -> Tensor``: map source samples ``(n, *data_shape)`` to target samples;
- ``data_shape``: the shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``;
- optionally ``source`` (default ``"gaussian"``: N(0, I); or a 2D toy name, or a registered
  source; a datamodule's ``source_dataset`` takes its place, see :func:`source_noise`),
  ``supported_steps`` (the step counts ``sample`` accepts; default: evaluate at 1 step) and
  ``num_classes`` (class-conditional: ``sample(x0, steps, labels=...)`` is called with the
  balanced labels ``i % num_classes`` of the fixed sample indices ``i``; see :func:`eval_labels`).

Images are in [-1, 1].
"""

from __future__ import annotations

from typing import Iterator, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.datasets import IndexedDataset
from ..data.sources import draw_source

__all__ = [
    "EvalCallback",
    "batch_target",
    "check_protocol",
    "check_real_args",
    "check_real_item",
    "check_real_set",
    "eval_labels",
    "eval_steps",
    "generate",
    "real_batches",
    "real_indices",
    "resolve_dataset",
    "shard",
    "source_noise",
]


def check_protocol(module: pl.LightningModule) -> tuple[str, tuple[int, ...]]:
    """The module's ``(source, data_shape)``; ``TypeError`` naming what is missing."""
    shape = getattr(module, "data_shape", None)
    if not callable(getattr(module, "sample", None)) or shape is None:
        raise TypeError(
            f"{type(module).__name__} cannot be evaluated: the callbacks need a method sample(x0, steps) and an "
            "attribute data_shape (the shape of one sample, e.g. (2,) or (3, 32, 32)); optional: source "
            "(default 'gaussian') and supported_steps"
        )
    return getattr(module, "source", "gaussian"), tuple(int(s) for s in shape)


def eval_steps(module: pl.LightningModule, steps: Sequence[int] | int | None) -> list[int]:
    """Step counts to evaluate: ``steps`` (one count or several), else the module's
    ``supported_steps``, else ``[1]``.

    Raises:
        ValueError: a requested count is not in the module's ``supported_steps``.
    """
    supported = getattr(module, "supported_steps", None)
    if steps is None:
        return [1] if supported is None else sorted(set(int(s) for s in supported))
    steps = [int(s) for s in ([steps] if isinstance(steps, int) else steps)]
    bad = [s for s in steps if s < 1 or (supported is not None and s not in supported)]
    if bad:
        allowed = "positive integers" if supported is None else sorted(supported)
        raise ValueError(f"steps={steps}: {type(module).__name__} cannot sample with {bad} steps; allowed: {allowed}")
    return steps


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items: exact, no padding."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def source_noise(module: pl.LightningModule, start: int, stop: int, seed: int, chunk: int = 1000) -> Iterator[Tensor]:
    """Source samples ``start..stop`` of a fixed sequence, in pieces of at most ``chunk``, on the module's device.

    Sample ``i`` belongs to chunk ``i // chunk``, drawn on the CPU from ``seed + i // chunk``: the
    same sample set for any split across ranks, any device and at every call. A model trained on a
    source *dataset* (the datamodule's ``source_dataset``, unpaired translation) is evaluated on its
    items instead: sample ``i`` is item ``order[i % len]`` of a fixed permutation ``order`` seeded
    by ``seed`` (items repeat when more samples than items are asked for).
    """
    source, shape = check_protocol(module)
    trainer = getattr(module, "_trainer", None)
    dataset = getattr(getattr(trainer, "datamodule", None), "source_dataset", None)
    if dataset is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        for lo in range(start, stop, chunk):
            yield from real_batches(dataset, order[torch.arange(lo, min(lo + chunk, stop)) % len(dataset)],
                                    chunk, module.device)
        return
    for c in range(start // chunk, -(-stop // chunk)):
        gen = torch.Generator(device="cpu").manual_seed(seed + c)
        x0 = draw_source(source, chunk, shape, generator=gen, device="cpu")
        lo, hi = max(start - c * chunk, 0), min(stop - c * chunk, chunk)
        yield x0[lo:hi].to(module.device)


def eval_labels(module: pl.LightningModule, start: int, stop: int) -> Tensor | None:
    """Classes of evaluation samples ``start..stop`` of a class-conditional module (``num_classes``
    set): ``i % num_classes`` for sample ``i``, balanced and the same for any split across ranks;
    ``None`` for an unconditional module."""
    num_classes = getattr(module, "num_classes", None)
    return None if num_classes is None else torch.arange(start, stop, device=module.device) % num_classes


def sample(module: pl.LightningModule, x0: Tensor, steps: int, start: int) -> Tensor:
    """``module.sample`` of evaluation samples ``start..start + len(x0)``, with their labels if conditional."""
    labels = eval_labels(module, start, start + x0.shape[0])
    return module.sample(x0, steps=steps) if labels is None else module.sample(x0, steps=steps, labels=labels)


def generate(module: pl.LightningModule, start: int, stop: int, steps: int, seed: int, chunk: int = 1000) -> Iterator[Tensor]:
    """Samples ``start..stop`` (see :func:`source_noise`) mapped by ``module.sample(x0, steps)``."""
    for x0 in source_noise(module, start, stop, seed, chunk):
        yield sample(module, x0, steps, start)
        start += x0.shape[0]


def batch_target(batch) -> Tensor:
    """The target tensor of a batch: ``Pair.x1``, or the first tensor of a tuple."""
    x1 = getattr(batch, "x1", None)
    if x1 is not None:
        return x1
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"cannot find the target samples in a batch of type {type(batch).__name__}: the evaluation "
                        "callbacks read Pair.x1, a tensor, or the first element of a tuple")
    return batch


def resolve_dataset(trainer: pl.Trainer, real: str | Dataset, shape: tuple[int, ...], owner: str) -> Dataset:
    """The real data set: ``real`` itself (checked at setup by :func:`check_real_set`), or the dataset
    of the trainer's ``"train"`` / ``"val"`` loader (for ``"train"`` outside ``fit``: the
    datamodule's ``train_dataset``), whose first item is checked against ``shape``
    (:func:`check_real_item`, naming ``owner``)."""
    if isinstance(real, Dataset):
        return real
    loaders = trainer.train_dataloader if real == "train" else trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    dataset = getattr(loaders, "dataset", None)
    if dataset is None and real == "train":  # Trainer.validate / test set up no training loader
        dataset = getattr(trainer.datamodule, "train_dataset", None)
    if dataset is None:
        raise ValueError(
            f"real={real!r} but the trainer has no {real} dataloader with a dataset (Trainer.validate and test load no "
            "training data unless the datamodule has a train_dataset); pass real=<Dataset>"
        )
    dataset = dataset.dataset if isinstance(dataset, IndexedDataset) else dataset
    check_real_item(dataset, shape, f"{owner}(real={real!r})")
    return dataset


def check_real_args(real: str | Dataset, n_samples: int, n_real: int | None, owner: str) -> None:
    """At construction: ``ValueError`` unless ``real`` is ``"train"``, ``"val"`` or a ``Dataset``
    and both sample counts are >= 2 (a covariance, a transport plan)."""
    if not isinstance(real, Dataset) and real not in ("train", "val"):
        raise ValueError(f"{owner}: real={real!r}; give 'train', 'val' or a Dataset of images / points")
    if n_samples < 2 or (n_real is not None and n_real < 2):
        raise ValueError(f"{owner}: n_samples and n_real must be >= 2, got {n_samples}, {n_real}")


def check_real_set(
    trainer: pl.Trainer, real: str | Dataset, n_real: int | None, shape: tuple[int, ...], owner: str
) -> None:
    """At setup, where the real set is known before the loaders exist (a ``Dataset``, or a
    datamodule's ``train_dataset`` / ``val_target``): ``ValueError`` if ``n_real`` exceeds it or its
    items are not samples of ``shape`` (:func:`check_real_item`), instead of at the first
    validation, possibly hours in."""
    datamodule = getattr(trainer, "datamodule", None)
    dataset = real if isinstance(real, Dataset) else getattr(
        datamodule, {"train": "train_dataset", "val": "val_target"}.get(real, ""), None)
    if dataset is None:
        return
    where = "" if isinstance(real, Dataset) else f" ({real!r} set of the datamodule)"
    if n_real is not None and n_real > len(dataset):
        raise ValueError(f"{owner} compares against n_real={n_real} real samples but the real set{where} has only "
                         f"{len(dataset)}: lower n_real (it defaults to n_samples) or give a larger set")
    check_real_item(dataset, shape, f"{owner}: the real set{where}")


def check_real_item(dataset: Dataset, shape: tuple[int, ...], what: str) -> None:
    """``ValueError`` naming ``what`` unless the first item of ``dataset`` is a tensor, or a tuple
    starting with one, of the module's ``shape``."""
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty")
    item = dataset[0]
    try:
        x = batch_target(item)
    except TypeError:
        raise ValueError(f"{what} yields {type(item).__name__} items; give real=<Dataset> whose items are tensors or "
                         "(tensor, label) tuples") from None
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{what} holds samples of shape {tuple(x.shape)} but the module's data_shape is "
                         f"{tuple(shape)}; give real= samples of the data's shape")


def real_indices(n_items: int, n_real: int, seed: int) -> Tensor:
    """Indices of the ``n_real`` real items evaluated out of ``n_items``: all of them in order, or a
    fixed random subset (seeded by ``seed``, sorted), so that class-sorted data (an image folder, a
    dataset stored by label) are not read one class first. Shape ``(n_real,)``, int64.

    Raises:
        ValueError: ``n_real`` exceeds ``n_items``.
    """
    if n_real > n_items:
        raise ValueError(f"n_real={n_real} but the real dataset has only {n_items} samples; lower n_real")
    if n_real == n_items:
        return torch.arange(n_items)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(n_items, generator=generator)[:n_real].sort().values


def real_batches(dataset: Dataset, indices: Sequence[int] | Tensor, batch_size: int, device) -> Iterator[Tensor]:
    """Items ``indices`` of ``dataset`` (tensors or ``(tensor, label)``), batched, on ``device``."""
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield batch_target(batch).to(device)


def _plain(value) -> bool:
    """A setting that reads the same in every run as a string: a number, string, ``None``, or a list of these."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float))


class EvalCallback(pl.Callback):
    """Base of the evaluation callbacks: :meth:`evaluate` runs inside validation and its results
    are logged at the end of the validation epoch.

    It runs in ``on_validation_batch_end`` of the first batch (not in the epoch hooks), where
    Lightning's ``EMAWeightAveraging`` has swapped its averaged weights in whatever the callback
    order; training hooks would see the raw weights. So the trainer needs a validation loop (a
    ``validation_step`` and a validation dataloader) and evaluates at its pace; sanity checks are
    skipped.

    **State key.** The schedule state (:meth:`state_dict`) is checkpointed under :attr:`state_key`,
    which Lightning requires to differ between two callbacks of one class: it is the class name and
    the settings named in :attr:`state_key_attrs` that the callback has, as strings
    (``name``, ``method``, ``n_samples``, ``n_real``, ``real``, ``steps``, ``seed``,
    ``every_n_epochs``, ``every_n_steps``, and a subclass's own, e.g. FID's ``feature``). So
    ``SamplingCallback(steps=[1])`` and ``SamplingCallback(steps=[2], every_n_steps=500)`` can run
    side by side. A setting that is not a number, string, ``None`` or list of these (``real`` given
    as a ``Dataset``, a feature module) is left out: give two such callbacks distinct names. A
    subclass with settings of its own adds their attribute names to ``state_key_attrs``. Changing
    one of these settings between runs changes the key, so a resumed run starts the schedule afresh
    (Lightning warns that the checkpoint's key matches no callback).

    Args:
        every_n_epochs: evaluate every this many validation runs (default: every run).
        every_n_steps: instead, evaluate at the first validation run at least this many training
            steps after the previous evaluation (set ``Trainer(val_check_interval=...)`` to match).
    """

    #: the settings that make up :attr:`state_key` (those of them the callback has)
    state_key_attrs: tuple[str, ...] = (
        "name", "method", "n_samples", "n_real", "real", "steps", "seed", "every_n_epochs", "every_n_steps",
    )

    def __init__(self, every_n_epochs: int | None = None, every_n_steps: int | None = None) -> None:
        if every_n_epochs is not None and every_n_steps is not None:
            raise ValueError("give every_n_epochs or every_n_steps, not both")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self._runs = 0
        self._last_step: int | None = None
        self._results: dict[str, Tensor] = {}
        self._warned_monitor = False
        self._logged: set[str] = set()  # the keys of the last evaluation

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch) -> dict[str, Tensor]:
        """Evaluate ``pl_module`` (called on every rank); return ``{log name: scalar}``, equal on all ranks."""
        raise NotImplementedError

    @property
    def state_key(self) -> str:
        """The class name and the callback's settings (see "State key" above)."""
        settings = {}
        for attr in self.state_key_attrs:
            if attr not in vars(self):
                continue
            value = vars(self)[attr]
            value = list(value) if isinstance(value, tuple) else value  # steps=(1, 2) is steps=[1, 2]
            if _plain(value):
                settings[attr] = str(value)
        return self._generate_state_key(**settings)

    def state_dict(self) -> dict:
        return {"runs": self._runs, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._runs, self._last_step = state_dict["runs"], state_dict["last_step"]

    def _due(self, trainer: pl.Trainer) -> bool:
        self._runs += 1
        if self.every_n_steps is not None:
            if self._last_step is not None and trainer.global_step - self._last_step < self.every_n_steps:
                return False
        elif (self._runs - 1) % (self.every_n_epochs or 1):
            return False
        self._last_step = trainer.global_step
        return True

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        if not self._due(trainer):
            self._warn_if_monitored(trainer)
            return
        with torch.no_grad():
            self._results = self.evaluate(trainer, pl_module, batch)
        self._logged = set(self._results)

    def _warn_if_monitored(self, trainer: pl.Trainer) -> None:
        """Once: a validation run without evaluation keeps the last logged value, which a monitoring
        callback would take for this run's model's score."""
        watched = sorted({getattr(c, "monitor", None) for c in trainer.callbacks} & self._logged)
        if watched and not self._warned_monitor:
            self._warned_monitor = True
            rank_zero_warn(
                f"{type(self).__name__} skipped this validation (every_n_epochs={self.every_n_epochs}, "
                f"every_n_steps={self.every_n_steps}), but a callback monitors {', '.join(watched)}: Lightning keeps "
                "its last value, so checkpoints (or early stopping) are ranked by an older model's score; evaluate at "
                "every validation (drop every_n_*, or match val_check_interval) or monitor another metric"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        results, self._results = self._results, {}
        for name, value in results.items():
            # the value is already the same on every rank (the metrics sync); sync_dist keeps Lightning quiet
            pl_module.log(name, value.float().to(pl_module.device), sync_dist=True)
