"""Minibatch OT coupling: our solvers against torchcfm and scipy on the same inputs, in one run.

For each data set, batch size n and dimension d, the source is N(0, I) and every method pairs the
same (x0, x1). Columns: wall time of ``OTCoupler.match`` (cost matrix included, the logged
statistics of ``couple`` not; best of ``--repeat`` runs, or fewer once 2 s are spent), time relative to
torchcfm's ``OTPlanSampler("exact")``, cost ratio (coupled cost / independent cost) and the gap
closed, (C_independent - C) / (C_independent - C_optimal), with C_optimal from the exact solver,
and the fraction of distinct targets among the pairs (1 for a permutation).

A method written ``name/plan`` runs ``OTCoupler(name, plan_sampler=True)``: one target per source
drawn from the method's transport plan (``sinkhorn/plan``: the entropic plan unrounded;
``lowrank/plan``: POT's low-rank Sinkhorn, rank 32). Sampled pairs repeat targets, so their cost can
fall below the optimum of a bijection and their gap closed can exceed 1. A method written
``name@dtype`` computes its cost matrix in that precision (``OTCoupler(name, cost_dtype=dtype)``;
``exact@bfloat16``: inner products in bfloat16, then the exact assignment of that cost), and
``name:key=value,...`` passes solver options (``multiscale:leaf_size=256,sweeps=1``). ``auto``
(the default coupler) makes its choice on the first call for a batch shape and keeps it; that call
is timed apart and printed under the cell with the choice, the table's time is that of later calls.

    python benchmarks/coupling.py                                     # CPU table
    python benchmarks/coupling.py --data gaussian moons --n 256 1024 --d 2 784 \\
        --methods exact sinkhorn sinkhorn/plan lowrank/plan            # the plan samplers
    python benchmarks/coupling.py --data gaussian mixture digits --n 1024 4096 --d 784 3072 \
        --methods auto exact exact@bfloat16 multiscale                 # the CPU speed targets
    python benchmarks/coupling.py --device cuda --data gaussian --n 4096 --d 3072 \\
        --methods auction sinkhorn --repeat 10                       # the GPU figure

Optional CPU peer ``lap``: the LAPJV of the ``lap`` package (``pip install lapx``) on the float64
cdist cost, as a user calls it. ``potbatch``: POT's batched solver ``ot.batch.solve_batch`` (made
for many small problems; its default, unregularised call closed 43% of the gap in 17 s at n=1024,
d=784) with an entropic ``reg`` of 0.05 x the cost's std, rounded like ours, on ``--device``.
Optional GPU peers (``--peers ... tla geomloss``, run on ``--device``): torch-linear-assignment's
``batch_linear_assignment`` (exact; a Triton kernel on CUDA, scipy on the CPU) and geomloss's
epsilon-scaling Sinkhorn (``SamplesLoss("sinkhorn", p=2, blur=0.05)`` at its default
``scaling=0.5``, or ``geomloss:0.9`` for another scaling; its dual potentials turned into a plan and
rounded to a permutation by our ``round_plan``).

torchcfm is timed as users call it: ``sample_plan(x0, x1)`` (cdist, ``ot.emd`` on the CPU, then
pairs drawn from the plan with replacement, which is why its gap closed is below 100%).
A method whose time at the previous n, times 16 (the cost of exact solvers grows about n^2 to n^3),
exceeds ``--budget`` seconds is skipped at the larger n, and the table says so.
"""

from __future__ import annotations

import argparse
import time

import torch

from otflow_lightning.data.toys import sample_toy
from otflow_lightning.ot import OTCoupler, pair_cost

PEERS = ("torchcfm", "scipy", "lap", "potbatch", "tla", "geomloss")
DEVICE_PEERS = ("potbatch", "tla", "geomloss")  # run on --device; the others always on the CPU


