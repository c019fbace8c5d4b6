"""Coupling a batch on one rank or across all DDP ranks (one global match)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .coupler import Coupling, OTCoupler

__all__ = ["couple_batch", "gather", "solve_on_rank0", "world_size"]


def world_size() -> int:
    """Number of processes in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(x: Tensor, device: torch.device | None = None) -> Tensor:
    """Concatenate ``x`` (the same shape on every rank) over all ranks, in rank order; ``x`` without DDP.

    ``device``: gather through it and return the result on ``x``'s device (NCCL gathers CUDA
    tensors only, so a CPU tensor travels through the rank's GPU)."""
    if world_size() == 1:
        return x
    y = x if device is None else x.to(device)
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y.contiguous())
    return torch.cat(parts).to(x.device)


def solve_on_rank0(solve: Callable[[], Coupling], n: int, device: torch.device) -> Coupling:
    """Run ``solve()`` on rank 0 only and broadcast its :class:`Coupling` (``perm`` of length ``n``) to all ranks."""
    shared: list[Coupling | None] = [solve() if dist.get_rank() == 0 else None]
    perm = shared[0].perm if shared[0] is not None else torch.empty(n, dtype=torch.long, device=device)
    dist.broadcast(perm, src=0)
    if shared[0] is not None:
        shared[0].perm = None  # the statistics travel as an object, the permutation as a tensor
    dist.broadcast_object_list(shared, src=0)
    coupling = shared[0]
    coupling.perm = perm
    return coupling


def couple_batch(
    coupler: OTCoupler,
    x0: Tensor,
    x1: Tensor,
    c0: Tensor | None = None,
    c1: Tensor | None = None,
    payload: tuple[Tensor | None, ...] = (),
    across_ranks: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, tuple[Tensor | None, ...], Coupling]:
    """Pair this rank's sources ``x0`` with targets, locally or by one match over all ranks.

    Locally this is ``x1[perm]``. With ``across_ranks`` (and a process group of more than one
    rank), every rank's ``x0``, ``x1`` (and labels, payload) are all-gathered, rank 0 solves one
    match of the world batch and broadcasts it, so ranks can never disagree; each rank keeps the
    pairs of its own ``x0`` rows, whose targets may come from any rank. Every rank must pass
    batches of the same shape.

    Args:
        coupler: the :class:`OTCoupler` to solve with.
        x0: ``(n, *shape)`` this rank's source batch.
        x1: ``(n, *shape)`` this rank's target batch.
        c0, c1: optional ``(n,)`` source and target labels (conditional coupling).
        payload: per-target tensors (``(n, ...)`` or ``None``), such as labels and dataset
            indices, reordered with ``x1``.
        across_ranks: solve one global match over all ranks.
        generator: random generator on the batch's device for a plan sampler's draws (for a
            global match, rank 0's is used); unused by permutation methods.

    Returns:
        ``(x1_paired, payload_paired, coupling)`` where ``(x0[i], x1_paired[i])`` are the pairs; for
        a global match ``coupling`` describes the world batch (the same on every rank). Under a
        plan sampler the targets of different rows may coincide (within and across ranks).
    """
    if not across_ranks or world_size() == 1:
        coupling = coupler.couple(x0, x1, c0, c1, generator)
        perm = coupling.perm
        return x1[perm], tuple(None if p is None else p[perm] for p in payload), coupling
    rank, n = dist.get_rank(), x0.shape[0]
    gx0, gx1 = gather(x0), gather(x1)
    gc0, gc1 = (None, None) if c0 is None else (gather(c0), gather(c1))
    coupling = solve_on_rank0(lambda: coupler.couple(gx0, gx1, gc0, gc1, generator), gx0.shape[0], x0.device)
    perm = coupling.perm
    mine = perm[rank * n : (rank + 1) * n]
    paired_payload = tuple(None if p is None else gather(p)[mine] for p in payload)
    return gx1[mine], paired_payload, coupling
