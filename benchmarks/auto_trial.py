"""How well ``OTCoupler("auto")``'s trial predicts ``multiscale``'s quality on the whole batch.

``auto`` switches a CPU batch of n >= 4096 to ``multiscale`` when ``multiscale_trial`` (multiscale
and the exact solver on 2048 random pairs of the batch, with as many clusters as on the whole batch)
closes at least 95.5% of the gap. This prints, for batches between unclustered and well clustered
(Gaussian clouds, mixtures of k clusters with centres of scale s and noise 0.3, digit images with
Gaussian noise of scale sigma, noisy data on an r-dimensional subspace), the trial's gap, the
whole batch's gap under ``multiscale``, the trial's time (paid once per batch shape) and what
``auto`` chooses. The source is N(0, I).

    python benchmarks/auto_trial.py --n 4096 --d 784 3072 --seed 0     # and --seed 1, held out
"""

from __future__ import annotations

import argparse
import time

import torch

from coupling import image_batch
from otflow_lightning.ot import OTCoupler, auto_method, pair_cost
from otflow_lightning.ot.coupler import multiscale_trial


def batches(n: int, d: int, g: torch.Generator):
    """``(name, x1)`` pairs from unclustered to well clustered."""
    yield "gaussian", torch.randn(n, d, generator=g)
    for k, s in ((8, 0.1), (8, 0.2), (8, 3.0), (16, 0.3), (16, 0.5), (32, 1.0), (64, 1.0)):
        centres = s * torch.randn(k, d, generator=g)
        yield f"mixture k={k} s={s}", centres[torch.randint(0, k, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    if d in (784, 3072):
        images = image_batch(n, d, g)
        for sigma in (0.0, 0.3, 0.6):
            yield f"digits sigma={sigma}", images + sigma * torch.randn(n, d, generator=g)
    for r in (4, 10, 30):
        basis = torch.randn(r, d, generator=g) / r**0.5
        yield f"subspace r={r}", torch.randn(n, r, generator=g) @ basis + 0.3 * torch.randn(n, d, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", nargs="+", type=int, default=[784])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="of the batches (0: the calibration set, 1: held out)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, n={args.n}")
    print(f"{'batch':<24}{'d':>5}{'trial gap':>11}{'whole gap':>11}{'trial ms':>10}  auto")
    for d in args.d:
        g = torch.Generator().manual_seed(args.seed)
        x0 = torch.randn(args.n, d, generator=g)
        for name, x1 in batches(args.n, d, g):
            independent = float(pair_cost(x0, x1).mean())
            optimal = float(pair_cost(x0, x1[OTCoupler("exact").match(x0, x1)]).mean())
            cost = float(pair_cost(x0, x1[OTCoupler("multiscale").match(x0, x1)]).mean())
            start = time.perf_counter()
            trial = multiscale_trial(x0, x1)
            ms = (time.perf_counter() - start) * 1e3
            method, cost_dtype = auto_method(x0, x1)
            chosen = method + (f"@{cost_dtype}" if cost_dtype else "")
            whole = (independent - cost) / (independent - optimal)
            print(f"{name:<24}{d:>5}{trial:>11.4f}{whole:>11.4f}{ms:>10.0f}  {chosen}", flush=True)


if __name__ == "__main__":
    main()
