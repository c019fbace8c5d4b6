"""One OT-MF training step of the CIFAR-10 config: steps/s, peak memory, share in coupling and JVP.

Runs the step the Lightning loop runs (draw noise, OT-pair the batch on the device, OTMeanFlow
loss with its JVP, backward, AdamW) on random CIFAR-shaped data, for several variants side by
side, and prints a table. The JVP share is ``1 - t_FM / t_MF``, where ``FM`` is the same step with
the JVP replaced by a plain forward (flow matching: the cheapest a one-network-call objective gets).

    python benchmarks/cifar_step.py --device cuda             # CIFAR preset, per-GPU batch 128
    python benchmarks/cifar_step.py --device cpu              # tiny preset smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from otflow_lightning import OTCoupler, OTMeanFlow, Pair
from otflow_lightning.nets import UNet


def make_module(args, jvp_no_grad: bool, compile: bool) -> OTMeanFlow:
    torch.manual_seed(0)
    net = UNet(3, preset=args.preset, num_times=2, compile=compile)
    module = OTMeanFlow(net, data_shape=(3, 32, 32), time_mean=2.0, time_std=2.0, interval_fraction=0.75,
                        adaptive_p=0.75, jvp_no_grad=jvp_no_grad, lr=6e-4, betas=(0.9, 0.999))
    return module.to(args.device)


def fm_loss(module: OTMeanFlow, pair: Pair) -> torch.Tensor:
    """Flow matching on the same pairs: one plain forward, no JVP (the baseline step)."""
    t = torch.rand(len(pair), device=pair.x0.device)
    tt = t.reshape(-1, 1, 1, 1)
    z = (1 - tt) * pair.x0 + tt * pair.x1
    return (module.average_velocity(z, t, t) - (pair.x1 - pair.x0)).square().mean()


def run(args, name: str, objective: str, precision: str, coupling: str, jvp_no_grad=False, compile=False) -> dict:
    device = torch.device(args.device)
    module = make_module(args, jvp_no_grad, compile)
    opt = torch.optim.AdamW(module.parameters(), lr=6e-4)
    coupler = OTCoupler(coupling)
    gen = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x1_all = torch.rand(8 * args.batch, 3, 32, 32, device=device, generator=gen) * 2 - 1

    def step(i: int) -> float:
        x1 = x1_all[(i % 8) * args.batch:(i % 8 + 1) * args.batch]
        x0 = torch.randn(x1.shape, device=device, generator=gen)
        sync()
        t0 = time.perf_counter()
        perm = coupler.match(x0, x1)
        sync()
        t_couple = time.perf_counter() - t0
        pair = Pair(x0, x1[perm])
        with autocast:
            loss = module.loss(pair)[0] if objective == "MF" else fm_loss(module, pair)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t_couple

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start, couple = time.perf_counter(), 0.0
    for i in range(args.steps):
        couple += step(i)
    sync()
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dict(name=name, objective=objective, precision=precision, compile=compile, sec=total / args.steps,
                couple=couple / total, peak=peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (default: 128 on cuda, 16 on cpu)")
    parser.add_argument("--preset", default=None, help="UNet preset (default: cifar on cuda, tiny on cpu)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--coupling", default="exact", help="OT solver of the OT rows (exact: POT; lsa: scipy)")
    parser.add_argument("--compile", action="store_true", help="also time the variants with UNet(compile=True)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (128 if cuda else 16)
    args.preset = args.preset or ("cifar" if cuda else "tiny")
    args.steps = args.steps or (20 if cuda else 5)
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    variants = []
    for p in precisions:
        variants += [
            (f"FM {p}, {args.coupling} OT", "FM", p, args.coupling, False, False),
            (f"MF {p}, {args.coupling} OT, one-pass JVP", "MF", p, args.coupling, False, False),
            (f"MF {p}, {args.coupling} OT, jvp_no_grad", "MF", p, args.coupling, True, False),
            (f"MF {p}, independent, jvp_no_grad", "MF", p, "independent", True, False),
        ]
    if args.compile:
        variants += [(f"{v[0]}, compiled", *v[1:5], True) for v in variants if v[3] != "independent" and (v[1] == "FM" or v[4])]
    rows = []
    for v in variants:
        try:
            rows.append(run(args, *v))
        except torch.OutOfMemoryError:
            rows.append(dict(name=v[0], objective="OOM", precision=v[2], compile=v[5], sec=float("inf"), couple=0.0, peak=float("nan")))
        torch.cuda.empty_cache() if cuda else None
    print(f"\nOT-MF step, UNet preset {args.preset}, batch {args.batch}, {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}")
    print(f"{'variant':46s} {'steps/s':>8s} {'ms/step':>8s} {'coupling':>9s} {'JVP':>6s} {'peak GiB':>9s}")
    for r in rows:
        if r["objective"] == "OOM":
            print(f"{r['name']:46s} {'out of memory':>8s}")
            continue
        same = [f for f in rows if f["objective"] == "FM" and (f["precision"], f["compile"]) == (r["precision"], r["compile"])]
        jvp = f"{max(0.0, 1 - same[0]['sec'] / r['sec']):6.0%}" if r["objective"] == "MF" and same else ""
        print(f"{r['name']:46s} {1 / r['sec']:8.2f} {1000 * r['sec']:8.1f} {r['couple']:9.1%} {jvp:>6s} {r['peak']:9.1f}")


if __name__ == "__main__":
    main()
