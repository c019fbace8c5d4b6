"""``OTPairDataModule``: target data + a source, paired by minibatch OT on the batch's device."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..ot import OnlineCoupling, OTCoupler, check_batch, couple_batch, draw_source_labels
from ..utils import rank_generator
from .datasets import IndexedDataset, ToyDataset
from .images import IMAGE_DATASETS, ZipDataset, image_dataset
from .prefetch import ChunkedLoader, CouplingPrefetcher, PairChunk, PrefetchedPair, PrefetchingLoader
from .sources import check_source, draw_source
from .toys import TOYS

__all__ = ["OTPairDataModule", "Pair"]


@dataclass
class Pair:
    """A paired batch, as ``training_step`` receives it.

    Attributes:
        x0: ``(n, *shape)`` source samples.
        x1: ``(n, *shape)`` target samples; ``(x0[i], x1[i])`` is a coupled pair.
        labels: ``(n,)`` labels of ``x1`` (or ``None``); with ``conditional`` also those of ``x0``.
        index: ``(n,)`` dataset indices of ``x1``.
        stats: coupling statistics of this batch (empty for validation batches).
    """

    x0: Tensor
    x1: Tensor
    labels: Tensor | None = None
    index: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x0.shape[0]


def _check_per_rank(what: str, size: int, ranks: int, batch: int, name: str, drop_last: bool = False) -> None:
    """``ValueError`` unless each of ``ranks`` shares of ``size`` samples (padded, or cut with ``drop_last``)
    holds a full ``batch``: a rank with no full batch has 0 steps per epoch and ``fit`` never ends."""
    per_rank = size // ranks if drop_last else -(-size // ranks)
    if per_rank < batch:
        share = f" ({per_rank} on each of {ranks} ranks)" if ranks > 1 else ""
        raise ValueError(f"{what} has {size} samples{share}, fewer than {name}={batch}: lower {name}")


def _run_seed() -> int:
    """The seed ``seed_everything`` set for this run (0 without one)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _indexed(batch: Any) -> tuple[Tensor, Any]:
    """``(index, item)`` of a batch from the data module's loaders; ``TypeError`` for any other batch."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], Tensor) and batch[0].ndim == 1 \
            and not batch[0].is_floating_point():
        return batch
    raise TypeError(
        "OTPairDataModule pairs (index, item) batches, which its loaders make by wrapping the dataset in "
        f"IndexedDataset; got a {type(batch).__name__} of another form. If you override train_dataloader or "
        "val_dataloader, wrap the dataset: DataLoader(otflow_lightning.data.IndexedDataset(dataset), ...), or "
        "assign the dataset to `target` in setup() and keep the data module's loaders"
    )


def _split_item(item: Any, name: str = "target") -> tuple[Tensor, Tensor | None]:
    """A collated dataset item is ``x`` or ``(x, y, ...)``: return ``(x, y or None)``; ``name``: the
    data module argument the item comes from, for the error."""
    if isinstance(item, np.ndarray):  # a raw item of a numpy dataset (the DataLoader collates them to tensors)
        return torch.as_tensor(item), None
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], (Tensor, np.ndarray)):
        label = item[1] if len(item) > 1 and isinstance(item[1], (Tensor, np.ndarray, int, np.integer)) else None
        return torch.as_tensor(item[0]), None if label is None else torch.as_tensor(label)
    if isinstance(item, Tensor):
        return item, None
    raise TypeError(f"{name} items must be a tensor or a (tensor, label) tuple, got {type(item).__name__}; "
                    "wrap the dataset so that __getitem__ returns one")


class OTPairDataModule(pl.LightningDataModule):
    """Target dataset and a source, coupled by minibatch OT in ``on_after_batch_transfer``.

    Collate runs in CPU DataLoader workers, so the pairing happens in ``on_after_batch_transfer``,
    where the batch is already on this rank's device (GPU when there is one); only training batches
    are re-paired. The source is drawn on that device with a per-rank generator (seeded from the
    run's seed and the global rank), so ranks never draw the same noise.

    Args:
        target: a toy name (``moons``, ``8gaussians``, ...), an image dataset name (``digits``,
            ``mnist``, ``cifar10``, ``folder``; see :mod:`~otflow_lightning.data.images`) or a
            ``Dataset`` of tensors or ``(tensor, label)`` tuples.
        source: ``gaussian`` (N(0, I) of the data's shape), a 2D toy name, or a source of your own
            (a name in :data:`~otflow_lightning.data.SOURCES`, or a function's import path; see
            :func:`~otflow_lightning.data.register_source`). Give the module the same name: its
            ``generate`` and the evaluation callbacks draw from it too.
        coupling: an :class:`~otflow_lightning.ot.OTCoupler` method name (``auto``, the default,
            which picks the solver by batch size, dimension and device, see
            :func:`~otflow_lightning.ot.auto_method`; ``exact``, ``auction``, ``sinkhorn``, ``bsp``,
            ``independent``, ...) or an ``OTCoupler``; or ``online`` / an
            :class:`~otflow_lightning.ot.OnlineCoupling` for a persistent assignment keyed by
            dataset index (its bank is part of :meth:`state_dict`, so checkpoints carry it). An
            ``OTCoupler(..., plan_sampler=True)`` samples each noise's target from a transport plan
            with this rank's generator (targets may then repeat within a batch).
        batch_size: per-rank batch size, which is also the OT batch.
        val_target: validation dataset; default for toys: ``val_size`` fresh points.
        toy_size: points in a toy training set (drawn once from ``seed``).
        val_size: points in a toy validation set.
        num_workers: DataLoader workers.
        seed: base seed of the toy sets, the online coupling's first noise bank and the per-rank
            source generators. ``None``: the run's seed (``seed_everything``, which must be the
            same on every rank; 0 without one) for the toy sets and the bank, and
            ``torch.initial_seed()`` for the source draws.
        conditional: class-conditional coupling (C2OT): source labels are drawn from the batch's
            label marginal independently of the noise, and pairs are matched within labels (or
            with the coupler's ``label_weight``), so ``Pair.labels`` label both ``x0`` and ``x1``
            (with a float ``label_weight``, pairs that cross classes take the target's label:
            ``coupling/label_crossings`` logs their share on this rank, and more than 1% is warned
            about once).
            With ``online`` the bank's noise moves only between data of one class.
        global_coupling: under DDP, all-gather every rank's batch and solve one match of the world
            batch on rank 0 (broadcast to all); each rank keeps the pairs of its own noise (with
            ``online``: of its own data).
        root: folder of the named image datasets (``folder``: the image folder).
        download: fetch MNIST / CIFAR-10 into ``root`` if missing.
        dataset_options: extra arguments of the named image dataset (``size``, ``pad``, ``hflip``).
        source_data: unpaired translation: draw ``x0`` from this dataset (a ``Dataset`` or an
            image dataset name, with the same ``root``) instead of from ``source``; training
            source batches come from their own shuffled loader, validation pairs are fixed.
        prefetch_coupling: pair the next training batch (source draw and OT solve) in a background
            thread while the current step runs; the pairs are identical to those without it. Not
            with ``online``, ``global_coupling`` or ``source_data``. See ``docs/coupling.md``.
        ot_batch_size: solve OT on batches of this many samples (a multiple of ``batch_size``) and
            serve each coupled OT batch as ``ot_batch_size // batch_size`` consecutive training
            batches: a larger OT batch (a sharper coupling) at the same gradient batch and one solve
            per several steps (with ``prefetch_coupling``, the next OT batch's solve overlaps all of
            them). ``None``: the OT batch is the training batch. Not with ``online`` or
            ``source_data``.
    """

    def __init__(
        self,
        target: str | Dataset = "moons",
        source: str = "gaussian",
        coupling: str | OTCoupler | OnlineCoupling = "auto",
        batch_size: int = 256,
        val_target: Dataset | None = None,
        toy_size: int = 50_000,
        val_size: int = 2_000,
        num_workers: int = 0,
        seed: int | None = None,
        conditional: bool = False,
        global_coupling: bool = False,
        root: str = "data",
        download: bool = False,
        dataset_options: dict | None = None,
        source_data: str | Dataset | None = None,
        prefetch_coupling: bool = False,
        ot_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("target", target), ("source_data", source_data)):
            if isinstance(value, str) and value not in IMAGE_DATASETS and (name == "source_data" or value not in TOYS):
                raise ValueError(f"unknown {name} {value!r}; give a toy name {sorted(TOYS)}, an image dataset {IMAGE_DATASETS} or a Dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if toy_size < 1 or val_size < 0:
            raise ValueError(f"toy_size must be >= 1 and val_size >= 0 (0: no validation set), got {toy_size} and {val_size}")
        check_source(source)
        self.target, self.source = target, source
        if coupling == "online":
            coupling = OnlineCoupling()
        self.online = coupling if isinstance(coupling, OnlineCoupling) else None
        if self.online is not None and source_data is not None:
            raise ValueError("coupling='online' keeps its own persistent bank of source noise: leave source_data unset")
        if prefetch_coupling and (self.online is not None or global_coupling or source_data is not None):
            raise ValueError(
                "prefetch_coupling=True pairs batches in a background thread, which cannot serve coupling='online' "
                "(each solve updates the checkpointed bank the next one reads), global_coupling=True (collectives "
                "from a second thread can deadlock) or source_data (a second loader); set prefetch_coupling=False"
            )
        if ot_batch_size is not None and (ot_batch_size < batch_size or ot_batch_size % batch_size):
            raise ValueError(f"ot_batch_size must be a multiple of batch_size={batch_size}, got {ot_batch_size}")
        if ot_batch_size is not None and (self.online is not None or source_data is not None):
            raise ValueError(
                "ot_batch_size serves one coupled OT batch as several training batches, which does not combine with "
                "coupling='online' (its bank pairs every batch) or source_data; unset one of them"
            )
        self.ot_batch_size = ot_batch_size
        self._chunks: list[Pair] = []
        if self.online is not None:
            self.coupler = self.online.coupler
        elif isinstance(coupling, OTCoupler):
            self.coupler = coupling
        else:
            try:
                self.coupler = OTCoupler(coupling)
            except ValueError as err:  # the data module also takes 'online'
                raise ValueError(f"coupling: {err}, or 'online' (a persistent OnlineCoupling)") from None
        per_match = ot_batch_size or batch_size
        if per_match < 8 and not global_coupling and self.coupler.method != "independent":
            rank_zero_warn(f"an OT batch of {per_match} samples barely couples anything (one sample: the independent "
                           "pairing); use batch_size (or ot_batch_size) of at least a few dozen")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_target, self.toy_size, self.val_size, self.seed = val_target, toy_size, val_size, seed
        self.conditional, self.global_coupling = conditional, global_coupling
        self._warned_crossings = False
        self._data_seed: int | None = None  # the seed setup drew the toy sets and the bank from
        self.root, self.download, self.dataset_options, self.source_data = root, download, dict(dataset_options or {}), source_data
        self._train: Dataset | None = None
        self._source_train: Dataset | None = None
        self._source_val: Dataset | None = None
        self._generator: torch.Generator | None = None
        self.prefetch_coupling = prefetch_coupling
        self._prefetcher: CouplingPrefetcher | None = None

    # ---------------------------------------------------------------- data
    @property
    def train_dataset(self) -> Dataset:
        """The training target set (items ``x`` or ``(x, label)``), e.g. the real set of an evaluation callback."""
        self.setup("fit")
        return self._train

    @property
    def source_dataset(self) -> Dataset | None:
        """Under ``source_data`` the set validation sources come from (items ``x`` or ``(x, label)``;
        the evaluation callbacks map these), else ``None``: sources are drawn from ``source``."""
        if self.source_data is None:
            return None
        self.setup("fit")
        return self._source_val

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one target sample."""
        self.setup("fit")
        x, _ = _split_item(self._train[0])
        return tuple(x.shape)

    def _seeded_draws(self) -> list[str]:
        """What :meth:`setup` draws from the run seed: the toy sets of a toy target, the first bank of
        an online coupling."""
        toy = isinstance(self.target, str) and self.target in TOYS
        return [name for name, drawn in (("toy data", toy), ("noise bank", self.online is not None)) if drawn]

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        base = _run_seed() if self.seed is None else self.seed
        drawn = self._seeded_draws()
        if drawn:
            self._data_seed = base
        if "toy data" in drawn:
            self._train = ToyDataset(self.target, self.toy_size, seed=base)
            if self.val_target is None and self.val_size > 0:
                self.val_target = ToyDataset(self.target, self.val_size, seed=base + 1_000_003)
        elif isinstance(self.target, str):
            self._train, val = self._image_splits(self.target)
            self.val_target = val if self.val_target is None else self.val_target
            if self.val_target is None:
                rank_zero_warn(
                    f"target {self.target!r} has no test split, so there is no validation: sample grids, W2/FID callbacks and "
                    "a checkpoint monitor on val/ metrics never run, and with step-based validation (check_val_every_n_epoch: "
                    "null, as in the configs) a ModelCheckpoint without every_n_train_steps saves nothing during "
                    "training (only last.ckpt when fit ends); pass val_target (a Dataset, e.g. an ImageFolderDataset "
                    "of held-out images) or add ModelCheckpoint(every_n_train_steps=...)"
                )
        else:
            self._train = self.target
        if isinstance(self.source_data, str):
            try:
                self._source_train, self._source_val = self._image_splits(self.source_data)
            except ValueError as err:
                raise ValueError(f"{err} (a named source_data shares the target's dataset_options and root; pass "
                                 "source_data as a Dataset to give it its own)") from None
            self._source_val = self._source_val or self._source_train  # a folder has no test split
        elif self.source_data is not None:
            self._source_train = self._source_val = self.source_data
        self._check_data()
        shape = self.data_shape
        if self._source_train is None:
            check_source(self.source, shape)
        if self.online is not None:  # __init__ rules out online + source_data
            # through the draw_source hook, so a subclass's source also fills the bank (its x1: zeros of the shape)
            self.online.reset(len(self._train), lambda n, g: self.draw_source(torch.zeros(n, *shape), g), seed=base)

    def _check_data(self) -> None:
        """Raise ``ValueError`` for data that would train silently wrong: class labels that are all
        one folder's, validation samples of another shape than the training ones."""
        if self.conditional and getattr(self._train, "classes", None) == []:
            raise ValueError("conditional=True needs labels, but the image folder is flat (every label 0): put the "
                             "images in one subfolder per class")
        if self.val_target is not None and len(self.val_target) and len(self._train):
            val_x, val_label = _split_item(self.val_target[0], "val_target")
            if tuple(val_x.shape) != self.data_shape:
                raise ValueError(f"val_target items have shape {tuple(val_x.shape)} but the training data have "
                                 f"{self.data_shape}; give a val_target of the training data's shape")
            if self.conditional and val_label is None:
                raise ValueError("conditional=True but val_target items have no labels: give a validation set of "
                                 "(x, label) items, as the training set")

    def _image_splits(self, name: str) -> tuple[Dataset, Dataset | None]:
        """Training and test split of a named image dataset (folders have no test split)."""
        train = image_dataset(name, self.root, True, self.download, **self.dataset_options)
        if name == "folder":
            return train, None
        options = {k: v for k, v in self.dataset_options.items() if k != "hflip"}
        return train, image_dataset(name, self.root, False, self.download, **options)

    def _loader(
        self, dataset: Dataset, shuffle: bool, drop_last: bool, loader: type[DataLoader] = DataLoader, batch_size: int | None = None, **options
    ) -> DataLoader:
        return loader(
            IndexedDataset(dataset),
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        ot_batch = self.ot_batch_size or self.batch_size
        world = getattr(self.trainer, "world_size", 1)
        # online under DDP: a DistributedSampler that drops the remainder instead of padding it with repeated
        # indices; two copies of one index in a world batch would duplicate one bank noise and lose another
        online_sampler = self.online is not None and world > 1
        # Lightning shards the other loaders with a padding DistributedSampler, unless told not to
        connector = getattr(self.trainer, "_accelerator_connector", None)
        shards = world if getattr(connector, "use_distributed_sampler", True) else 1
        _check_per_rank("the training set", len(self._train), world if online_sampler else shards, ot_batch,
                        "ot_batch_size" if self.ot_batch_size else "batch_size", drop_last=online_sampler)
        # drop_last: every batch, on every rank, has the full OT batch (and equal shapes for all_gather)
        chunks = ot_batch // self.batch_size
        if self.prefetch_coupling:
            target = self._loader(self._train, True, True, PrefetchingLoader, ot_batch, chunks=chunks, prefetcher=self._start_prefetcher())
        elif self.ot_batch_size:
            target = self._loader(self._train, True, True, ChunkedLoader, ot_batch, chunks=chunks)
        elif online_sampler:  # Lightning keeps a DistributedSampler it is given and calls its set_epoch
            sampler = DistributedSampler(
                self._train, world, self.trainer.global_rank, shuffle=True, seed=_run_seed(), drop_last=True
            )
            target = self._loader(self._train, shuffle=False, drop_last=True, sampler=sampler)
        else:
            target = self._loader(self._train, shuffle=True, drop_last=True)
        if self._source_train is None:
            return target
        _check_per_rank("source_data", len(self._source_train), shards, self.batch_size, "batch_size")
        source = self._loader(self._source_train, shuffle=True, drop_last=True)
        return CombinedLoader({"target": target, "source": source}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader | list:
        self.setup("fit")
        if self.val_target is None:
            return []
        val = self.val_target if self._source_val is None else ZipDataset(self.val_target, self._source_val)
        return self._loader(val, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    # ---------------------------------------------------------------- source noise
    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _noise_seed(self) -> int:
        """Base seed of the per-rank source generators."""
        return torch.initial_seed() if self.seed is None else self.seed

    def generator(self, device: torch.device) -> torch.Generator:
        """Per-rank training generator on ``device``, created on first use."""
        if self._generator is None or self._generator.device != device:
            # keyed by the step too, so a resumed run draws fresh noise
            step = self.trainer.global_step if self.trainer is not None else 0
            self._generator = rank_generator(device, self._noise_seed(), self._rank(), step, "source")
        return self._generator

    def _val_generator(self, device: torch.device, index: Tensor) -> torch.Generator:
        # keyed by the batch's first dataset index: the same batch always gets the same noise,
        # so validation figures compare across steps
        return rank_generator(device, self._noise_seed(), self._rank(), int(index[0]), "val")

    def draw_source(self, x1: Tensor, generator: torch.Generator) -> Tensor:
        """Source batch shaped like ``x1``, drawn on its device: every training and validation pair,
        and the online bank. A subclass may override it; to change the source of ``generate`` and the
        evaluation callbacks as well, register a source instead (``register_source``)."""
        return draw_source(self.source, x1.shape[0], x1.shape[1:], generator=generator, device=x1.device).to(x1.dtype)

    # ---------------------------------------------------------------- the pairing hook
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Pair:
        if isinstance(batch, Pair):
            return batch
        if isinstance(batch, PrefetchedPair):
            return self._serve(self._prefetcher.wait(batch))
        if isinstance(batch, PairChunk):  # a further training batch of the OT batch paired last
            if batch.index >= len(self._chunks):
                raise RuntimeError("ot_batch_size: a training batch arrived before its OT batch was paired")
            return self._chunks[batch.index]
        training = self.trainer is not None and self.trainer.training
        pair = self._pair(batch, training)
        return self._serve(pair) if training else pair

    def _serve(self, pair: Pair) -> Pair:
        """The training batch to use now: ``pair`` itself, or (``ot_batch_size``) its first slice,
        keeping the others for the :class:`PairChunk` markers that follow."""
        if not self.ot_batch_size:
            return pair
        # the rows follow the i.i.d. source draws, so consecutive slices are random subsets
        n = self.batch_size
        self._chunks = [
            Pair(pair.x0[i : i + n], pair.x1[i : i + n], None if pair.labels is None else pair.labels[i : i + n],
                 None if pair.index is None else pair.index[i : i + n], pair.stats)
            for i in range(0, len(pair), n)
        ]
        return self._chunks[0]

    def _start_prefetcher(self) -> CouplingPrefetcher:
        """The worker that pairs training batches one batch ahead (``prefetch_coupling``)."""
        if self._prefetcher is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            # the generator is created here, keyed by the step as without prefetching; the worker only draws
            self._prefetcher = CouplingPrefetcher(lambda b: self._pair(b, training=True), device, self.generator(device))
        return self._prefetcher

    def _pair(self, batch: Any, training: bool) -> Pair:
        if isinstance(batch, dict):  # translation, training: separately shuffled source batches
            (index, item), source_item = batch["target"], batch["source"][1]
        elif self._source_val is not None:  # translation, validation: ZipDataset pairs
            index, (item, source_item) = batch
        else:
            (index, item), source_item = _indexed(batch), None
        x1, labels = _split_item(item)
        if not x1.is_floating_point():
            raise ValueError(f"target samples must be floating point, got {x1.dtype}: scale images to floats "
                             "(the built-in datasets give [-1, 1])")
        if training and self.conditional and labels is None:
            raise ValueError("conditional=True needs a labelled target: dataset items must be (x, label) tuples")
        generator = self.generator(x1.device) if training else self._val_generator(x1.device, index)
        if training and self.online is not None:
            x0, coupling = self.online.couple(
                x1, index, generator, labels if self.conditional else None, across_ranks=self.global_coupling
            )
            perm = coupling.perm
            return Pair(x0, x1[perm], None if labels is None else labels[perm], index[perm], coupling.stats())
        if source_item is None:
            x0 = self.draw_source(x1, generator)
        else:
            x0 = _split_item(source_item, "source_data")[0].to(x1.dtype)
        if not training or self.global_coupling:  # local training batches: the coupler checks them
            try:
                check_batch(x0, x1)
            except ValueError as err:
                raise ValueError(f"{'training' if training else 'validation (val_target)'} batch: {err}") from None
        if not training:
            return Pair(x0, x1, labels, index)
        c0 = c1 = None
        if self.conditional:
            c1, c0 = labels, draw_source_labels(labels, generator)
        x1, (labels, index), coupling = couple_batch(
            self.coupler, x0, x1, c0, c1, payload=(labels, index), across_ranks=self.global_coupling, generator=generator
        )
        stats = coupling.stats()
        if c0 is not None and getattr(self.coupler, "label_weight", None) is not None:
            stats["coupling/label_crossings"] = crossed = float((c0 != labels).float().mean())
            if crossed > 0.01 and not self._warned_crossings:
                self._warned_crossings = True
                rank_zero_warn(
                    f"conditional=True with label_weight={self.coupler.label_weight}: {crossed:.1%} of this batch's "
                    "pairs cross classes, and their noise takes the data's label, which skews each class's noise "
                    "towards its data (logged as coupling/label_crossings, this rank's pairs); raise label_weight "
                    "well above the squared distances between classes (the cost's scale), or use label_weight=None "
                    "(exact matching within classes)"
                )
        return Pair(x0, x1, labels, index, stats)

    def teardown(self, stage: str) -> None:
        if self._prefetcher is not None:  # end the worker; queued batches give their draws back
            self._prefetcher.close()
            self._prefetcher = None

    def on_exception(self, exception: BaseException) -> None:
        self.teardown("fit")  # Lightning skips teardown after an error: still end the worker thread

    # ---------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict[str, Any]:
        state = {} if self.online is None else {"online": self.online.state_dict()}
        if self._data_seed is not None:
            state["data_seed"] = self._data_seed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("data_seed")
        if saved is not None and self._data_seed is not None and saved != self._data_seed:
            drawn = " and ".join(self._seeded_draws())
            raise ValueError(
                f"the checkpoint's {drawn} {'was' if drawn == 'noise bank' else 'were'} drawn with the run seed {saved}, "
                f"this run's is {self._data_seed}: resume with the same seed (--seed_everything {saved}, or data.seed={saved})"
            )
        if self.online is not None and "online" in state_dict:
            bank = state_dict["online"].get("bank")
            if bank is not None and self._train is not None and bank.shape[0] != len(self._train):
                raise ValueError(
                    f"the checkpoint's online coupling bank holds {bank.shape[0]} points but the training set has "
                    f"{len(self._train)}; resume with the same target and toy_size"
                )
            self.online.load_state_dict(state_dict["online"])
