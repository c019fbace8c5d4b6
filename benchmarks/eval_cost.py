"""Cost of evaluation: seconds per 10k generated samples, by component, for any checkpoint.

    python benchmarks/eval_cost.py                                   # toy OT-MF MLP (2D), CPU
    python benchmarks/eval_cost.py --config cfg.yaml --checkpoint last.ckpt --device cuda
    python benchmarks/eval_cost.py --module-class otflow_lightning.OTMeanFlow --checkpoint last.ckpt

Components: generation at each step count (``module.sample`` on fixed noise, as the callbacks
draw it), exact W2 (POT, vector data), sliced W2, and FID features (torch-fidelity Inception-v3 on
uint8 images, image data only; randomly initialised unless ``--inception-weights`` is given: the
cost is the same) and FID's compute() (torchmetrics' against ``CachedRealFID``). Figures are the median of ``--repeats`` runs; FID features are measured on
``--fid-images`` images and scaled to 10k.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from otflow_lightning.callbacks.common import check_protocol, generate
from otflow_lightning.metrics import SlicedWasserstein2, images_to_uint8, wasserstein2_squared
from otflow_lightning.metrics.sliced_wasserstein import random_directions


def load_module(args) -> torch.nn.Module:
    """The model: from an otflow config (+ checkpoint), a class's ``load_from_checkpoint``, or the toy OT-MF MLP."""
    if args.config:
        import yaml

        from otflow_lightning.cli import main

        with open(args.config) as f:
            config = yaml.safe_load(f)  # a saved fit config: keep only what builds the model
        module = main({k: config[k] for k in ("model", "data") if k in config}, run=False).model
        if args.checkpoint:
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
    elif args.module_class:
        path, name = args.module_class.rsplit(".", 1)
        module = getattr(importlib.import_module(path), name).load_from_checkpoint(args.checkpoint, map_location="cpu")
    else:
        from otflow_lightning import OTMeanFlow

        module = OTMeanFlow(data_shape=tuple(args.data_shape))
    return module.to(args.device).eval()


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inception(weights: str | None, device: str) -> torch.nn.Module:
    """torchmetrics' Inception feature extractor (as the FID callback uses it): ``weights`` or random init."""
    if weights is not None:
        from otflow_lightning.metrics import build_fid

        return build_fid(2048, weights).inception.to(device)
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    from torchmetrics.image.fid import NoTrainInceptionV3

    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), mock.patch.object(
        tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None
    ):
        return NoTrainInceptionV3("inception-v3-compat", ["2048"], antialias=False).to(device)


