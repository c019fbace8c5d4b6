"""OT-NFM on the 2D toys, side by side with torchcfm's OT-CFM at the same budget.

Rows, per target pair and seed: OT-NFM with the independent coupling (mean collapse), with per-batch
OT (``configs/toy_nfm.yaml``: OT batch 4096 by BSP-OT, served as 16 training batches of 256), with the persistent online coupling
(``configs/toy_nfm_online.yaml``), optionally the invertible maps (``--invertible``) on the online
coupling, and torchcfm's ``ExactOptimalTransportConditionalFlowMatcher`` with the same 3x256 MLP,
steps, batch and EMA, sampled by Euler at 1 and 100 steps. Metric: exact W2^2 (POT) between 2000
generated points (fixed source seed) and the 2000-point validation set, as ``WassersteinCallback``
logs it; ``var`` is generated over target variance (near 0: mean collapse).

    python benchmarks/toy_nfm.py --seeds 0 1 2 [--invertible] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time

import torch

from otflow_lightning.callbacks.common import source_noise
from otflow_lightning.cli import main
from otflow_lightning.data import ToyDataset, draw_source
from otflow_lightning.metrics import wasserstein2_squared
from otflow_lightning.modules.nfm import variance_ratio
from otflow_lightning.nets import TimeMLP

PAIRS = {"8gaussians->moons": ("8gaussians", "moons"), "gaussian->checkerboard": ("gaussian", "checkerboard")}
INVERTIBLE = {
    "ResNetFlow": '{"class_path": "otflow_lightning.nets.ResNetFlow", "init_args": {"dim": 2, "hidden": 64, "blocks": 8}}',
    "AffineCouplingFlow": '{"class_path": "otflow_lightning.nets.AffineCouplingFlow", "init_args": {"dim": 2, "hidden": 128, "layers": 8}}',
}


def run_config(config, source, target, seed, steps, device, extra=()):
    """Fit ``config`` through the otflow CLI; return (W2^2, var ratio, seconds) of the last validation."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "--config", config, f"--seed_everything={seed}", f"--trainer.max_steps={steps}",
            f"--trainer.val_check_interval={steps}", f"--trainer.accelerator={device}", f"--trainer.default_root_dir={tmp}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
            f"--data.init_args.source={source}", f"--data.init_args.target={target}", *extra,
        ]
        cli = main(args, run=False)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, cli.datamodule)
        metrics = cli.trainer.callback_metrics
        return float(metrics["val/w2_sq"]), float(metrics["val/var_ratio"]), time.perf_counter() - start


def run_otcfm(source, target, seed, steps, device, batch=256, lr=1e-3, ema_decay=0.99):
    """torchcfm OT-CFM with the same net, steps, batch and EMA; W2^2 at 1 and 100 Euler steps."""
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    torch.manual_seed(seed)
    data = ToyDataset(target, 50_000, seed=0).points.to(device)
    val = ToyDataset(target, 2_000, seed=1_000_003).points.to(device)
    net = TimeMLP(2, 256, 3, num_times=1).to(device)
    ema = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    start = time.perf_counter()
    for _ in range(steps):
        x1 = data[torch.randint(0, data.shape[0], (batch,), device=device)]
        x0 = draw_source(source, batch, (2,), device=device)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = (net(xt, t) - ut).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - ema_decay)
    seconds = time.perf_counter() - start

    class Src:  # the callbacks' module protocol, to draw the same fixed source batch as WassersteinCallback
        def sample(self, x0, steps=1):
            return x0

    src = Src()
    src.source, src.data_shape, src.device = source, (2,), torch.device(device)
    x0 = torch.cat(list(source_noise(src, 0, 2000, 1234)))
    out = {}
    with torch.no_grad():
        for n_steps in (1, 100):
            x = x0
            for k in range(n_steps):
                x = x + ema(x, torch.full((x.shape[0],), k / n_steps, device=device)) / n_steps
            out[n_steps] = (float(wasserstein2_squared(x, val)), float(variance_ratio(x, val)))
    return out, seconds


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main_cli():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--invertible", action="store_true", help="also the invertible maps on the online coupling")
    p.add_argument("--no-independent", dest="independent", action="store_false")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    sys.argv = sys.argv[:1]  # the otflow CLI below gets its arguments as a list
    torch.set_num_threads(args.threads)
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for pair in args.pairs:
        source, target = PAIRS[pair]
        for seed in args.seeds:
            runs = {"OT-NFM per-batch OT (toy_nfm.yaml)": ("configs/toy_nfm.yaml", ()),
                    "OT-NFM online (toy_nfm_online.yaml)": ("configs/toy_nfm_online.yaml", ())}
            if args.independent:
                runs["OT-NFM independent (collapse)"] = ("configs/toy_nfm.yaml", ("--data.init_args.coupling=independent",))
            if args.invertible:
                for name, net in INVERTIBLE.items():
                    runs[f"OT-NFM online, {name}"] = ("configs/toy_nfm_online.yaml", (f"--model.init_args.net={net}",))
            for name, (config, extra) in runs.items():
                rows.setdefault((pair, name), []).append(run_config(config, source, target, seed, args.steps, args.device, extra))
                print(pair, name, seed, rows[(pair, name)][-1], flush=True)
            cfm, seconds = run_otcfm(source, target, seed, args.steps, args.device)
            for n_steps, (w2, var) in cfm.items():
                rows.setdefault((pair, f"torchcfm OT-CFM, {n_steps} Euler step(s)"), []).append((w2, var, seconds))
            print(pair, "OT-CFM", seed, cfm, seconds, flush=True)
    print(f"\n{args.steps} steps, batch 256, seeds {args.seeds}, device {args.device}, {args.threads} thread(s)")
    print("| pair | method | W2^2 (1 gen. 2000 vs 2000) | var ratio | train s |")
    print("|---|---|---|---|---|")
    for (pair, name), vals in rows.items():
        w2, var, sec = zip(*vals)
        print(f"| {pair} | {name} | {fmt(w2)} | {fmt(var)} | {statistics.mean(sec):.0f} |")


if __name__ == "__main__":
    main_cli()
