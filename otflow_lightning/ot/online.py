r"""``OnlineCoupling``: a persistent noise-to-data assignment over a finite dataset (LOOM-CFM style).

Minibatch OT re-pairs fresh noise in every batch, so the same data point meets different noise in
different batches and the coupling a model learns from is blurred over them. The online coupling
(Davtyan et al., "Looking Out Of Minibatch", ICLR 2025) instead **keeps** an assignment: every
dataset index ``i`` owns ``num_noises`` slots, each holding one noise sample (a stored vector, or a
seed that regenerates it). A training batch of indices takes one slot per index, solves OT between
the slots' noises and the batch's data, and **writes the permuted noises back**. The old pairing is
a feasible assignment of that batch problem, so the batch cost, and with it the global cost
:math:`\sum_{i, k} \|z_{i,k} - x_i\|^2` of the whole bank, never increases: training sees one
assignment that descends towards a global OT coupling of the dataset and a fixed set of
``size * num_noises`` noises (several slots per point limit over-fitting to one noise per point).

State lives in :meth:`state_dict` (the DataModule puts it into checkpoints). Under DDP every rank
holds the whole bank; each rank solves its own batch and the writes of all ranks are gathered and
applied on every rank, so the banks stay identical (batches of a ``DistributedSampler`` are
disjoint, so the writes never collide). With ``across_ranks`` (the DataModule's
``global_coupling``) the world batch is gathered and matched once on rank 0, which sharpens the
assignment as a larger batch does.

Class-conditional training (``labels``): noise moves only between data points of the same class,
so every class keeps a fixed set of prior draws, independent of where they sit (C2OT's rule).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .costs import pair_cost
from .coupler import Coupling, OTCoupler
from .distributed import gather, solve_on_rank0, world_size

__all__ = ["OnlineCoupling"]

#: ``draw(n, generator) -> (n, *shape)`` source samples on the CPU
Draw = Callable[[int, torch.Generator], Tensor]


class OnlineCoupling:
    """Persistent LOOM-style coupling: a bank of noise slots per dataset index, improved by each batch's OT.

    Args:
        num_noises: noise slots per dataset index.
        method: :class:`OTCoupler` method solving each batch (``exact``, ``lsa``, ``bsp``). An
            approximate solver's result is kept only if it lowers the batch cost.
        store: ``vectors`` (keep the noise tensors), ``seeds`` (keep one int64 seed per slot and
            regenerate the noise), or ``auto``: vectors while the bank holds at most
            ``max_stored_floats`` numbers (2D toys, small data), seeds otherwise (images).
        max_stored_floats: the ``auto`` threshold.
        **options: passed to the solver.

    Example:
        >>> data = torch.randn(1000, 2) + 3
        >>> online = OnlineCoupling(num_noises=2)
        >>> online.reset(1000, lambda n, g: torch.randn(n, 2, generator=g), seed=0)
        >>> before = online.global_cost(data)
        >>> idx = torch.randperm(1000)[:256]
        >>> x0, coupling = online.couple(data[idx], idx)
        >>> online.global_cost(data) <= before
        True
    """

    def __init__(self, num_noises: int = 1, method: str = "exact", store: str = "auto", max_stored_floats: int = 2**24, **options) -> None:
        if num_noises < 1:
            raise ValueError(f"num_noises must be >= 1, got {num_noises}")
        if store not in ("auto", "vectors", "seeds"):
            raise ValueError(f"store must be 'auto', 'vectors' or 'seeds', got {store!r}")
        self.coupler = OTCoupler(method, **options)
        if self.coupler.plan_sampler:
            raise ValueError(
                "OnlineCoupling writes each batch's permuted noises back into its bank and needs a bijection: "
                "drop plan_sampler (a sampled plan would duplicate some noises and lose others)"
            )
        self.num_noises, self.store, self.max_stored_floats = num_noises, store, max_stored_floats
        self.bank: Tensor | None = None  # (size, num_noises, *shape) float, or (size, num_noises) int64 seeds
        self._draw: Draw | None = None

    def __repr__(self) -> str:
        return f"OnlineCoupling(num_noises={self.num_noises}, method={self.coupler.method!r}, store={self.store!r})"

    @property
    def stores_seeds(self) -> bool:
        return self.bank is not None and self.bank.dtype == torch.int64

    def reset(self, size: int, draw: Draw, seed: int = 0) -> None:
        """Bind to a dataset of ``size`` points and a source ``draw``; fill the bank unless it already fits.

        The bank is drawn from ``seed`` alone (the same on every rank). A bank restored by
        :meth:`load_state_dict` for the same ``size`` is kept.
        """
        self._draw = draw
        if self.bank is not None and self.bank.shape[0] == size:
            return
        gen = torch.Generator().manual_seed(seed)
        numel = math.prod(draw(1, torch.Generator().manual_seed(0)).shape[1:])
        vectors = self.store == "vectors" or (self.store == "auto" and size * self.num_noises * numel <= self.max_stored_floats)
        if vectors:
            noise = draw(size * self.num_noises, gen)
            self.bank = noise.reshape(size, self.num_noises, *noise.shape[1:]).contiguous()
        else:
            self.bank = torch.randint(0, 2**62, (size, self.num_noises), generator=gen, dtype=torch.int64)

    def noise(self, state: Tensor) -> Tensor:
        """Noise of bank entries ``state`` (stored vectors, or seeds regenerated one by one): ``(n, *shape)``."""
        if not self.stores_seeds:
            return state
        return torch.cat([self._draw(1, torch.Generator().manual_seed(int(s))) for s in state])

    def _check_ready(self, index: Tensor) -> None:
        if self.bank is None or self._draw is None:
            raise RuntimeError("OnlineCoupling has no bank yet: call reset(size, draw, seed) first (OTPairDataModule.setup does)")
        if index.numel() and (index.min() < 0 or index.max() >= self.bank.shape[0]):
            raise IndexError(
                f"dataset index out of range for a bank of {self.bank.shape[0]} points (got {index.min()}..{index.max()}): "
                "the training set changed size since reset(); call reset(len(dataset), draw, seed) again"
            )

    @torch.no_grad()
    def couple(
        self,
        x1: Tensor,
        index: Tensor,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        across_ranks: bool = False,
    ) -> tuple[Tensor, Coupling]:
        """Pair a data batch with its stored noise, re-optimise the assignment and write it back.

        Args:
            x1: ``(n, *shape)`` data batch.
            index: ``(n,)`` dataset indices of ``x1`` (distinct).
            generator: draws each index's slot (on ``x1``'s device).
            labels: ``(n,)`` classes of ``x1`` for class-conditional training: noise is re-assigned
                only among data of the same class, so each class keeps its own fixed set of prior
                draws (the C2OT property: a noise sample's class never depends on the noise).
            across_ranks: under DDP, solve one match of the world batch (all ranks' data and stored
                noise, gathered; solved on rank 0 and broadcast) instead of one per rank.

        Returns:
            ``x0`` ``(n, *shape)`` noise on ``x1``'s device, and a :class:`Coupling` whose ``perm``
            pairs ``(x0[i], x1[perm[i]])``. Its ``independent_cost`` is the cost of the *stored*
            pairing before this batch, so ``cost_ratio`` is this batch's improvement (it tends to 1
            as the assignment converges) and ``cost`` tracks the global cost. With
            ``across_ranks`` the statistics are the world batch's and ``perm`` is the identity:
            ``x0`` already holds the noise now assigned to each row of ``x1``.
        """
        index = index.detach().cpu().long()
        self._check_ready(index)
        if labels is not None and self.coupler.label_weight is not None:
            raise ValueError("a class-conditional OnlineCoupling matches strictly within classes: leave label_weight unset")
        slot = torch.randint(0, self.num_noises, (index.shape[0],), generator=generator, device=x1.device).cpu()
        state = self.bank[index, slot]
        x0 = self.noise(state).to(device=x1.device, dtype=x1.dtype)
        if across_ranks and world_size() > 1:
            return self._couple_world(x0, x1, labels, index, slot, state)
        coupling = self._improve(x0, x1, labels)
        perm = coupling.perm.cpu()
        # entry (index[perm[i]], slot[perm[i]]) now holds the noise that was at (index[i], slot[i]);
        # every rank applies all ranks' writes, so the banks stay identical
        moved_index, moved_slot, state = (gather(t, x1.device) for t in (index[perm], slot[perm], state))
        self.bank[moved_index, moved_slot] = state
        return x0, coupling

    def _couple_world(self, x0: Tensor, x1: Tensor, labels: Tensor | None, index: Tensor, slot: Tensor,
                      state: Tensor) -> tuple[Tensor, Coupling]:
        """One match of the world batch (gathered, identical on every rank; solved on rank 0): every
        rank applies it to its bank and keeps the noise now paired with its own rows."""
        n, rank = x1.shape[0], dist.get_rank()
        x0, x1 = gather(x0), gather(x1)
        labels = None if labels is None else gather(labels)
        index, slot, state = (gather(t, x1.device) for t in (index, slot, state))
        coupling = solve_on_rank0(lambda: self._improve(x0, x1, labels), x1.shape[0], x1.device)
        perm = coupling.perm.cpu()
        self.bank[index[perm], slot[perm]] = state
        mine = torch.argsort(coupling.perm)[rank * n : (rank + 1) * n]  # the noise now paired with my rows
        coupling.perm = torch.arange(n, device=x1.device)
        return x0[mine], coupling

    def _improve(self, x0: Tensor, x1: Tensor, labels: Tensor | None) -> Coupling:
        """This batch's OT re-assignment; the stored pairing if an approximate solver did worse."""
        coupling = self.coupler.couple(x0, x1, labels, labels)
        if coupling.cost > coupling.independent_cost:
            coupling.perm, coupling.cost = torch.arange(x1.shape[0], device=x1.device), coupling.independent_cost
        return coupling

    @torch.no_grad()
    def global_cost(self, data: Tensor, batch_size: int = 4096) -> float:
        """Mean squared distance ``||z_{i,k} - x_i||^2`` over the whole bank, for ``data`` ``(size, *shape)``."""
        self._check_ready(torch.arange(0))
        total = 0.0
        for start in range(0, data.shape[0], batch_size):
            idx = torch.arange(start, min(start + batch_size, data.shape[0]))
            x = data[idx].cpu()
            for k in range(self.num_noises):
                z = self.noise(self.bank[idx, torch.full_like(idx, k)]).to(x)
                total += float(pair_cost(z, x).sum())
        return total / (data.shape[0] * self.num_noises)

    def state_dict(self) -> dict:
        return {} if self.bank is None else {"bank": self.bank.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "bank" in state:
            bank = state["bank"]
            if bank.ndim < 2 or bank.shape[1] != self.num_noises:
                raise ValueError(f"checkpointed online bank has shape {tuple(bank.shape)} but num_noises={self.num_noises}; "
                                 f"build OnlineCoupling(num_noises={bank.shape[1] if bank.ndim >= 2 else '...'}) as "
                                 "in the checkpointed run")
            self.bank = bank.clone()
