"""One-step FID during training on digits, OT-MF with exact OT against independent pairs (CPU).

The image issue's GPU target is a short MNIST / CIFAR-10 run showing one-step FID falling; this is
the same measurement on the embedded digits, runnable anywhere: ``configs/digits.yaml`` trained
once per coupling (same seed, steps and network), with ``FIDCallback`` evaluating the EMA weights
every ``--every`` steps. Inception features mean nothing on 8x8 digits (and need weights downloaded),
so the features are the 64-d penultimate layer of a small MLP classifier trained here on the real
training digits (``DigitsFeatures``; FID's protocol otherwise unchanged: uint8 quantisation,
torchmetrics' Frechet distance). Generated: ``--n_samples`` one-step samples; real: the 1,437
training digits. The real-vs-real line is the 360 test digits against the training digits.

    python benchmarks/digits_fid.py --max_steps 1500 --every 250
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
from lightning.pytorch import Callback
from torch import nn

from otflow_lightning.callbacks import FIDCallback
from otflow_lightning.cli import main as otflow
from otflow_lightning.data import DigitsDataset
from otflow_lightning.metrics.fid import build_fid, images_to_uint8


class DigitsFeatures(nn.Module):
    """uint8 digits ``(n, 1, 8, 8)`` -> ``(n, 64)``: the penultimate layer of a small MLP classifier."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float() / 127.5 - 1)

    def fit(self, images: torch.Tensor, labels: torch.Tensor, steps: int = 2000) -> float:
        """Train on ``images`` in [-1, 1]; return the training accuracy."""
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        x = images_to_uint8(images)
        for _ in range(steps):
            i = torch.randint(0, len(x), (128,), generator=gen)
            loss = nn.functional.cross_entropy(self.head(self(x[i])), labels[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.requires_grad_(False).eval()
        return float((self.head(self(x)).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--n_samples", type=int, default=1000)
    parser.add_argument("--couplings", nargs="+", default=["exact", "independent"])
    parser.add_argument("--config", default="configs/digits.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    train, test = DigitsDataset("train"), DigitsDataset("test")
    torch.manual_seed(0)  # the feature net's initialisation
    features = DigitsFeatures()
    print(f"feature classifier: training accuracy {features.fit(train.images, train.labels):.3f}, "
          f"test accuracy {float((features.head(features(images_to_uint8(test.images))).argmax(1) == test.labels).float().mean()):.3f}")
    floor = build_fid(features, input_shape=(1, 8, 8))
    floor.update(images_to_uint8(train.images), real=True)
    floor.update(images_to_uint8(test.images), real=False)
    print(f"FID real test (360) vs real train (1437): {float(floor.compute()):.2f}")

    curves, minutes = {}, {}
    for coupling in args.couplings:
        with tempfile.TemporaryDirectory() as root:
            cli = otflow(["--config", args.config, f"--data.init_args.coupling={coupling}",
                          f"--trainer.max_steps={args.max_steps}", f"--trainer.val_check_interval={args.every}",
                          f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
                          "--trainer.enable_model_summary=false"], run=False)
            fid = FIDCallback(real=train, n_samples=args.n_samples, feature=features, steps=[1], cache_dir=root,
                              dataset_name="digits-train")
            cli.trainer.callbacks.append(fid)
            seen = {}

            class Record(Callback):  # read the logged FID after each validation
                def on_validation_end(self, trainer, pl_module):
                    if "val/fid_1step" in trainer.callback_metrics:
                        seen[trainer.global_step] = float(trainer.callback_metrics["val/fid_1step"])

            cli.trainer.callbacks.append(Record())
            start = time.time()
            cli.trainer.fit(cli.model, cli.datamodule)
            minutes[coupling] = (time.time() - start) / 60
            curves[coupling] = seen
    steps = sorted(set().union(*[c.keys() for c in curves.values()]))
    print(f"\nOne-step FID (digits features, {args.n_samples} generated vs 1437 real), {args.config}")
    print("| step | " + " | ".join(args.couplings) + " |")
    print("|---" * (len(args.couplings) + 1) + "|")
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{curves[c].get(s, float('nan')):.2f}" for c in args.couplings) + " |")
    print("| minutes | " + " | ".join(f"{minutes[c]:.1f}" for c in args.couplings) + " |")


if __name__ == "__main__":
    main()