def image_batch(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """sklearn's digits (8x8, 1797 images), upsampled to 28x28 (d=784) or 3x32x32 (d=3072), in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    side = {784: 28, 3072: 32}[d]
    idx = torch.randint(0, digits.shape[0], (n,), generator=generator)
    x = torch.nn.functional.interpolate(digits[idx], size=(side, side), mode="bilinear", align_corners=False)
    return x.expand(-1, d // (side * side), -1, -1).reshape(n, d)


def make_data(name: str, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x0, x1)`` on the CPU, or ``None`` where the data set has no such dimension."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g)
    if name == "gaussian":
        return x0, torch.randn(n, d, generator=g)
    if name == "mixture":  # 8 clusters, well separated in every dimension
        centres = 3.0 * torch.randn(8, d, generator=g)
        return x0, centres[torch.randint(0, 8, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    if name in ("moons", "8gaussians", "checkerboard"):
        return (x0, sample_toy(name, n, generator=g)) if d == 2 else None
    if name == "digits":
        return (x0, image_batch(n, d, g)) if d in (784, 3072) else None
    raise ValueError(f"unknown data set {name!r}")


def run_peer(name: str, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)`` of the pairs a peer produces (``tla`` and ``geomloss`` on ``x0``'s device)."""
    if name == "tla":  # torch-linear-assignment: Triton kernel on CUDA (compute capability >= 8), scipy on CPU
        from torch_linear_assignment import batch_linear_assignment

        j = batch_linear_assignment((torch.cdist(x0, x1) ** 2)[None])[0]
        return torch.arange(x0.shape[0], device=j.device), j
    if name.startswith("geomloss"):  # geomloss's epsilon-scaling Sinkhorn (blur 0.05; geomloss:S for scaling S), rounded like ours
        from geomloss import SamplesLoss

        from otflow_lightning.ot.solvers import round_plan

        scaling = float(name.partition(":")[2] or 0.5)  # 0.5: geomloss's default
        f, g = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=scaling, potentials=True, backend="tensorized")(x0, x1)
        cost = torch.cdist(x0, x1) ** 2 / 2  # geomloss's p=2 cost; epsilon = blur ** 2
        f, g = f.reshape(-1), g.reshape(-1)  # the tensorized backend returns (1, n)
        plan = torch.softmax((f[:, None] + g[None, :] - cost) / 0.05**2, dim=1)
        return torch.arange(x0.shape[0], device=x0.device), round_plan(plan, cost)
    if name == "torchcfm":
        import numpy as np
        from torchcfm.optimal_transport import OTPlanSampler

        sampler = OTPlanSampler(method="exact")
        pi = sampler.get_map(x0, x1)
        i, j = sampler.sample_map(pi, x0.shape[0], replace=True)
        return torch.from_numpy(np.asarray(i)), torch.from_numpy(np.asarray(j))
    if name == "potbatch":  # POT's batched solver (ot.batch, for many small problems) on this one problem
        from ot.batch import solve_batch

        from otflow_lightning.ot.solvers import round_plan

        cost = torch.cdist(x0, x1) ** 2  # its entropic solver, epsilon 0.05 x the cost's std (as our sinkhorn)
        plan = solve_batch(cost[None], reg=0.05 * float(cost.std())).plan[0]
        return torch.arange(x0.shape[0], device=x0.device), round_plan(plan, cost)
    if name == "lap":  # the `lap` package's LAPJV (pip install lapx), as a user calls it on the cdist cost
        import lap

        j = lap.lapjv((torch.cdist(x0, x1) ** 2).double().numpy())[1]
        return torch.arange(x0.shape[0]), torch.from_numpy(j.astype("int64"))
    if name == "scipy":
        from scipy.optimize import linear_sum_assignment

        cost = (torch.cdist(x0, x1) ** 2).cpu().numpy()
        i, j = linear_sum_assignment(cost)
        return torch.from_numpy(i), torch.from_numpy(j)
    raise ValueError(name)


