"""Digits, OT-MF against independent pairs at the same CPU budget: one-step sample quality.

Trains ``configs/digits.yaml`` (or ``--config``) once per coupling (same seed, steps and network),
then scores 2,000 one-step samples (EMA weights) with a classifier trained on the real training
digits and with the exact W2^2 (POT) between 360 samples and the 360 test digits. A class-conditional
config (``configs/digits_cond.yaml``) generates the balanced labels ``i % 10`` and also reports the
share of samples the classifier assigns to the requested class.

    python benchmarks/digits.py --max_steps 1500
    python benchmarks/digits.py --config configs/digits_cond.yaml --max_steps 1500
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import ot
import torch
from sklearn.linear_model import LogisticRegression

from otflow_lightning.cli import main as otflow
from otflow_lightning.data import DigitsDataset


def w2_sq(a: torch.Tensor, b: torch.Tensor) -> float:
    cost = ot.dist(a.flatten(1).double().numpy(), b.flatten(1).double().numpy())
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--couplings", nargs="+", default=["exact", "independent"])
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="extra CLI overrides for every run, e.g. --model.init_args.guidance_scale=1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = DigitsDataset("train"), DigitsDataset("test")
    clf = LogisticRegression(max_iter=2000).fit(train.images.flatten(1).numpy(), train.labels.numpy())
    print(f"classifier accuracy on real test digits: {clf.score(test.images.flatten(1).numpy(), test.labels.numpy()):.3f}")
    print(f"W2^2 real train subset (360) vs test: {w2_sq(train.images[:360], test.images):.2f}")
    rows = []
    for coupling in args.couplings:
        start = time.time()
        with tempfile.TemporaryDirectory() as root:
            cli = otflow(["fit", "--config", args.config, f"--data.init_args.coupling={coupling}",
                          f"--trainer.max_steps={args.max_steps}", f"--trainer.default_root_dir={root}",
                          "--trainer.enable_progress_bar=false", *args.set])
        minutes = (time.time() - start) / 60
        module = cli.model.eval()  # EMAWeightAveraging copies the average into the model at the end
        samples = module.generate(2000, steps=1, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        prob = clf.predict_proba(samples.flatten(1).numpy())
        counts = np.bincount(prob.argmax(1), minlength=10) / len(prob)
        # generate() labels a class-conditional model's samples i % num_classes
        accuracy = (prob.argmax(1) == np.arange(len(prob)) % 10).mean() if module.num_classes else float("nan")
        rows.append((coupling, minutes, prob.max(1).mean(), (prob.max(1) > 0.9).mean(),
                     -(counts * np.log(counts + 1e-12)).sum() / np.log(10), w2_sq(samples[:360], test.images), accuracy))
    print(f"\n{args.config} {' '.join(args.set)}")
    print(f"{'coupling':12s} {'minutes':>8s} {'mean conf':>10s} {'conf>0.9':>9s} {'class entropy':>14s} {'W2^2 test':>10s} {'class acc':>10s}")
    for r in rows:
        print(f"{r[0]:12s} {r[1]:8.1f} {r[2]:10.3f} {r[3]:9.3f} {r[4]:14.3f} {r[5]:10.2f} {r[6]:10.3f}")


if __name__ == "__main__":
    main()
