"""What the one-step modules share: the source, ``generate``, optimiser and logging."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import numbers
import operator
import os
import sys
from typing import Iterator, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
import torch
from torch import Tensor, nn

from ..data.datamodule import OTPairDataModule, Pair
from ..data.sources import check_source, draw_source
from ..nets import ResidualFlowMap, TimeMLP, UNet
from ..utils import rank_generator

__all__ = ["OneStepModule", "draw_times", "check_time_dist", "hparams_ignore"]

TIME_DISTS = ("logit_normal", "uniform")
LR_SCHEDULES = ("constant", "cosine")


def check_time_dist(time_dist: str, time_std: float = 1.0) -> None:
    """Raise ``ValueError`` unless ``time_dist`` is a known time distribution and ``time_std > 0``."""
    if time_dist not in TIME_DISTS:
        raise ValueError(f"time_dist must be one of {TIME_DISTS}, got {time_dist!r}")
    if not time_std > 0:
        raise ValueError(f"time_std must be > 0, got {time_std}")


def draw_times(shape: tuple[int, ...], time_dist: str, mean: float, std: float, generator, device) -> Tensor:
    """Times in [0, 1] of ``shape``: ``uniform``, or ``logit_normal`` = ``sigmoid(N(mean, std^2))``."""
    if time_dist == "uniform":
        return torch.rand(shape, device=device, generator=generator)
    return torch.sigmoid(torch.randn(shape, device=device, generator=generator) * std + mean)


def hparams_ignore() -> list[str]:
    """What a module's ``save_hyperparameters`` leaves out: ``net`` when it was built in Python (an
    ``nn.Module``, whose weights the checkpoint holds; reload with ``load_from_checkpoint(path,
    net=...)``), nothing under the CLI, where ``net`` is its config (``class_path`` and ``init_args``)
    and ``load_from_checkpoint(path)`` rebuilds it."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without the CLI's given hyperparameters
        return ["net"]
    return [] if _given_hyperparameters.get() is not None else ["net"]


#: torch's messages for inputs a layer was not built for (:meth:`OneStepModule.check_net` names ``data_shape`` for them)
SHAPE_ERRORS = ("mat1 and mat2", "size of tensor", "Expected input", "expected input", "shape", "channels")


def check_net_output(out: Tensor, x: Tensor) -> None:
    """``ValueError`` unless the net's output ``out`` has the shape of its input ``x``: ``(n, *data_shape)``."""
    if out.shape != x.shape:
        raise ValueError(f"the net returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; its "
                         "output must have the input's shape (n, *data_shape)")


def running_batch_norm(net: nn.Module) -> nn.Module | None:
    """The first batch-norm layer of ``net`` that tracks running statistics, or ``None``."""
    norms = (m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats)
    return next(norms, None)


def check_data_shape(data_shape: Sequence[int]) -> None:
    """``ValueError`` unless ``data_shape`` is a sequence of positive sizes."""
    if isinstance(data_shape, (int, str)) or not all(isinstance(s, numbers.Integral) and s >= 1 for s in data_shape):
        raise ValueError(f"data_shape must be a list of positive sizes, one sample's shape (e.g. [2] or [3, 32, 32]), "
                         f"got {data_shape!r}")


def check_vector_data(data_shape: Sequence[int], net_hint: str) -> None:
    """The default nets are vector MLPs: raise ``ValueError`` for image-shaped ``data_shape`` without a net."""
    check_data_shape(data_shape)
    if len(data_shape) != 1:
        raise ValueError(f"data_shape={tuple(data_shape)} needs a net (the default TimeMLP takes vectors); pass net={net_hint}")


