"""Global coupling across DDP ranks: two CPU processes (gloo) must solve one identical world match."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from otflow_lightning.ot import OTCoupler, couple_batch, draw_source_labels

N, WORLD = 24, 2


def rank_batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    x1 = torch.randn(N, 3, generator=g) + 2.0 * rank
    labels = torch.randint(0, 3, (N,), generator=g)
    index = torch.arange(N) + 1000 * rank
    return torch.randn(N, 3, generator=g), x1, labels, index


def worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x0, x1, labels, index = rank_batch(rank)
        paired, (lab, idx), coupling = couple_batch(OTCoupler("exact"), x0, x1, payload=(labels, index), across_ranks=True)
        c0 = draw_source_labels(labels, torch.Generator().manual_seed(rank))
        _, (clab, _), _ = couple_batch(OTCoupler("exact"), x0, x1, c0, labels, payload=(labels, index), across_ranks=True)
        # plan sampler: ranks hold different generators, yet rank 0's draw is the one all ranks keep
        sampler = OTCoupler("sinkhorn", plan_sampler=True)
        sampled, (sidx,), scoupling = couple_batch(
            sampler, x0, x1, payload=(index,), across_ranks=True, generator=torch.Generator().manual_seed(7 + rank)
        )
        torch.save(
            {"perm": coupling.perm, "x1": paired, "labels": lab, "index": idx, "cost": coupling.cost, "c0": c0, "clab": clab,
             "sperm": scoupling.perm, "sx1": sampled, "sindex": sidx},
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_match_is_identical_on_two_ranks(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert torch.equal(results[0]["perm"], results[1]["perm"])
    assert results[0]["cost"] == results[1]["cost"]
    # the same match a single process finds for the world batch
    batches = [rank_batch(r) for r in range(WORLD)]
    x0, x1, labels, index = (torch.cat(parts) for parts in zip(*batches))
    perm = OTCoupler("exact").match(x0, x1)
    assert torch.equal(results[0]["perm"], perm)
    for r, res in enumerate(results):
        mine = perm[r * N : (r + 1) * N]
        assert torch.equal(res["x1"], x1[mine]) and torch.equal(res["index"], index[mine])
        assert torch.equal(res["labels"], labels[mine])
        assert torch.equal(res["clab"], res["c0"])  # conditional: each noise sample keeps its drawn label
    # the plan sampler's global draw: identical on both ranks, rank 0's generator, targets may repeat
    assert torch.equal(results[0]["sperm"], results[1]["sperm"])
    sperm = OTCoupler("sinkhorn", plan_sampler=True).match(x0, x1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(results[0]["sperm"], sperm) and sperm.unique().numel() < 2 * N
    for r, res in enumerate(results):
        mine = sperm[r * N : (r + 1) * N]
        assert torch.equal(res["sx1"], x1[mine]) and torch.equal(res["sindex"], index[mine])
    # targets cross ranks: the global match is not the union of per-rank matches
    assert any((res["index"] // 1000 != r).any() for r, res in enumerate(results))
