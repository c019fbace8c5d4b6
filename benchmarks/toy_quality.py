"""One-step quality on the 2D toys: OT-MF against its peers at the same budget, side by side.

Rows (same network 3x256, batch, steps, optimiser and EMA for all):

- ``otmf``: ``OTMeanFlow`` exactly as ``configs/toy.yaml`` (or ``--config``) builds it;
- ``meanflow-indep``: the same module and config with independent pairs (vanilla MeanFlow);
- ``otcfm``: torchcfm's ``ExactOptimalTransportConditionalFlowMatcher`` (its OT plan sampler, as
  shipped, per batch) training a velocity MLP with AdamW at its usual lr 1e-3 (``--otcfm-lr``;
  at OT-MF's 3e-3 it does better on both toys, so compare there too), the same EMA, sampled with
  Euler at 1 and 100 steps.

W2^2 (exact, POT) between 2000 generated and 2000 fresh target points, mean and spread over seeds.

    python benchmarks/toy_quality.py --seeds 0 1 2 --workers 3
    python benchmarks/toy_quality.py --set model.init_args.interval_fraction=0.5   # a config override

torchcfm: ``pip install --no-deps torchcfm==1.0.7 torchdyn==1.0.6``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import multiprocessing as mp
import os
import statistics
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = {"8gaussians->moons": ("8gaussians", "moons"), "gaussian->checkerboard": ("gaussian", "checkerboard")}


def build(spec):
    """Instantiate ``{class_path, init_args}`` specs recursively (as the CLI's config does)."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: build(v) for k, v in spec.get("init_args", {}).items()})
    if isinstance(spec, list):
        return [build(s) for s in spec]
    return spec


def set_path(cfg: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        cfg = cfg.setdefault(k, {})
    cfg[keys[-1]] = value


def load_config(path: str, overrides: list[str]) -> dict:
    with open(path) as f:
        cfg = yaml.safe_load(f)
    for item in overrides:
        key, _, value = item.partition("=")
        set_path(cfg, key, yaml.safe_load(value))
    return cfg


def ema_decay(cfg: dict) -> float | None:
    for cb in cfg["trainer"].get("callbacks", []):
        if cb["class_path"].endswith("EMAWeightAveraging"):
            return cb.get("init_args", {}).get("decay", 0.999)
    return None


def run_meanflow(cfg: dict, source: str, target: str, seed: int, coupling: str | None):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging

    pl.seed_everything(seed, verbose=False)
    cfg = copy.deepcopy(cfg)
    set_path(cfg, "data.init_args.source", source)
    set_path(cfg, "data.init_args.target", target)
    set_path(cfg, "model.init_args.source", source)
    set_path(cfg, "data.init_args.seed", seed)
    if coupling is not None:
        set_path(cfg, "data.init_args.coupling", coupling)
    model, data = build(cfg["model"]), build(cfg["data"])
    decay = ema_decay(cfg)
    trainer = pl.Trainer(
        max_steps=cfg["trainer"]["max_steps"], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
        callbacks=[EMAWeightAveraging(decay=decay)] if decay else [],
    )
    trainer.fit(model, data)  # EMA weights are copied into the model at the end of fit
    model.eval()
    return {1: model.sample, 2: lambda x: model.sample(x, 2)}


def run_otcfm(cfg: dict, source: str, target: str, seed: int):
    import torch
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    from otflow_lightning.data import ToyDataset, sample_toy
    from otflow_lightning.nets import TimeMLP

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm draws its plan's pairs with np.random.choice
    m = cfg["model"]["init_args"]
    net_args = dict(m["net"]["init_args"], num_times=1)
    net = TimeMLP(**net_args)
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay(cfg) or 0.0))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.get("otcfm_lr", 1e-3), weight_decay=0.0)
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    data = ToyDataset(target, cfg["data"]["init_args"].get("toy_size", 50_000), seed=seed).points
    batch = cfg["data"]["init_args"]["batch_size"]
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(cfg["trainer"]["max_steps"]):
        x1 = data[torch.randint(0, len(data), (batch,), generator=gen)]
        x0 = sample_toy(source, batch, gen)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = (net(xt, t) - ut).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(net)
    velocity = ema.module.eval()

    @torch.no_grad()
    def euler(x, steps):
        for k in range(steps):
            x = x + velocity(x, torch.full((x.shape[0],), k / steps)) / steps
        return x

    return {1: lambda x: euler(x, 1), 100: lambda x: euler(x, 100)}