def check_net_labels(net: nn.Module, num_classes: int | None) -> None:
    """A class-conditional module needs a net that takes ``labels=`` and has the same null label ``num_classes``."""
    if num_classes is None:
        return
    params = inspect.signature(net.forward).parameters.values()
    if not any(p.name == "labels" or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(
            f"num_classes={num_classes} needs a net that takes labels= (TimeMLP, UNet, or a ResidualFlowMap around one, "
            f"built with num_classes={num_classes}); {type(net).__name__}.forward does not"
        )
    inner = next((m for m in net.modules() if hasattr(m, "num_classes")), None)
    if inner is not None and inner.num_classes != num_classes:
        raise ValueError(
            f"the module has num_classes={num_classes} but its net's {type(inner).__name__} was built with "
            f"num_classes={inner.num_classes}; build both with the same number (label num_classes is the null class)"
        )


def data_shape_fix(module: nn.Module, data_shape: Sequence[int]) -> str:
    """How to fix a ``model.data_shape`` that differs from the data's ``data_shape``: set it, and, for
    image data on a vector model, build an image net (the module's ``image_net_hint``, if it has one)."""
    shape = tuple(int(s) for s in data_shape)
    fix = f"; set model.data_shape: {list(shape)}"
    hint = getattr(module, "image_net_hint", None)
    if len(shape) == 3 and len(getattr(module, "data_shape", ())) != 3 and hint:
        fix += " and an image net, e.g. " + hint.format(c=shape[0])
    return fix


def check_net_shape(net: nn.Module, data_shape: Sequence[int]) -> None:
    """``ValueError`` when ``net`` (or the net a ``ResidualFlowMap`` wraps) is the package's
    ``TimeMLP`` of another ``dim`` than vector ``data_shape``, or its ``UNet`` of other ``in_channels``
    than image ``data_shape``. Other nets are the user's to check."""
    shape = tuple(int(s) for s in data_shape)
    m = net.net if isinstance(net, ResidualFlowMap) else net
    if isinstance(m, TimeMLP) and len(shape) == 1 and m.dim != shape[0]:
        raise ValueError(f"data_shape={shape} but the net's TimeMLP was built with dim={m.dim}; build it with dim={shape[0]}")
    if isinstance(m, UNet) and len(shape) == 3 and m.in_channels != shape[0]:
        raise ValueError(f"data_shape={shape} has {shape[0]} channels but the net's UNet was built with "
                         f"in_channels={m.in_channels}; build it with in_channels={shape[0]}")


def in_dtype_of(z: Tensor, x) -> Tensor:
    """``z`` in the dtype of the caller's input ``x`` (a tensor or an array: ``torch.as_tensor(x).dtype``,
    so a float64 numpy array gives float64) when that is a float dtype (samples come back as they
    went in), else as computed."""
    dtype = x.dtype if torch.is_tensor(x) else torch.as_tensor(x).dtype
    return z.to(dtype) if dtype.is_floating_point else z


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode (no dropout), then restore each one's own mode.

    The restore goes through ``module.train(mode)`` (so an override of ``train()``, e.g. one that
    keeps frozen batch-norm layers in eval mode, runs as usual), then sets back any submodule whose
    flag still differs from what it was.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        module.train(modes[0][1])
        for m, training in modes[1:]:
            if m.training != training:
                m.training = training


#: where a checkpoint records the class of the module that saved it (LightningCLI records it only for
#: the modules it builds, as ``hyper_parameters["_class_path"]``)
CLASS_KEY = "otflow_module_class"


def saved_class(checkpoint: dict) -> str | None:
    """The dotted path of the module class a checkpoint was saved from, where it says."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams.get("_class_path") or checkpoint.get(CLASS_KEY)


def read_checkpoint(path, what: str) -> dict | None:
    """The checkpoint in ``path`` (a file name, or a seekable file object, left where it was), read on
    the CPU by torch's weights-only loader (memory-mapped where it can: the tensors are not read);
    ``None`` where there is no such file. ``ValueError`` naming ``what`` for a file that is no
    Lightning checkpoint; torch's own error for one holding types that loader refuses (it names them)."""
    stream = hasattr(path, "read") and hasattr(path, "seek")
    if not stream and not (isinstance(path, (str, os.PathLike)) and os.path.isfile(path)):
        return None
    start = path.tell() if stream else None
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=not stream)
        except RuntimeError as err:  # a file of torch's legacy format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises KeyError, EOFError, RuntimeError or UnpicklingError on a bad file
        if "Unsupported global" in str(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else "empty"
        raise ValueError(f"{what} is not a readable checkpoint ({type(err).__name__}: {first}): a truncated file (a "
                         "job killed while saving) or not a torch file; give an earlier checkpoint of the run") from None
    finally:
        if stream:
            path.seek(start)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{what} holds a torch {type(checkpoint).__name__} without a state_dict, not a Lightning "
                         "checkpoint; give one that Trainer.save_checkpoint or ModelCheckpoint wrote")
    return checkpoint


