"""``SamplingCallback``: one-step samples from a fixed source batch, as PNG files and TensorBoard images."""

from __future__ import annotations

import os
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from .common import batch_target, eval_steps, fixed_source

__all__ = ["SamplingCallback", "render_samples"]


def _image_grid(x: Tensor, nrow: int) -> np.ndarray:
    """Tile ``(n, c, h, w)`` images in [-1, 1] into an ``(H, W, 3)`` uint8 array."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    ncol = int(np.ceil(n / nrow))
    grid = torch.zeros(c, nrow * (h + 2), ncol * (w + 2), dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, k * (w + 2) + 1 : k * (w + 2) + 1 + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def render_samples(samples: dict[str, Tensor], reference: Tensor | None = None, title: str = "") -> np.ndarray:
    """Render ``{label: samples}`` side by side: scatter plots for 2D points, grids for images.

    Returns an ``(H, W, 3)`` uint8 RGB array.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4), squeeze=False)
    for ax, (label, x) in zip(axes[0], samples.items()):
        x = x.detach().float().cpu()
        if x.ndim == 2 and x.shape[1] == 2:
            if reference is not None:
                ref = reference.detach().float().cpu()
                ax.scatter(ref[:, 0], ref[:, 1], s=1, c="lightgray", label="data")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", label="samples")
            ax.set_aspect("equal")
        elif x.ndim == 4:
            ax.imshow(_image_grid(x[:64], nrow=int(np.ceil(np.sqrt(min(len(x), 64))))))
            ax.axis("off")
        else:
            raise ValueError(f"cannot render samples of shape {tuple(x.shape)}: need (n, 2) points or (n, c, h, w) images")
        ax.set_title(f"{title} {label}".strip())
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class SamplingCallback(pl.Callback):
    """Every ``every_n_epochs`` validation runs, map a fixed source batch at each step count and write
    ``samples/step{global_step:07d}.png`` in the run folder plus a TensorBoard image ``samples``.

    Generation happens inside the validation epoch, so an ``EMAWeightAveraging`` model is shown
    with its averaged weights.

    Args:
        n_samples: points (2D) or images (at most 64 are drawn) to generate.
        steps: step counts; default the module's supported ones, or ``[1]``.
        every_n_epochs: render every this many validation runs.
        seed: seed of the fixed source batch (the same noise each time, so progress is visible).
    """

    def __init__(self, n_samples: int = 2000, steps: Sequence[int] | None = None, every_n_epochs: int = 1, seed: int = 4321) -> None:
        self.n_samples, self.steps, self.every_n_epochs, self.seed = n_samples, steps, every_n_epochs, seed
        self._calls = 0
        self.last_path: str | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        self._calls += 1
        if (self._calls - 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        x0 = fixed_source(pl_module, self.n_samples, self.seed)
        samples = {f"{s} step{'s' if s > 1 else ''}": pl_module.sample(x0, steps=s) for s in eval_steps(pl_module, self.steps)}
        image = render_samples(samples, reference=batch_target(batch), title=f"step {trainer.global_step}")
        folder = os.path.join(trainer.log_dir or trainer.default_root_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        self.last_path = os.path.join(folder, f"step{trainer.global_step:07d}.png")
        import matplotlib.pyplot as plt

        plt.imsave(self.last_path, image)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("samples", image, trainer.global_step, dataformats="HWC")