def fid_compute_rows(device: str, repeats: int) -> list:
    """``compute()`` of torchmetrics' FID (general ``eigvals``) and of ``CachedRealFID`` on 2048-d statistics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from otflow_lightning.metrics.fid import CachedRealFID

    class Features(torch.nn.Module):  # stands in for Inception: compute() only sees the summed statistics
        num_features = 2048

    gen = torch.Generator().manual_seed(0)
    rows = []
    for cls in (FrechetInceptionDistance, CachedRealFID):
        metric = cls(Features()).to(device)
        for kind, n in (("real", 5000), ("fake", 3000)):
            f = torch.randn(n, 2048, generator=gen, dtype=torch.float64).to(device)
            setattr(metric, f"{kind}_features_sum", f.sum(0))
            setattr(metric, f"{kind}_features_cov_sum", f.T @ f)
            setattr(metric, f"{kind}_features_num_samples", torch.tensor(n, device=device))
        metric.orig_dtype = torch.float32
        compute = lambda: cls.compute(metric)  # noqa: E731 (unwrapped: torchmetrics caches the wrapped result)
        if cls is FrechetInceptionDistance:
            rows.append(("torchmetrics FID compute (eigvals), 2048 features: per evaluation", None, timed(compute, repeats, device)))
            continue

        def first():
            metric._sqrt_real = None
            return compute()

        rows.append(("CachedRealFID first compute (+ eigh of the real covariance, once a run)", None, timed(first, repeats, device)))
        rows.append(("CachedRealFID compute (eigvalsh), 2048 features: per evaluation", None, timed(compute, repeats, device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="otflow config that builds the model")
    parser.add_argument("--checkpoint", help="Lightning checkpoint with the weights")
    parser.add_argument("--module-class", help="dotted LightningModule class for load_from_checkpoint")
    parser.add_argument("--data-shape", type=int, nargs="+", default=[2], help="vector shape of the untrained default OT-MF MLP")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--n", type=int, default=10_000, help="generated samples per timing")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--fid-images", type=int, default=200, help="images for the FID feature timing (scaled to 10k)")
    parser.add_argument("--inception-weights", help="Inception weights file (default: random init, same cost)")
    parser.add_argument("--fid", action="store_true", help="time FID's parts even for non-image data (on random 3x32x32 images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    module = load_module(args)
    _, shape = check_protocol(module)
    device = args.device
    rows = []  # (component, samples, seconds)

    def gen_all(steps: int, n: int) -> torch.Tensor:
        return torch.cat(list(generate(module, 0, n, steps, seed=0, chunk=args.batch_size)))

    with torch.no_grad():
        for steps in args.steps:
            rows.append((f"generate, {steps} step{'s' if steps > 1 else ''}", args.n, timed(lambda: gen_all(steps, args.n), args.repeats, device)))
        samples = gen_all(1, args.n)
        if len(shape) == 1:
            # two different sets (a set against itself is solved at once by the identity, whatever --n is)
            x = samples[:2000]
            y = torch.cat(list(generate(module, 0, 2000, 1, seed=1, chunk=args.batch_size)))
            rows.append(("exact W2 (POT emd, CPU), 2000 vs 2000: per evaluation", None, timed(lambda: wasserstein2_squared(x, y), args.repeats, device)))

        def sliced():
            metric = SlicedWasserstein2(256).to(device)
            metric.update(samples, real=False)
            metric.update(samples.flip(0), real=True)
            return metric.compute()

        rows.append((f"sliced W2 (256 directions), {args.n} vs {args.n}", args.n, timed(sliced, args.repeats, device)))

        def sliced_pot():  # the peer: POT's 1D solver on the same projections
            from ot import wasserstein_1d

            theta = random_directions(samples[0].numel(), 256).to(device)
            flat = samples.reshape(len(samples), -1).double()
            return wasserstein_1d(flat @ theta, flat.flip(0) @ theta, p=2).mean()

        rows.append((f"sliced W2, POT wasserstein_1d (peer), {args.n} vs {args.n}", args.n, timed(sliced_pot, args.repeats, device)))
        if len(shape) == 3 or args.fid:
            net = inception(args.inception_weights, device)
            images = images_to_uint8(samples[: args.fid_images]) if len(shape) == 3 else torch.randint(
                0, 256, (args.fid_images, 3, 32, 32), dtype=torch.uint8, device=device
            )
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            feats = lambda: torch.cat([net(b) for b in images.split(min(args.batch_size, 250))])  # noqa: E731
            label = f"FID features (Inception-v3, 2048) of {tuple(images.shape[1:])} uint8 images"
            rows.append((label, len(images), timed(feats, max(1, args.repeats - 2), device)))
            rows += fid_compute_rows(device, args.repeats)

    name = type(module).__name__
    params = sum(p.numel() for p in module.parameters())
    print(f"\nevaluation cost: {name} ({params / 1e6:.2f}M parameters), data shape {shape}, device {device}, "
          f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| component | samples timed | seconds | seconds per 10k samples |\n|---|---:|---:|---:|")
    for component, n, seconds in rows:  # n None: a cost that does not scale linearly
        per_10k = "-" if n is None else f"{seconds * 10_000 / n:.3f}"
        print(f"| {component} | {n or '-'} | {seconds:.3f} | {per_10k} |")


if __name__ == "__main__":
    main()
