"""What one ``auction`` solve costs in work a GPU pays for: rounds, torch ops and host syncs.

On a GPU at n in the thousands the auction is bound by kernel launches and host round trips, not by
memory bandwidth (one H100 took the same 57 ms at n=1024 and n=4096), so its time follows the number
of torch operations it dispatches more than the size of the matrix. This counts them, device-agnostic,
with a ``TorchDispatchMode`` around ``OTCoupler("auction", **options).match`` (cost matrix included,
views and other metadata-only ops left out), and the host syncs (``.item()``-like reads and
``nonzero``). It also prints the wall time on ``--device`` (best of ``--repeat``, or fewer once 2 s
are spent, after a warm-up call) and the gap closed against the exact solver. Pass solver options to compare settings side by
side, e.g. the warm start and look interval used before:

    python benchmarks/auction_ops.py --data gaussian mixture digits --n 1024 4096 --d 3072
    python benchmarks/auction_ops.py --options warm_start=30 check_every=16 phase_tail=0.01
    python benchmarks/auction_ops.py --device cuda --n 4096 --repeat 10          # the GPU figure
"""

from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from coupling import make_data, option_value, timed
from otflow_lightning.ot import OTCoupler, pair_cost

METADATA = {"slice", "select", "unsqueeze", "squeeze", "view", "_unsafe_view", "expand", "t", "transpose",
            "detach", "lift_fresh", "alias", "as_strided", "scalar_tensor", "_local_scalar_dense"}


class CountOps(TorchDispatchMode):
    """Counts the torch operations dispatched inside the ``with`` block (metadata-only ops apart)."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.syncs += name in ("_local_scalar_dense", "nonzero")
        self.ops += name not in METADATA
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["gaussian", "mixture", "digits"])
    parser.add_argument("--n", nargs="+", type=int, default=[1024])
    parser.add_argument("--d", type=int, default=3072)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--options", nargs="*", default=[], help="solver options, key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    options = {key: option_value(value) for key, value in (item.split("=", 1) for item in args.options)}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {gpu}, auction options {options or 'default'}")
    print(f"{'data':<10}{'n':>6}{'rounds':>8}{'ops':>7}{'syncs':>7}{'ops/round':>11}{'ms':>9}{'gap closed':>12}")
    for name in args.data:
        for n in args.n:
            x0, x1 = (x.to(device) for x in make_data(name, n, args.d, seed=args.seed))
            coupler = OTCoupler("auction", **options)
            coupling = coupler.couple(x0, x1)  # warm-up; its rounds and pairs are those of every call
            with CountOps() as count:
                coupler.match(x0, x1)
            best, _ = timed(lambda: coupler.match(x0, x1), device, args.repeat)
            independent = float(pair_cost(x0, x1).mean())
            optimal = float(pair_cost(x0, x1[OTCoupler("exact").match(x0, x1)]).mean())
            gap = (independent - coupling.cost) / (independent - optimal)
            rounds = coupling.iterations
            print(f"{name:<10}{n:>6}{rounds:>8}{count.ops:>7}{count.syncs:>7}{count.ops / rounds:>11.1f}{best:>9.1f}{gap:>12.4f}", flush=True)


if __name__ == "__main__":
    main()
