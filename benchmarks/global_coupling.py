"""Cost of one global match across DDP ranks against each rank matching its own batch.

Starts ``--ranks`` processes (gloo on the CPU, NCCL with ``--device cuda``, rank r on GPU r). For
each world batch, every rank draws its share of N(0, I) noise and of the targets (``--data``, as
in ``coupling.py``; CIFAR-sized d=3072 by default) and pairs it with ``couple_batch``, locally and
then ``across_ranks=True`` (all-gather, one match on rank 0, broadcast). Prints the median over
``--repeat`` calls of the wall time of a call on rank 0 (ranks synchronised by a barrier before
each call), the solve's own time (``coupling.ms``) and the method ``auto`` chose; with
``--step-ms``, a training step's time measured elsewhere (``benchmarks/cifar_step.py``), the
global call as a share of it.

    python benchmarks/global_coupling.py --ranks 2 --world-batch 512 2048
    python benchmarks/global_coupling.py --device cuda --ranks 4 --world-batch 512 2048 --step-ms 370
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coupling import make_data
from otflow_lightning.ot import OTCoupler
from otflow_lightning.ot.distributed import couple_batch


def timed_call(fn, device: torch.device) -> tuple[float, object]:
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3, out


def worker(rank: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=args.ranks)
    for world in args.world_batch:
        n = world // args.ranks
        x0, x1 = make_data(args.data, world, args.d, seed=0)  # the same world batch on every rank; each takes its rows
        x0, x1 = x0[rank * n : (rank + 1) * n].to(device), x1[rank * n : (rank + 1) * n].to(device)
        rows = []
        for across in (False, True):
            coupler = OTCoupler()  # auto, as the DataModule's default
            call = lambda: couple_batch(coupler, x0, x1, across_ranks=across)  # noqa: E731
            timed_call(call, device)  # warm-up, and auto's choice
            times, solves = [], []
            for _ in range(args.repeat):
                ms, (_, _, coupling) = timed_call(call, device)
                times.append(ms)
                solves.append(coupling.ms)
            rows.append((across, statistics.median(times), statistics.median(solves), coupling.method, coupling.cost_ratio))
        if rank == 0:
            for across, ms, solve_ms, method, ratio in rows:
                share = f"{100 * ms / args.step_ms:.1f}%" if args.step_ms and across else "-"
                kind = f"global ({world})" if across else f"local ({n} per rank)"
                print(f"{world:>6}{args.ranks:>6}  {kind:<22}{ms:>10.1f}{solve_ms:>10.1f}  {method:<12}{ratio:>8.4f}{share:>9}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--world-batch", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--d", type=int, default=3072)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--step-ms", type=float, default=None, help="a training step's time, for the share column")
    args = parser.parse_args()
    with socket.socket() as free:  # a free port for the process group
        free.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free.getsockname()[1]))
    print(f"torch {torch.__version__}, {args.ranks} ranks on {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "") + f", data {args.data}, d={args.d}")
    print(f"{'world':>6}{'ranks':>6}  {'coupling':<22}{'ms':>10}{'solve ms':>10}  {'method':<12}{'ratio':>8}{'of step':>9}")
    mp.spawn(worker, args=(args,), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