def checkpoint_class(checkpoint: dict) -> type | None:
    """The module class a checkpoint was saved from, among the modules already imported (a checkpoint
    does not get to import code); ``None`` where it does not say, its module is not imported, or it
    was a script's (``__main__``: another script's class of the same name may be unrelated)."""
    module, _, name = (saved_class(checkpoint) or "").rpartition(".")
    found = getattr(sys.modules.get(module), name, None) if module and module != "__main__" else None
    return found if isinstance(found, type) else None


def related_classes(a, b) -> bool:
    """Whether ``a`` and ``b`` are classes and one is the other or a subclass of it."""
    return isinstance(a, type) and isinstance(b, type) and (issubclass(a, b) or issubclass(b, a))


def check_checkpoint_class(checkpoint: dict, cls: type, path) -> type | None:
    """The module class the checkpoint at ``path`` was saved from (:func:`checkpoint_class`);
    ``ValueError`` if it is neither ``cls`` nor related to it (a subclass or a parent; a class not
    imported is not checked)."""
    saved = checkpoint_class(checkpoint)
    if saved is not None and not related_classes(saved, cls):
        raise ValueError(f"{path} holds a {saved_class(checkpoint)} checkpoint, not a {cls.__module__}."
                         f"{cls.__qualname__} one; load it with {saved.__name__}.load_from_checkpoint, or give a "
                         f"checkpoint of a {cls.__name__} run")
    return saved