def job(args):
    method, pair, seed, cfg = args
    import torch

    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from otflow_lightning.data import sample_toy
    from otflow_lightning.metrics import wasserstein2_squared

    source, target = PAIRS[pair]
    start = time.time()
    if method == "otcfm":
        samplers = run_otcfm(cfg, source, target, seed)
    else:
        samplers = run_meanflow(cfg, source, target, seed, "independent" if method == "meanflow-indep" else None)
    g = torch.Generator().manual_seed(10_000 + seed)
    x0, ref = sample_toy(source, 2000, g), sample_toy(target, 2000, g)
    w2 = {k: float(wasserstein2_squared(f(x0), ref)) for k, f in samplers.items()}
    return method, pair, seed, w2, time.time() - start


def fmt(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "toy.yaml"))
    p.add_argument("--set", nargs="*", default=[], help="config overrides key.path=value")
    p.add_argument("--methods", nargs="*", default=["otmf", "meanflow-indep", "otcfm"])
    p.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--otcfm-lr", type=float, default=1e-3, help="OT-CFM's learning rate (its usual 1e-3)")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.set)
    cfg["otcfm_lr"] = a.otcfm_lr
    jobs = [(m, pair, s, cfg) for pair in a.pairs for m in a.methods for s in a.seeds]
    start = time.time()
    if a.workers > 1:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            results = pool.map(job, jobs)
    else:
        results = [job(j) for j in jobs]
    print(f"# config {os.path.relpath(a.config, REPO)} {' '.join(a.set)}; steps {cfg['trainer']['max_steps']}, "
          f"batch {cfg['data']['init_args']['batch_size']}, seeds {a.seeds}; wall {time.time() - start:.0f} s")
    print("| pair | method | W2^2 1 step | W2^2 2 steps | W2^2 100 steps | train s/run |")
    print("|---|---|---|---|---|---|")
    table = {}
    for method, pair, seed, w2, secs in results:
        row = table.setdefault((pair, method), {"secs": []})
        row["secs"].append(secs)
        for k, v in w2.items():
            row.setdefault(k, []).append(v)
    for (pair, method), row in table.items():
        print(f"| {pair} | {method} | {fmt(row.get(1))} | {fmt(row.get(2))} | {fmt(row.get(100))} | {statistics.mean(row['secs']):.0f} |")
    for pair in a.pairs:
        ours, base = table.get((pair, "otmf")), table
        if ours is None:
            continue
        m1 = statistics.mean(ours[1])
        ratios = []
        if (pair, "otcfm") in base:
            ratios.append(f"OT-CFM 1 step {statistics.mean(base[(pair, 'otcfm')][1]):.3f} (OT-MF {m1 / statistics.mean(base[(pair, 'otcfm')][1]):.2f}x)")
            ratios.append(f"OT-CFM 100 steps {statistics.mean(base[(pair, 'otcfm')][100]):.3f} (OT-MF {m1 / statistics.mean(base[(pair, 'otcfm')][100]):.2f}x)")
        if (pair, "meanflow-indep") in base:
            ratios.append(f"MeanFlow indep. {statistics.mean(base[(pair, 'meanflow-indep')][1]):.3f} (OT-MF {m1 / statistics.mean(base[(pair, 'meanflow-indep')][1]):.2f}x)")
        print(f"- {pair}: OT-MF 1 step {m1:.3f}; " + "; ".join(ratios))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