def option_value(text: str) -> bool | int | float | str:
    """``True``/``False``, an int, a float, or else the text, from a ``name:key=value`` method option."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def timed(fn, device: torch.device, repeat: int):
    """Best wall time of ``repeat`` runs (at least two when ``repeat >= 2``, so a slow method's cold
    first run is never its only figure; fewer once the runs have taken 2 s), in ms, and the output."""
    best, out, spent = float("inf"), None, 0.0
    for run in range(repeat):
        if spent > 2.0 and run >= 2:
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        spent += time.perf_counter() - start
    return best * 1e3, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", nargs="+", default=["gaussian", "mixture", "moons", "8gaussians", "digits"])
    parser.add_argument("--n", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--d", nargs="+", type=int, default=[2, 784, 3072])
    parser.add_argument(
        "--methods", nargs="+", default=["exact", "auction", "sinkhorn", "bsp", "emd", "lapjv", "sinkhorn/plan", "lowrank/plan"]
    )
    parser.add_argument("--peers", nargs="*", default=["torchcfm", "scipy"],
                        help="of torchcfm, scipy, lap (pip install lapx), tla (pip install torch-linear-assignment), geomloss or geomloss:SCALING (pip install geomloss)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds; skip a method whose next n would exceed it")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"{'data':<11}{'d':>5}{'n':>6}  {'method':<24}{'ms':>10}{'x torchcfm':>11}{'cost ratio':>11}{'gap closed':>11}{'targets':>9}")
    for data in args.data:
        for d in args.d:
            last_ms: dict[str, float] = {}
            for n in args.n:
                pair = make_data(data, n, d)
                if pair is None:
                    continue
                x0, x1 = pair
                if data in ("moons", "8gaussians", "checkerboard") and n > 4096:
                    continue
                exact = OTCoupler("exact", cost_dtype="float64").match(x0, x1)  # the reference optimum, on the CPU
                c_ind, c_opt = float(pair_cost(x0, x1).mean()), float(pair_cost(x0, x1[exact]).mean())
                rows, peer_ms, notes = [], None, []
                for name in [*args.peers, *args.methods]:
                    if name.startswith("bsp") and d > 2:
                        continue  # BSP-OT is a low-dimensional method
                    if last_ms.get(name, 0.0) * 16 > args.budget * 1e3:
                        rows.append((name, None, None, None, None))
                        continue
                    try:
                        if name.partition(":")[0] in PEERS:
                            where = device if name.partition(":")[0] in DEVICE_PEERS else torch.device("cpu")
                            a, b = x0.to(where), x1.to(where)
                            if where.type == "cuda":
                                run_peer(name, a, b)  # warm-up (Triton compiles on the first call)
                            ms, (i, j) = timed(lambda: run_peer(name, a, b), where, args.repeat)
                            i, j = i.cpu(), j.cpu()
                            cost = float(pair_cost(x0[i], x1[j]).mean())
                            targets = j.unique().numel() / n
                            peer_ms = ms if name == "torchcfm" else peer_ms
                        else:
                            a, b = x0.to(device), x1.to(device)
                            spec, _, cost_dtype = name.partition("@")
                            spec, _, given = spec.partition(":")
                            method, _, plan = spec.partition("/")
                            options = {k: option_value(v) for k, v in (o.split("=") for o in given.split(",") if o)}
                            coupler = OTCoupler(method, plan_sampler=plan == "plan", cost_dtype=cost_dtype or None, **options)

                            def match():
                                return coupler.match(a, b, generator=torch.Generator(device).manual_seed(0))

                            if method == "auto":  # its choice is made on the first call and kept: time that call apart
                                start = time.perf_counter()
                                match()
                                first_ms = (time.perf_counter() - start) * 1e3
                                chosen, chosen_dtype = coupler.resolve(a, b)
                                notes.append(f"{name} chose {chosen}{'@' + chosen_dtype if chosen_dtype else ''}; "
                                             f"its first call, with the choice, took {first_ms:.1f} ms")
                            elif device.type == "cuda":
                                match()  # warm-up
                            ms, perm = timed(match, device, args.repeat)
                            cost = float(pair_cost(x0, x1[perm.cpu()]).mean())
                            targets = perm.unique().numel() / n
                    except (RuntimeError, ValueError, ImportError) as err:  # a failing solver or missing peer is a row, not the end of the run
                        rows.append((name, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}", None, None, None))
                        continue
                    last_ms[name] = ms
                    rows.append((name, ms, cost / c_ind, (c_ind - cost) / max(c_ind - c_opt, 1e-30), targets))
                for name, ms, ratio, gap, targets in rows:
                    head = f"{data:<11}{d:>5}{n:>6}  {name:<24}"
                    if ms is None or isinstance(ms, str):  # skipped, or the solver's error
                        print(f"{head}{'skipped (over --budget)':>43}" if ms is None else f"{head}  {ms}")
                        continue
                    rel = f"{ms / peer_ms:.3f}" if peer_ms else "-"
                    print(f"{head}{ms:>10.1f}{rel:>11}{ratio:>11.4f}{gap:>11.4f}{targets:>9.3f}", flush=True)
                for note in notes:
                    print(f"{'':<22}  ({note})")


if __name__ == "__main__":
    main()