class OneStepModule(pl.LightningModule):
    r"""Base of OT-MF and OT-NFM: a generator ``source -> target`` trained on OT-paired batches.

    Subclasses implement :meth:`loss` (``Pair -> (loss, logs)``) and :meth:`sample`, and set
    :attr:`supported_steps`; optionally :meth:`trial_output`, the net's output that is checked before
    training, and :meth:`as_pair`, which turns a batch of another form than ``Pair`` into one.
    Callbacks depend only on ``sample(x0, steps)`` and ``generate``.

    **Class-conditional generation** (``num_classes``): the net gets the batch's labels (a net built
    with ``num_classes``: :class:`~otflow_lightning.nets.TimeMLP`, :class:`~otflow_lightning.nets.UNet`),
    a ``label_dropout`` share of them replaced by the null label ``num_classes`` so one net is also
    the unconditional model. Train it with ``OTPairDataModule(conditional=True)``: noise gets its
    label before matching (C2OT), as at sampling time. **Classifier-free guidance is folded into
    training**: with ``guidance_scale`` :math:`\omega \ne 1` the regression target :math:`y` of a
    labelled row becomes :math:`\mathrm{sg}(f_\varnothing) + \omega\,(y - \mathrm{sg}(f_\varnothing))`,
    where :math:`f_\varnothing` is the net's own unconditional prediction of the same quantity, so
    the conditional net learns the guided field and sampling stays one call (MeanFlow's CFG; the
    subclasses say what :math:`y` and :math:`f_\varnothing` are).

    Args:
        net: the network (see the subclass for its call signature).
        source: the source distribution, as the DataModule names it (``gaussian``, a 2D toy, or a
            source of your own in :data:`~otflow_lightning.data.SOURCES` or named by import path).
        data_shape: shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up.
        lr_schedule: ``constant`` after the warm-up, or ``cosine``: decay to 0 at the end of training
            (``trainer.estimated_stepping_batches``).
        num_classes: number of classes for class-conditional generation (``None``: unconditional).
        label_dropout: share of training labels replaced by the null label (needed for guidance).
        guidance_scale: classifier-free guidance scale ``omega`` folded into training (1: none).
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
        lr_schedule: str = "constant",
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_data_shape(data_shape)
        for name, value, ok, want in (("lr", lr, lr > 0, "> 0"),
                                      ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
                                      ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"{name} must be {want}, got {value}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (AdamW's), got {betas!r}")
        if not guidance_scale > 0:
            raise ValueError(f"guidance_scale must be > 0 (1: no guidance), got {guidance_scale}")
        check_source(source, data_shape)
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None (unconditional), got {num_classes}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if guidance_scale != 1.0 and (num_classes is None or label_dropout == 0.0):
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional model trained with label dropout: "
                "set num_classes and label_dropout > 0 (e.g. 0.1), or guidance_scale=1"
            )
        check_net_labels(net, num_classes)
        check_net_shape(net, data_shape)
        self.num_classes, self.label_dropout, self.guidance_scale = num_classes, label_dropout, guidance_scale
        self._labels_checked = False
        self.net = net
        self.source = source
        self.data_shape = tuple(int(s) for s in data_shape)
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        self.lr_schedule = lr_schedule
        self._time_generator: torch.Generator | None = None

    # ---------------------------------------------------------------- protocol
    def sample(self, x0: Tensor, steps: int = 1, labels: Tensor | None = None) -> Tensor:
        """Map source samples ``x0`` ``(n, *data_shape)`` to target samples of the same shape.

        ``labels`` ``(n,)``: classes to generate (class-conditional modules); ``None`` is the null
        label, i.e. the unconditional model.
        """
        raise NotImplementedError(f"{type(self).__name__} implements no sample(x0, steps): a subclass of "
                                  "OneStepModule must (OTMeanFlow and OTNeuralFlowMatching do)")

    def check_steps(self, steps: int) -> None:
        """Raise ``ValueError`` if :meth:`sample` does not support ``steps``."""
        if steps < 1 or (self.supported_steps is not None and steps not in self.supported_steps):
            allowed = "any positive number" if self.supported_steps is None else list(self.supported_steps)
            raise ValueError(f"{type(self).__name__}.sample does not support steps={steps}; allowed: {allowed}")

    def sample_input(self, x0, steps: int, labels) -> tuple[Tensor, Tensor | None]:
        """What :meth:`sample` maps: ``x0`` ``(n, *data_shape)`` (a tensor or an array) on the module's
        device and in its dtype, and the checked ``labels``; ``ValueError`` naming the bad argument.
        :meth:`sample` runs the net in eval mode (:func:`eval_mode`) and returns ``x0``'s float dtype
        (:func:`in_dtype_of`; of an array too, e.g. float64 for a float64 numpy array)."""
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.check_steps(steps)
        z = self.as_batch(x0, "x0")
        return z, self.check_labels(labels, z.shape[0])

    def as_batch(self, x, name: str) -> Tensor:
        """``x`` (a tensor or an array) checked to be ``(n, *data_shape)``, on the module's device and
        in its dtype; ``ValueError`` naming ``name`` otherwise."""
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"{name} must have shape (n, *data_shape) = (n, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def generate(
        self, n: int, steps: int = 1, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Draw ``n`` source samples on the module's device and map them: ``(n, *data_shape)``.

        A class-conditional module generates ``labels`` ``(n,)``, by default the balanced sequence
        ``0, 1, ..., num_classes - 1, 0, 1, ...``.
        """
        try:  # an int, or an integer 0-d tensor / array
            count = -1 if isinstance(n, bool) else operator.index(n)
        except TypeError:
            count = -1
        if count < 0:
            raise ValueError(f"n must be a number of samples (an integer >= 0), got {n!r}")
        n = count
        x0 = draw_source(self.source, n, self.data_shape, generator=generator, device=self.device).to(self.dtype)
        if labels is None and self.num_classes is not None:
            labels = torch.arange(n, device=self.device) % self.num_classes
        return self.sample(x0, steps=steps, labels=labels)

    # ---------------------------------------------------------------- class conditioning
    def check_labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        """``labels`` as a long tensor on the module's device, checked against ``num_classes``."""
        if labels is None:
            return None
        if self.num_classes is None:
            raise ValueError(f"labels were given but {type(self).__name__} is unconditional; build it with num_classes")
        labels = torch.as_tensor(labels, device=self.device)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), one per sample, got {tuple(labels.shape)}")
        if n and not 0 <= int(labels.min()) <= int(labels.max()) <= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}] ({self.num_classes}: the null label, unconditional), "
                f"got [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels.long()

    def condition(self, pair: Pair) -> Tensor | None:
        """Labels the net sees for a batch: ``None`` when unconditional; else ``pair.labels`` with
        (in training) a ``label_dropout`` share replaced by the null label ``num_classes``."""
        if self.num_classes is None:
            return None
        if pair.labels is None:
            raise ValueError(
                f"{type(self).__name__} has num_classes={self.num_classes} but the batch has no labels: train on a "
                "labelled dataset ((x, label) items) with data.conditional=true"
            )
        if pair.labels.is_floating_point() or pair.labels.dtype == torch.bool:
            raise ValueError(f"batch labels must be integer class indices, got dtype {pair.labels.dtype}: give the "
                             "dataset (x, label) items with integer labels (e.g. torch.long)")
        labels = pair.labels.long()
        if not self._labels_checked:  # once: a range check costs a host sync
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"batch labels span [{lo}, {hi}] but num_classes={self.num_classes}; set model.num_classes > {hi}")
            self._labels_checked = True
        if self.training and self.label_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device, generator=self.time_generator()) < self.label_dropout
            labels = labels.masked_fill(drop, self.num_classes)
        return labels

    def guided(self, target: Tensor, unconditional: Tensor, labels: Tensor | None) -> Tensor:
        """Folded guidance: ``unconditional + guidance_scale * (target - unconditional)`` on labelled
        rows, ``target`` on null-label rows; all ``(n, ...)``, ``unconditional`` without gradient."""
        if labels is None or self.guidance_scale == 1.0:
            return target
        guided = unconditional + self.guidance_scale * (target - unconditional)
        return torch.where(self.labelled(labels, target.ndim), guided, target)

    def labelled(self, labels: Tensor, ndim: int) -> Tensor:
        """Boolean mask of the rows with a class (not the null label), shaped to broadcast over ``ndim`` dims."""
        return (labels != self.num_classes).reshape((-1,) + (1,) * (ndim - 1))

    def null_labels(self, n: int) -> Tensor:
        """``(n,)`` null labels (the unconditional model of a class-conditional net)."""
        return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)

    def loss(self, pair: Pair) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss of a paired batch and extra scalars to log."""
        raise NotImplementedError(f"{type(self).__name__} implements no loss(pair): a subclass of OneStepModule must "
                                  "(OTMeanFlow and OTNeuralFlowMatching do)")

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
        if isinstance(dm, OTPairDataModule) and type(dm).draw_source is not OTPairDataModule.draw_source:
            rank_zero_warn(
                f"{type(dm).__name__} overrides draw_source: training pairs use it, but generate() and the evaluation "
                f"callbacks draw from the model's source {self.source!r}. To use one source everywhere, register it "
                "(otflow_lightning.data.register_source) and name it as data.source"
            )
        conditional = getattr(dm, "conditional", None)
        if conditional is False and self.num_classes is not None and getattr(getattr(dm, "coupler", None), "method", None) != "independent":
            raise ValueError(
                f"mismatched config: model.num_classes={self.num_classes} but data.conditional is false, so noise would "
                "inherit its OT partner's label (the train/test skew of plain OT); set data.conditional=true"
            )
        if conditional and self.num_classes is None:
            raise ValueError("mismatched config: data.conditional=true pairs noise within classes but the model is "
                             "unconditional; set model.num_classes (and a net built with num_classes)")
        dm_shape = getattr(dm, "data_shape", None)
        if dm_shape is not None and tuple(dm_shape) != self.data_shape:
            raise ValueError(f"mismatched config: model.data_shape={self.data_shape} but the data have shape "
                             f"{tuple(dm_shape)}{data_shape_fix(self, dm_shape)}")
        self.check_net()

    def check_net(self) -> tuple[Tensor, Tensor] | None:
        """Before training, one eval-mode call of the net (:meth:`trial_output`) on four random inputs
        of ``data_shape`` (from a local generator: the run's random stream is untouched; eager even
        for a compiled net). A shape error of the net's own, such as a layer built for another input
        size, is raised naming ``data_shape``; an output of another shape as :func:`check_net_output`
        does. Returns ``(inputs, output)``, or ``None`` where the subclass defines no trial."""
        x = torch.randn(4, *self.data_shape, generator=torch.Generator().manual_seed(0)).to(self.device, self.dtype)
        labels = None if self.num_classes is None else self.null_labels(4)
        stance = getattr(torch.compiler, "set_stance", None)  # no second compile of a compiled net for 4 samples
        try:
            with torch.no_grad(), eval_mode(self), stance("force_eager") if stance else contextlib.nullcontext():
                out = self.trial_output(x, labels)
        except RuntimeError as err:
            if not any(s in str(err) for s in SHAPE_ERRORS):
                raise
            raise ValueError(f"the net ({type(self.net).__name__}) fails on inputs of data_shape={self.data_shape}: "
                             f"{err}; build it for inputs of shape (n, *data_shape)") from err
        if out is None:
            return None
        check_net_output(out, x)
        return x, out

    def trial_output(self, x: Tensor, labels: Tensor | None) -> Tensor | None:
        """The net's output for inputs ``x`` ``(n, *data_shape)`` at time 0, which :meth:`check_net`
        checks before training; ``None`` (the default for subclasses): no check."""
        return None

    def as_pair(self, batch) -> Pair:
        """The :class:`~otflow_lightning.data.Pair` of a dataloader batch: the hook for batches of
        another form (your own DataModule yielding, e.g., ``(x0, x1)`` tuples: return ``Pair(x0, x1)``).
        ``training_step``, ``validation_step``, ``test_step`` and ``predict_step`` all go through it;
        the pair is then cast to the module's dtype. The default takes ``Pair`` batches only
        (:class:`~otflow_lightning.OTPairDataModule`'s) and raises ``TypeError`` for others."""
        if not isinstance(batch, Pair):
            raise TypeError(
                f"{type(self).__name__} expects a Pair batch from OTPairDataModule (got {type(batch).__name__}); "
                "train it with otflow_lightning.OTPairDataModule, build Pair(x0, x1) yourself, or override "
                "as_pair(batch) to convert your batches"
            )
        return batch

    def _pair(self, batch) -> Pair:
        """:meth:`as_pair`, checked and in the module's dtype."""
        pair = self.as_pair(batch)
        name = f"{type(self).__name__}.as_pair"
        if not isinstance(pair, Pair):
            raise TypeError(f"{name} returned a {type(pair).__name__}; it must return a Pair")
        if not (torch.is_tensor(pair.x0) and torch.is_tensor(pair.x1)):
            raise TypeError(f"{name} returned a Pair of {type(pair.x0).__name__} and {type(pair.x1).__name__}; x0 and "
                            "x1 must be tensors")
        n = pair.x0.shape[0] if pair.x0.ndim else 0
        shape = (n, *self.data_shape)
        if tuple(pair.x0.shape) != shape or tuple(pair.x1.shape) != shape:
            raise ValueError(f"{name} returned x0 {tuple(pair.x0.shape)} and x1 {tuple(pair.x1.shape)}; both must be "
                             f"(n, *data_shape) = (n, {', '.join(map(str, self.data_shape))})")
        if pair.labels is not None and tuple(pair.labels.shape) != (n,):
            raise ValueError(f"{name} returned labels {tuple(pair.labels.shape)} for {n} pairs; they must be ({n},)")
        if pair.x0.dtype != self.dtype or pair.x1.dtype != self.dtype:  # e.g. float64 data from numpy
            pair = dataclasses.replace(pair, x0=pair.x0.to(self.dtype), x1=pair.x1.to(self.dtype))
        return pair

    def training_step(self, batch: Pair, batch_idx: int) -> Tensor:
        pair = self._pair(batch)
        loss, logs = self.loss(pair)
        if not torch.isfinite(loss):
            bad = [name for name in ("x0", "x1") if not torch.isfinite(getattr(pair, name)).all()]
            if bad:
                cause = f"the batch's {' and '.join(bad)} hold NaN/Inf; check the data"
            elif self.dtype == torch.float16:
                cause = ("the weights are float16 (precision 16-true), where AdamW's eps underflows and the first "
                         "updates overflow; train with precision bf16-mixed, 16-mixed, bf16-true or 32")
            elif not all(torch.isfinite(p).all() for p in self.parameters()):
                cause = "the batch is finite but the weights are not (the previous update diverged): lower lr"
            else:
                cause = "the batch and the weights are finite: lower lr"
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}: {cause}")
        n = len(pair)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=n)
        if pair.stats:
            self.log_dict(pair.stats, batch_size=n)
        return loss

    def validation_step(self, batch: Pair, batch_idx: int) -> None:
        pair = self._pair(batch)
        loss, _ = self.loss(pair)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(pair))

    def test_step(self, batch: Pair, batch_idx: int) -> None:
        pair = self._pair(batch)
        loss, _ = self.loss(pair)
        self.log("test/loss", loss, sync_dist=True, batch_size=len(pair))

    def predict_step(self, batch: Pair, batch_idx: int) -> Tensor:
        """One-step samples from the batch's source draws (of the batch's labels, if conditional): ``(n, *data_shape)``."""
        pair = self._pair(batch)
        return self.sample(pair.x0, steps=1, labels=None if self.num_classes is None else pair.labels)

    @_restricted_classmethod  # Lightning's: refused on an instance (it would return a new module)
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, checking the file first (:func:`read_checkpoint`): a
        file that is no checkpoint, or a checkpoint of another module class (an OT-MF checkpoint
        loaded as OT-NFM), is refused by name (Lightning's own errors show torch internals, or blame
        an import or the net); a checkpoint of a subclass is loaded as that subclass (Lightning built
        the class it was called on, dropping the subclass's settings and overrides)."""
        try:
            checkpoint = read_checkpoint(checkpoint_path, str(checkpoint_path))
        except ValueError:
            raise
        except Exception:  # types torch's weights-only loader refuses: Lightning's own loading decides
            checkpoint = None
        if checkpoint is not None:
            saved = check_checkpoint_class(checkpoint, cls, checkpoint_path)
            if saved is not None and saved is not cls and issubclass(saved, cls):
                return saved.load_from_checkpoint(checkpoint_path, *args, **kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Warn when the checkpoint's net differs from this module's and the checkpoint cannot rebuild
        it (a net built in Python is not among its hyperparameters): the usual cause is
        ``load_from_checkpoint(path)`` without ``net=``, and the state-dict error that follows does not say so.
        Nets with uninitialised (lazy) parameters are not compared. A checkpoint of another module
        class is refused (:func:`check_checkpoint_class`)."""
        check_checkpoint_class(checkpoint, type(self), "the checkpoint")
        ours = self.state_dict()
        if any(nn.parameter.is_lazy(v) for v in ours.values()) or "net" in checkpoint.get("hyper_parameters", {}):
            return
        saved = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
        if saved and saved != {k: tuple(v.shape) for k, v in ours.items() if k.startswith("net.")}:
            rank_zero_warn(
                f"this checkpoint's net was built in Python and is not the {type(self.net).__name__} this module was "
                f"built with; build the module with the same net: {type(self).__name__}.load_from_checkpoint(path, "
                "net=<the same network>), the same net= when resuming in Python, or the config's model.net under otflow"
            )

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0 and self.lr_schedule == "constant":
            return opt
        warm = self.warmup_steps
        total = self.trainer.estimated_stepping_batches if self.lr_schedule == "cosine" else 0
        if self.lr_schedule == "cosine" and not 0 < total < float("inf"):
            raise ValueError("lr_schedule='cosine' needs a finite training length: set trainer.max_steps or max_epochs")
        total = int(total)

        def factor(step: int) -> float:
            scale = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
            if total:
                scale *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
            return scale

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

