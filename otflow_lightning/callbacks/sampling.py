"""``SamplingCallback``: one-step samples from a fixed source batch, as PNG files and TensorBoard images."""

from __future__ import annotations

import os
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from ..metrics.fid import images_to_uint8
from .common import EvalCallback, batch_target, check_protocol, eval_steps, sample, source_noise

__all__ = ["SamplingCallback", "check_renderable", "render_samples"]


def _image_grid(x: Tensor, nrow: int) -> np.ndarray:
    """Tile ``(n, c, h, w)`` images in [-1, 1] into an ``(H, W, 3)`` uint8 array."""
    x = images_to_uint8(x).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    ncol = int(np.ceil(n / nrow))
    grid = torch.zeros(c, nrow * (h + 2), ncol * (w + 2), dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, k * (w + 2) + 1 : k * (w + 2) + 1 + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def check_renderable(shape: Sequence[int]) -> None:
    """``ValueError`` unless samples of one-sample ``shape`` can be drawn: points ``(d,)`` with
    ``d >= 2`` (their first two coordinates) or images ``(c, h, w)`` with 1 or 3 channels."""
    shape = tuple(shape)
    if (len(shape) == 1 and shape[0] >= 2) or (len(shape) == 3 and shape[0] in (1, 3)):
        return
    raise ValueError(
        f"cannot draw samples of shape {shape}: SamplingCallback draws points (d,) with d >= 2 (a scatter plot "
        "of the first two coordinates) or images (c, h, w) with 1 or 3 channels; leave it out for other data"
    )


def render_samples(samples: dict[str, Tensor], reference: Tensor | None = None, title: str = "") -> np.ndarray:
    """Render ``{label: samples}`` side by side: scatter plots of ``(n, d)`` points (the first two
    coordinates), grids of ``(n, c, h, w)`` images (at most 100).

    Returns an ``(H, W, 3)`` uint8 RGB array.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4), squeeze=False)
    for ax, (label, x) in zip(axes[0], samples.items()):
        x = x.detach().float().cpu()
        check_renderable(x.shape[1:])
        if x.ndim == 2:
            if reference is not None:
                ref = reference.detach().float().cpu()
                ax.scatter(ref[:, 0], ref[:, 1], s=1, c="lightgray", label="data")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", label="samples")
            ax.set_aspect("equal")
        else:
            ax.imshow(_image_grid(x[:100], nrow=int(np.ceil(np.sqrt(min(len(x), 100))))))
            ax.axis("off")
        ax.set_title(f"{title} {label}".strip())
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class SamplingCallback(EvalCallback):
    """One-step (and few-step) samples from a fixed source batch, as PNG files and TensorBoard images.

    The source batch is the same at every call (``seed``), so successive pictures differ only by
    the model. Points are drawn as scatter plots over the validation batch (the first two
    coordinates of ``(d,)`` points), images as grids (at
    most 100; a class-conditional module's images are labelled ``i % num_classes``, so with
    ``n_samples = num_classes ** 2`` each column of the grid is one class). Written by global rank
    0 to ``<log_dir>/<name>/step{global_step:07d}.png`` and, with a TensorBoard logger, as the image
    ``<name>``. Runs inside validation (see :class:`EvalCallback`),
    so an ``EMAWeightAveraging`` model is shown with its averaged weights.

    Args:
        n_samples: points or images to generate; default 2000 points, or 64 images
            (``num_classes ** 2``, at most 100, for a class-conditional module).
        steps: step count(s) to evaluate; default the module's ``supported_steps``, or ``[1]``.
        seed: seed of the fixed source batch.
        every_n_epochs: render every this many validation runs (default every run).
        every_n_steps: instead, render when at least this many training steps have passed.
        name: the folder of the PNG files and the TensorBoard image tag (default ``samples``); two
            sampling callbacks of one run need distinct names.
    """

    def __init__(
        self,
        n_samples: int | None = None,
        steps: Sequence[int] | int | None = None,
        seed: int = 4321,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        name: str = "samples",
    ) -> None:
        super().__init__(every_n_epochs, every_n_steps)
        if not isinstance(name, str) or not name or os.sep in name:
            raise ValueError(f"SamplingCallback: name must be a folder name (no {os.sep!r}), got {name!r}")
        self.n_samples, self.steps, self.seed, self.name = n_samples, steps, seed, name
        self.last_path: str | None = None
        self.last_samples: dict[int, Tensor] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_renderable(check_protocol(pl_module)[1])
        eval_steps(pl_module, self.steps)
        if sum(isinstance(cb, SamplingCallback) and cb.name == self.name for cb in trainer.callbacks) > 1:
            raise ValueError(f"two SamplingCallbacks write {self.name}/step*.png and the image {self.name!r}, the "
                             "second over the first: give each its own name (SamplingCallback(name=...))")

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch) -> dict[str, Tensor]:
        log_dir = trainer.log_dir  # a broadcast from rank 0: every rank must ask, or DDP hangs
        if not trainer.is_global_zero:
            return {}
        _, shape = check_protocol(pl_module)
        num_classes = getattr(pl_module, "num_classes", None)
        n = self.n_samples or (2000 if len(shape) == 1 else min(num_classes**2, 100) if num_classes else 64)
        x0 = next(source_noise(pl_module, 0, n, self.seed, chunk=n))
        self.last_samples = {s: sample(pl_module, x0, s, 0) for s in eval_steps(pl_module, self.steps)}
        labelled = {f"{s} step{'s' if s > 1 else ''}": x for s, x in self.last_samples.items()}
        try:  # the validation batch, drawn behind the samples; a batch of another form is left out
            reference = batch_target(batch) if len(shape) == 1 else None
        except TypeError:
            reference = None
        image = render_samples(labelled, reference=reference, title=f"step {trainer.global_step}")
        folder = os.path.join(log_dir or trainer.default_root_dir, self.name)
        os.makedirs(folder, exist_ok=True)
        self.last_path = os.path.join(folder, f"step{trainer.global_step:07d}.png")
        import matplotlib.pyplot as plt

        plt.imsave(self.last_path, image)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(self.name, image, trainer.global_step, dataformats="HWC")
        return {}
