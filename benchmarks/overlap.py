"""Overlap: training steps/s with and without ``OTPairDataModule(prefetch_coupling=True)``.

Trains a config for a fixed number of steps with per-batch exact coupling, once synchronously and
once with the next batch's coupling prefetched on a worker thread (alternating, ``--repeats``
times each), and prints steps/s, their ratio and the share of a synchronous step spent in the
coupling (``coupling/ms``: the solve with its cost matrix; the source draw and the logged
statistics, two more passes over the batch, are left out; with ``ot_batch_size`` it is spread over
the training batches of an OT batch). Validation
and checkpoints are off; the config's EMA callback stays (it is part of a step). ``--idle_ms`` adds
a wait of the host to every step (a sleep, which releases the GIL), a stand-in for a GPU step during
which the host waits for the device: it shows the overlap apart from CPU contention.

    python benchmarks/overlap.py                          # CPU: toy 256, toy 1024, digits 128
    python benchmarks/overlap.py --device cuda --runs toy:256:500 toy:1024:200 toy:4096:20 digits:128:300
    python benchmarks/overlap.py --runs toy_nfm:256:320 --coupling config --warmup 16   # bsp, OT batch 4096 per 16 steps
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging

from otflow_lightning.cli import main as otflow

CONFIGS = {"toy": "configs/toy.yaml", "toy_nfm": "configs/toy_nfm.yaml", "digits": "configs/digits.yaml", "cifar": "configs/cifar.yaml"}


class StepTimer(Callback):
    """Wall time from the first measured step to the end of the last, and each step's ``coupling/ms``."""

    def __init__(self, warmup: int, idle_ms: float) -> None:
        self.warmup, self.idle_ms, self.start, self.end, self.coupling_ms = warmup, idle_ms, None, None, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        time.sleep(self.idle_ms / 1e3)
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        if trainer.global_step >= self.warmup:  # amortised over the training batches of an OT batch
            data = trainer.datamodule
            self.coupling_ms.append(batch.stats["coupling/ms"] * data.batch_size / (data.ot_batch_size or data.batch_size))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def train(config: str, batch: int, steps: int, prefetch: bool, args) -> dict:
    with tempfile.TemporaryDirectory() as root:
        coupling = [] if args.coupling == "config" else [f"--data.init_args.coupling={args.coupling}"]
        cli = otflow(["--config", CONFIGS[config], *coupling,
                      f"--data.init_args.batch_size={batch}", f"--data.init_args.prefetch_coupling={prefetch}",
                      f"--trainer.max_steps={args.warmup + steps}", f"--trainer.accelerator={args.device}",
                      "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                      "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}"], run=False)
        timer = StepTimer(args.warmup, args.idle_ms)
        # keep the callbacks that act on every step (EMA); drop evaluation and checkpoints
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if isinstance(c, EMAWeightAveraging)] + [timer]
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {"steps/s": steps / (timer.end - timer.start), "coupling_ms": statistics.median(timer.coupling_ms)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="+", default=["toy:256:300", "toy:1024:60", "digits:128:60"],
                        help="config:batch_size[:measured steps]")
    parser.add_argument("--steps", type=int, default=100, help="measured steps of a run that names none")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per setting; the median is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--coupling", default="exact", help="coupling method of every run; 'config': the config's own")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the training step")
    parser.add_argument("--idle_ms", type=float, default=0.0, help="host wait added to every step (a stand-in device step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(args parameter is intended|does not have many workers|LeafSpec).*")
    rows, load = [], os.getloadavg()[0]
    for spec in args.runs:
        config, batch, *steps = spec.split(":")
        steps = int(steps[0]) if steps else args.steps
        results = {False: [], True: []}
        for _ in range(args.repeats):
            for prefetch in (False, True):
                results[prefetch].append(train(config, int(batch), steps, prefetch, args))
        off, on = ({k: statistics.median(r[k] for r in results[p]) for k in ("steps/s", "coupling_ms")} for p in (False, True))
        share = off["coupling_ms"] * off["steps/s"] / 1e3
        runs = " / ".join(" ".join(f"{r['steps/s']:.1f}" for r in results[p]) for p in (False, True))
        rows.append((spec, off["steps/s"], on["steps/s"], on["steps/s"] / off["steps/s"], share, off["coupling_ms"], on["coupling_ms"], runs))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} torch thread(s)"
    device += f", host idle {args.idle_ms:g} ms per step" if args.idle_ms else ""
    print(f"\n{device}, torch {torch.__version__}, {args.warmup} warm-up steps, median of {args.repeats} runs; "
          f"1-min load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'run':12s} {'sync steps/s':>13s} {'prefetch steps/s':>17s} {'ratio':>6s} {'coupling share':>15s} "
          f"{'coupling ms sync':>17s} {'coupling ms prefetch':>21s}  steps/s of each run (sync / prefetch)")
    for r in rows:
        print(f"{r[0]:12s} {r[1]:13.1f} {r[2]:17.1f} {r[3]:6.2f} {r[4]:15.0%} {r[5]:17.1f} {r[6]:21.1f}  {r[7]}")


if __name__ == "__main__":
    main()
