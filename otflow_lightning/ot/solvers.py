"""Assignment solvers: each turns an ``(n, n)`` cost matrix (or the points) into a permutation.

A solver is a function ``solve(cost, x0, x1, **options) -> Solution`` where ``Solution.perm`` is a
LongTensor on the inputs' device such that ``(x0[i], x1[perm[i]])`` are the pairs. The methods in
:data:`POINT_METHODS` work on the points and are given ``cost=None``. Add your own with
:func:`register_solver` (or name a function by its import path as the method). Which one to use where (measured on a 2-core CPU, see ``docs/coupling.md``):

- ``exact``: the fastest exact CPU solver for the problem: POT's network simplex (``emd``) for
  low-dimensional points (up to 16 features; in 2D 3.6-9.9x faster than LAPJV, and 5-18x faster
  than scipy on clustered data) and the AVX2 LAPJV of the optional ``lapjv`` package above that
  (2-3x faster than ``emd`` on Gaussian clouds in image dimensions);
- ``auction``: epsilon-scaling auction in plain torch; runs on the GPU with no per-round host
  synchronisation and reaches the optimum to within ``eps_final`` per pair;
- ``sinkhorn``: POT's log-domain Sinkhorn on the device, rounded to a permutation;
- ``bsp``: POT's BSP-OT bijection, fast and near-exact in low dimension;
- ``multiscale``: k-means clusters of the targets, exact transport to the clusters, exact
  assignment inside each: no ``n x n`` matrix, near-exact on clustered data at large n;
- ``emd``, ``lsa``, ``lapjv``: the individual exact solvers; ``independent``: the identity.

Plan functions, in :data:`PLANS`, return a transport plan instead (``plan(cost, x0, x1, **options)
-> TransportPlan``); the coupler samples one target per source row from it when the user asks for
a plan sampler (``OTCoupler(..., plan_sampler=True)``): ``exact``/``emd`` (the network simplex's
plan, a scaled permutation matrix), ``sinkhorn`` (the entropic plan, unrounded) and ``lowrank``
(POT's low-rank Sinkhorn, plan only: it gives no bijection).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..utils import check_plugin, import_function
from .clusters import coarse_transport, flat_features, kmeans
from .costs import cpu_float64, simplex_scaled, squared_euclidean

__all__ = [
    "SOLVERS",
    "Solution",
    "register_solver",
    "find_solver",
    "budget_option",
    "check_options",
    "solve_independent",
    "solve_exact",
    "solve_emd",
    "solve_lsa",
    "solve_lapjv",
    "solve_auction",
    "solve_sinkhorn",
    "solve_bsp",
    "solve_multiscale",
    "POINT_METHODS",
    "SHIFT_INVARIANT",
    "PLANS",
    "TransportPlan",
    "plan_emd",
    "plan_sinkhorn",
    "plan_lowrank",
    "sample_plan",
    "check_permutation",
    "repair_permutation",
]

LOW_DIM = 16  # ``exact`` uses the network simplex up to this many features, LAPJV above
HAS_LAPJV = importlib.util.find_spec("lapjv") is not None


@dataclass
class Solution:
    """What a solver returns.

    Attributes:
        perm: ``(n,)`` LongTensor on the cost's device, a permutation of ``range(n)`` (or, built by
            the coupler from a sampled plan, an index that may repeat targets).
        iterations: iterations the solver ran (rounds, Sinkhorn steps, plans), or ``None``.
        converged: ``False`` when the solver stopped at its budget and ``perm`` was repaired into a
            permutation; the coupler applies the user's failure policy to it.
    """

    perm: Tensor
    iterations: int | None = None
    converged: bool = True


@dataclass
class TransportPlan:
    """What a plan function returns.

    Attributes:
        plan: ``(n, n)`` non-negative transport plan on the cost's device (rows sum to about ``1/n``).
        iterations: iterations the solver ran, or ``None``.
        converged: ``False`` when the solver stopped at its budget before its tolerance.
    """

    plan: Tensor
    iterations: int | None = None
    converged: bool = True


def check_permutation(perm: Tensor, n: int, method: str, fix: str = "please report this") -> Tensor:
    """Raise ``RuntimeError`` unless ``perm`` is a permutation of ``range(n)``."""
    if not (isinstance(perm, Tensor) and perm.shape == (n,) and not perm.is_floating_point()
            and torch.equal(torch.sort(perm).values, torch.arange(n, device=perm.device))):
        raise RuntimeError(f"OT solver {method!r} returned no permutation of the batch (n={n}); {fix}")
    return perm


def _from_numpy(perm: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.asarray(perm, dtype=np.int64)).to(device)


def solve_independent(cost: Tensor, x0=None, x1=None) -> Solution:
    """The identity pairing: independent coupling of two i.i.d. batches."""
    return Solution(torch.arange(cost.shape[0], device=cost.device))


def _emd(cost: Tensor, max_iter: int, threads: int) -> tuple[np.ndarray, bool]:
    """POT's network simplex on the cost scaled to [0, 1]: ``(plan, converged)``, the plan a float64 NumPy array."""
    import ot

    w = np.full(cost.shape[0], 1.0 / cost.shape[0])
    plan, log = ot.emd(w, w, simplex_scaled(cost)[0], numItermax=max_iter, numThreads=threads, log=True)
    return plan, log.get("result_code", 1) == 1


def plan_emd(cost: Tensor, x0=None, x1=None, max_iter: int = 100_000_000, threads: int = 1) -> TransportPlan:
    """Exact OT plan by POT's network simplex (``ot.emd``), CPU, float64, returned on the cost's device.

    With uniform marginals of equal size the simplex ends on a vertex of the Birkhoff polytope: a
    permutation matrix scaled by ``1/n``. The cost is first scaled to [0, 1]
    (:func:`~otflow_lightning.ot.costs.simplex_scaled`). Stopped at ``max_iter`` before optimality,
    the simplex's last plan is rounded by :func:`round_plan` and marked unconverged.
    """
    n = cost.shape[0]
    plan, converged = _emd(cost, max_iter, threads)
    plan = torch.from_numpy(plan).to(cost.device)
    if not converged:  # the last basis can leave rows empty: round it to a permutation's plan
        plan = torch.zeros_like(plan).scatter_(1, round_plan(plan, cost)[:, None], 1.0 / n)
    return TransportPlan(plan, converged=converged)


def solve_emd(cost: Tensor, x0=None, x1=None, max_iter: int = 100_000_000, threads: int = 1) -> Solution:
    """Exact assignment: the row argmax of the network simplex's permutation plan (:func:`plan_emd`),
    taken on the CPU; an unconverged plan is rounded by :func:`round_plan`."""
    plan, converged = _emd(cost, max_iter, threads)
    if converged:
        perm = _from_numpy(plan.argmax(1), cost.device)
    else:
        perm = round_plan(torch.from_numpy(plan).to(cost.device), cost)
    return Solution(check_permutation(perm, cost.shape[0], "emd"), converged=converged)


def solve_lsa(cost: Tensor, x0=None, x1=None) -> Solution:
    """Exact assignment by scipy's ``linear_sum_assignment`` (Jonker-Volgenant), CPU, float64."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cpu_float64(cost))
    perm = np.empty(cost.shape[0], dtype=np.int64)
    perm[rows] = cols
    return Solution(_from_numpy(perm, cost.device))


def solve_lapjv(cost: Tensor, x0: Tensor | None = None, x1: Tensor | None = None) -> Solution:
    r"""Exact assignment by the ``lapjv`` package (AVX2 Jonker-Volgenant), CPU.

    A float32 cost is solved in float32 (twice the SIMD width: 2x faster at n=4096; gap closed
    1.0000 against a float64 solve on every benchmark batch), any other in float64. The cost is
    first reduced by potentials, which leaves the optimal assignment unchanged (a permutation
    pays every row's and column's potential once) and decides how near to it LAPJV's column
    reduction (each column to its cheapest row) starts: each column less its mean
    :math:`v_j = \frac1n \sum_i C_{ij}`, then each row less its minimum
    :math:`u_i = \min_j (C_{ij} - v_j)`, a feasible dual pair with a zero in every row. Against the
    row mean alone this made LAPJV 1.4-2.3x faster on Gaussian clouds and digit images and 3-5x on
    an 8-cluster mixture (n=1024-4096, d=784-3072), where every target of a cluster otherwise has
    the same few sources as its cheapest (LAPJV's time per reduction: ``docs/coupling.md``).
    """
    from lapjv import lapjv

    device = cost.device
    cost = cost.detach()
    if cost.dtype != torch.float32:
        cost = cost.double()
    cost = cost - cost.mean(0, keepdim=True)  # on the cost's device; a new tensor: the caller's is kept
    cost.sub_(cost.amin(1, keepdim=True))
    perm = lapjv(np.ascontiguousarray(cost.cpu().numpy()))[0]
    return Solution(check_permutation(_from_numpy(perm, device), cost.shape[0], "lapjv"))


def solve_exact(cost: Tensor, x0: Tensor | None = None, x1: Tensor | None = None, **options) -> Solution:
    """Exact assignment with the fastest exact CPU solver for the data's dimension.

    ``emd`` (network simplex) for up to ``LOW_DIM`` features, where costs are clustered and the
    simplex needs few pivots; ``lapjv`` above, where Gaussian-like costs favour Jonker-Volgenant
    (scipy's slower Jonker-Volgenant where the optional ``lapjv`` package is not installed).
    Options go to ``emd`` (``max_iter``, ``threads``); ``lapjv`` takes none.
    """
    if unknown := sorted(options.keys() - {"max_iter", "threads"}):
        raise TypeError(f"'exact' takes the options max_iter and threads (of its network simplex), not {unknown}")
    features = LOW_DIM if x0 is None else x0[0].numel()
    if features <= LOW_DIM:
        return solve_emd(cost, **options)
    return solve_lapjv(cost) if HAS_LAPJV else solve_lsa(cost)


def repair_permutation(assigned: Tensor) -> Tensor:
    """Complete a partial assignment (``-1`` = unassigned row) into a permutation, without host sync.

    The unassigned rows take the unassigned columns in increasing order: the k-th free row gets the
    k-th free column. Used only when a solver stops at its budget; the coupler counts such events.
    """
    n = assigned.shape[0]
    free_row = assigned < 0
    free_col = ~_scatter_where(assigned, torch.ones_like(free_row), torch.zeros(n, dtype=torch.bool, device=assigned.device))
    # rank of each free row among free rows, and the free columns sorted first
    row_rank = torch.cumsum(free_row.long(), 0) - 1
    free_cols_sorted = torch.sort(torch.where(free_col, torch.arange(n, device=assigned.device), n)).values
    fill = free_cols_sorted[row_rank.clamp(0, n - 1)]
    return torch.where(free_row, fill, assigned)


def _scatter_where(index: Tensor, values: Tensor, into: Tensor) -> Tensor:
    """``into`` with ``into[index[k]] = values[k]`` for every ``index[k] >= 0`` (negative = skip), sync-free."""
    n = into.shape[0]
    out = torch.cat([into, into[:1]]).scatter(0, torch.where(index >= 0, index, n), values)
    return out[:n]


class _Auction:
    """State of a Jacobi forward auction, updated in place: prices, row -> column, column -> row.

    ``benefit`` is ``(n + 1, n)``: row ``n`` is read by padded bidder slots. ``assigned`` and
    ``owner`` have a spare slot at index ``n``, so scatters aimed at it are no-ops and the updates
    need no masking copies. All tensors keep their storage, which is what lets a CUDA graph replay
    rounds on them (:class:`_GraphedAuction`).
    """

    def __init__(self, benefit: Tensor):
        n = benefit.shape[1]
        device, dtype = benefit.device, benefit.dtype
        self.n, self.benefit = n, benefit
        self.price = torch.zeros(n, dtype=dtype, device=device)
        self.eps = torch.zeros((), dtype=dtype, device=device)
        self.assigned = torch.full((n + 1,), -1, dtype=torch.long, device=device)  # row -> column
        self.owner = torch.full((n + 1,), n, dtype=torch.long, device=device)  # column -> row (n: none)
        self.rows = torch.arange(n, device=device)
        self.neg_inf = torch.tensor(-math.inf, dtype=dtype, device=device)
        self.tie_generator: torch.Generator | None = None  # set: break ties among best columns at random

    def start_phase(self, eps: Tensor) -> None:
        self.eps.copy_(eps)
        self.assigned.fill_(-1)
        self.owner.fill_(self.n)

    def round(self, k: int) -> None:
        """Every unassigned row among the first ``k`` bids; each column goes to its highest bidder."""
        n, price, assigned, owner = self.n, self.price, self.assigned, self.owner
        free = assigned[:n] < 0
        if k < n:  # the first k unassigned rows in increasing order, padded with n (sync-free)
            bidder = torch.nonzero_static(free, size=k, fill_value=n).squeeze(1)
            value = self.benefit.index_select(0, bidder) - price
        else:
            bidder = torch.where(free, self.rows, n)
            value = self.benefit[:n] - price
        if self.tie_generator is None:
            first, col = value.max(1)  # two max passes: much faster than topk(2) on a GPU
        else:  # duplicated points: tied bidders spread over tied columns instead of all taking the first
            jitter = torch.rand(value.shape, generator=self.tie_generator, dtype=value.dtype, device=value.device)
            col = torch.addcmul(value, jitter, self.eps, value=0.01).argmax(1)
            first = value.gather(1, col[:, None]).squeeze(1)  # within eps / 100 of the best: a bid >= 0.99 eps
        second = value.scatter_(1, col[:, None], -math.inf).max(1).values
        bid = torch.where(bidder < n, price[col] + (first - second) + self.eps, self.neg_inf)
        best = torch.full((n,), -math.inf, dtype=price.dtype, device=price.device).scatter_reduce_(0, col, bid, "amax")
        winner = torch.full((n,), n, dtype=torch.long, device=price.device).scatter_reduce_(
            0, col, torch.where(bid == best[col], bidder, n), "amin"
        )  # the lowest row among the highest bidders; n: no bid
        won = winner < n
        assigned.scatter_(0, torch.where(won, owner[:n], n), -1)  # previous owners lose their column
        assigned.scatter_(0, winner, self.rows)  # winners take it
        torch.where(won, winner, owner[:n], out=owner[:n])
        torch.where(won, best, price, out=price)

    def block(self, k: int, rounds: int) -> None:
        for _ in range(rounds):
            self.round(k)


#: the auction breaks ties at random where some point (a row or column of the cost) repeats this
#: many times; below it, tied bidders cost no more rounds (docs/coupling.md, "Duplicated points")
TIE_BREAK_COPIES = 8


def has_repeated_rows(x: Tensor, copies: int = TIE_BREAK_COPIES) -> Tensor:
    """Whether some row of ``x`` ``(n, ...)`` occurs at least ``copies`` times, as a 0-dim bool tensor
    on ``x``'s device (no host sync): ``copies`` equal values among the sorted random projections
    of the rows (distinct rows collide in one float projection too rarely to matter for
    ``copies >= 3``; a false alarm only costs a slower auction)."""
    flat = x.detach().reshape(x.shape[0], -1)
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    if flat.shape[0] < copies:
        return torch.zeros((), dtype=torch.bool, device=x.device)
    r = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=flat.dtype).to(flat.device)
    h = (flat @ r).sort().values
    return (h[copies - 1 :] == h[: h.shape[0] - copies + 1]).any()


def _cuda_graph(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Run ``fn`` once on a side stream (the warm-up a capture needs), then record it; returns the replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a training step running on another thread (coupling prefetch) is not an error
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # recorded, not run
        fn()
    return graph.replay


class _GraphedAuction(_Auction):
    """An auction whose full blocks of rounds replay CUDA graphs, one per bidder count.

    The bidder count is rounded up to a power of two (padded slots do not bid, so the rounds are the
    same), which bounds the graphs at about ``log2(n)``; they are kept for later solves of the same
    size, whose cost and prices are copied into this object's ``benefit`` and ``price``; ``lock``
    keeps two threads from solving on these buffers at once.
    """

    def __init__(self, benefit: Tensor, block: int):
        super().__init__(benefit)
        self.rounds_per_graph = block
        self.graphs: dict[int, Callable[[], None]] = {}
        self.lock = threading.Lock()

    def block(self, k: int, rounds: int) -> None:
        if rounds != self.rounds_per_graph:
            return super().block(k, rounds)
        k = min(self.n, 1 << max(k - 1, 0).bit_length())
        replay = self.graphs.get(k)
        if replay is None:  # the first block of this size runs while it is captured
            self.graphs[k] = _cuda_graph(lambda: _Auction.block(self, k, rounds), self.price.device)
        else:
            replay()


@functools.lru_cache(maxsize=2)
def _graphed_auction(n: int, dtype: torch.dtype, device: torch.device, block: int) -> _GraphedAuction:
    return _GraphedAuction(torch.zeros(n + 1, n, dtype=dtype, device=device), block)


def _auction_rounds(auction: _Auction, eps: Tensor, rounds: int, check_every: int, tail: int, compact: bool = True) -> int:
    """One epsilon phase of the Jacobi forward auction on ``auction``; returns the rounds run.

    Row ``i`` bids for its best column ``j`` (value ``benefit[i, j] - price[j]``) the price that makes
    it indifferent to its second best plus ``eps``; each column goes to its highest bidder, whose
    previous owner becomes unassigned. Runs ``rounds`` rounds at most, looking at the host after the
    first round and then every ``check_every`` rounds, to stop once at most ``tail`` rows are
    unassigned. The number of unassigned rows never grows (each eviction follows a win), so with
    ``compact`` a block of rounds only reads the ``(k, n)`` rows of the ``k`` rows unassigned at its
    start (about a tenth of them after the first round): the same auction, a fraction of the memory
    traffic.
    """
    n = auction.n
    auction.start_phase(eps)
    done, free_count = 0, n
    while done < rounds:
        block = min(1 if done == 0 else check_every, rounds - done)
        auction.block(free_count if compact else n, block)
        done += block
        free_count = int((auction.assigned[:n] < 0).sum())
        if free_count <= tail:
            break
    return done


def sinkhorn_prices(cost: Tensor, epsilon: Tensor, iterations: int) -> Tensor:
    r"""Column dual potential :math:`g` of entropic OT after ``iterations`` log-domain Sinkhorn steps.

    Plain torch, a fixed number of steps (no host sync); uniform marginals drop out as constants.
    :math:`f_i = -\epsilon \log\sum_j e^{(g_j - C_{ij})/\epsilon}`, then the same for :math:`g`;
    the loop keeps the potentials in units of :math:`\epsilon`, so the cost is scaled once, not at
    every step.
    """
    kernel = cost / -epsilon
    g = torch.zeros(cost.shape[1], dtype=cost.dtype, device=cost.device)
    for _ in range(iterations):
        f = torch.logsumexp(kernel + g, dim=1)  # -f / epsilon
        g = -torch.logsumexp(kernel - f[:, None], dim=0)  # g / epsilon
    return g * epsilon


@torch.no_grad()
def solve_auction(
    cost: Tensor,
    x0=None,
    x1=None,
    eps_start: float = 0.01,
    eps_final: float = 1e-3,
    eps_factor: float = 7.0,
    max_rounds: int = 20_000,
    check_every: int = 8,
    warm_start: int = 20,
    warm_epsilon: float = 0.05,
    tail: float = 0.01,
    phase_tail: float = 0.05,
    cuda_graph: bool = False,
) -> Solution:
    r"""Epsilon-scaling auction (Bertsekas) in plain torch, on the cost's device.

    Minimises :math:`\sum_i C_{i\sigma(i)}`. At each :math:`\epsilon` the Jacobi auction ends
    :math:`\epsilon`-complementary-slack, so its total cost is within :math:`n\epsilon` of the optimum;
    :math:`\epsilon` falls geometrically from ``eps_start`` to ``eps_final`` (both relative to the
    standard deviation of the cost entries), prices carried over. All rows bid in parallel and the
    loop looks at the host only every ``check_every`` rounds, so on a GPU it runs without per-round
    synchronisation; between two looks only the rows then unassigned are read (the count never
    grows), a tenth or less of the matrix after the first round of a phase. An earlier phase only
    sets prices for the next, so it ends once at most ``phase_tail * n`` rows are unassigned. The
    last phase ends at ``tail * n``: the last few rows of an auction chase each other one eviction
    per round, so those rows are matched to the free columns exactly (:func:`complete_exactly`).
    If the round budget runs out first, the remaining rows are paired by
    :func:`repair_permutation` and the solution is marked unconverged.
    Where a row or column of the cost repeats :data:`TIE_BREAK_COPIES` times or more (repeated
    sources or targets, :func:`has_repeated_rows`), the bidders choose among near-best columns with
    a seeded random jitter of ``eps / 100``. The bid keeps the true values: it raises the price by
    at least ``0.99 eps`` and leaves the winner ``eps`` short of its best other column, so each
    phase still ends ``eps``-complementary-slack. These solves run eagerly, even with ``cuda_graph``.

    Args:
        cost: ``(n, n)`` cost matrix (float32 is enough; differences, not absolute values, matter).
        eps_start, eps_final: first and last epsilon, in units of the cost's standard deviation.
        eps_factor: epsilon divisor between phases.
        max_rounds: total round budget over all phases.
        check_every: rounds between early-stop checks (each check is one host sync).
        tail: fraction of rows left to the exact completion (0: run every phase to the end).
        phase_tail: fraction of rows still unassigned at which an earlier phase stops.
        warm_start: Sinkhorn steps (at ``warm_epsilon`` times the cost's standard deviation) whose
            dual potential seeds the prices (:math:`p_j = -g_j`); 0 starts from zero prices.
        warm_epsilon: the warm start's Sinkhorn epsilon, in units of the cost's standard deviation.
        cuda_graph: on a CUDA cost, replay each block of ``check_every`` rounds as a CUDA graph (one
            per power-of-two bidder count, captured on first use and kept for later solves of the
            same ``n``, dtype and device), so a block costs one launch from the host instead of
            about 30 per round. Same rounds and result as without. It pays off only where solves
            of one size repeat (every step at a fixed batch size; not per-class solves, whose sizes
            change with each batch). Experimental: not yet timed on a GPU. Ignored on the CPU.
    """
    n = cost.shape[0]
    cost = cost - cost.mean()
    scale = cost.std() if n > 1 else torch.zeros((), dtype=cost.dtype, device=cost.device)
    if not scale > 0:  # one pair, or a constant cost: every permutation is optimal (one host sync)
        return Solution(torch.arange(n, device=cost.device), iterations=0)
    tail_rows = int(tail * n)
    phases = max(1, math.ceil(math.log(eps_start / eps_final) / math.log(eps_factor)) + 1)
    # repeated points tie columns (or rows) of the cost exactly: without a tie-break every tied bidder
    # bids for the same column and one wins per round, eps by eps, until the budget runs out
    ties = bool(has_repeated_rows(cost) | has_repeated_rows(cost.T))  # one host sync
    if cuda_graph and cost.is_cuda and not ties:
        auction = _graphed_auction(n, cost.dtype, cost.device, check_every)
        lock = auction.lock
    else:
        auction, lock = _Auction(cost.new_zeros(n + 1, n)), contextlib.nullcontext()
        if ties:
            auction.tie_generator = torch.Generator(cost.device).manual_seed(0)
    with lock:
        torch.neg(cost, out=auction.benefit[:n])  # row n, read by padded bidder slots, stays 0
        if warm_start > 0:
            torch.neg(sinkhorn_prices(cost, warm_epsilon * scale, warm_start), out=auction.price)
        else:
            auction.price.zero_()
        total, left = 0, max_rounds
        for k in range(phases):
            eps = scale * max(eps_start / eps_factor**k, eps_final)
            stop = tail_rows if k == phases - 1 else int(phase_tail * n)
            total += _auction_rounds(auction, eps, max(left, 1), check_every, stop)
            left = max_rounds - total
            if left <= 0:
                break
        assigned = auction.assigned[:n].clone()  # a graphed auction's buffers serve the next solve
    converged = int((assigned < 0).sum()) <= tail_rows
    perm = complete_exactly(assigned, cost) if converged else repair_permutation(assigned)
    return Solution(check_permutation(perm, n, "auction"), iterations=total, converged=converged)


def plan_sinkhorn(
    cost: Tensor, x0=None, x1=None, epsilon: float = 0.05, max_iter: int = 2000, tol: float = 1e-5
) -> TransportPlan:
    r"""Entropic OT plan by POT's log-domain Sinkhorn on the cost's device, float64.

    The regularisation is ``epsilon`` times the standard deviation of the cost entries (absolute
    values are meaningless: in high dimension all costs sit near :math:`2d`). Unconverged when
    Sinkhorn's marginal error stays above ``tol`` after ``max_iter`` iterations.
    """
    import ot

    n = cost.shape[0]
    work = cost.to(torch.float64) if cost.dtype != torch.float64 else cost
    work = work - work.min()
    reg = float(epsilon * work.std()) if n > 1 else 0.0
    w = torch.full((n,), 1.0 / n, dtype=work.dtype, device=work.device)
    if not reg > 0:  # one pair, or a constant cost: every plan is optimal
        return TransportPlan(w[:, None] * w[None, :], iterations=0)
    plan, log = ot.sinkhorn(w, w, work, reg, method="sinkhorn_log", numItermax=max_iter, stopThr=tol, log=True, warn=False)
    if not torch.isfinite(plan).all():
        raise RuntimeError(f"Sinkhorn produced a non-finite plan (epsilon={epsilon}); raise epsilon")
    err = float(log["err"][-1]) if log.get("err") else 0.0
    # POT's niter is the index of the last iteration run
    return TransportPlan(plan, iterations=int(log["niter"]) + 1 if "niter" in log else max_iter, converged=err <= tol)


def solve_sinkhorn(cost: Tensor, x0=None, x1=None, **options) -> Solution:
    """:func:`plan_sinkhorn`'s plan (options go there), rounded to a permutation by :func:`round_plan`."""
    plan = plan_sinkhorn(cost, **options)
    return Solution(round_plan(plan.plan, cost), plan.iterations, plan.converged)


def plan_lowrank(
    cost: Tensor | None,
    x0: Tensor,
    x1: Tensor,
    rank: int = 32,
    epsilon: float = 0.0,
    max_iter: int = 2000,
    tol: float = 1e-3,
    init: str | None = None,
    seed: int = 49,
) -> TransportPlan:
    r"""Low-rank OT plan :math:`P = Q\,\mathrm{diag}(1/g)\,R^\top` by POT's ``ot.lowrank_sinkhorn``
    (Scetbon, Cuturi and Peyre 2021), on the points' device, float64.

    The plan has non-negative rank ``rank``: sources and targets are softly grouped into ``rank``
    shared clusters, and a source's mass spreads over the targets of its clusters. It is no
    permutation, and its rounding would not be one either, so it is available only as a plan to
    sample. POT factorises the squared Euclidean cost of the points itself (``cost`` is unused, so
    no label term can be added) and rescales it to a maximum of 1; ``epsilon`` is POT's entropic
    ``reg`` on that scale (0: none). Unconverged when POT's inner Dykstra iterations stop at
    ``max_iter`` above ``tol``.

    Args:
        rank: non-negative rank of the plan (capped at ``n``).
        epsilon: entropic regularisation on the rescaled cost.
        max_iter, tol: budget and tolerance (L1 error of the marginals, which sum to 1) of the inner
            Dykstra iterations. POT's default tolerance, 1e-7, costs 3-5x the time for the same
            plan cost on the 2D toys; 1e-3 misplaces 0.1% of the mass, far below the sampling noise.
        init: POT's initialisation of the factors: ``kmeans`` (scikit-learn k-means of each cloud,
            CPU only) or ``random``; default ``kmeans`` for CPU inputs, ``random`` otherwise. POT's
            100 mirror-descent steps barely move a random start in high dimension: on 8 clusters in
            d=784 (n=256-1024) the plan closes 2-7% of the gap from ``random`` and 82-86% from
            ``kmeans``; in 2D both close 89-96%.
        seed: seed of the initialisation (POT's own generator, or k-means' random state).
    """
    import warnings

    import ot

    if rank < 1:
        raise ValueError(f"lowrank needs rank >= 1, got {rank}")
    rank = min(rank, x0.shape[0])
    cpu = x0.device.type == "cpu"
    init = init or ("kmeans" if cpu else "random")
    if init not in ("kmeans", "random") or (init == "kmeans" and not cpu):
        raise ValueError(f"lowrank init must be 'random' or, for CPU inputs, 'kmeans'; got {init!r} on {x0.device}")
    a = x0.detach().reshape(x0.shape[0], -1).to(torch.float64)
    b = x1.detach().reshape(x1.shape[0], -1).to(torch.float64)
    if bool((a == a[:1]).all()) or bool((b == b[:1]).all()):  # one point on a side (n=1): every plan is optimal
        w = torch.full((a.shape[0],), 1.0 / a.shape[0], dtype=torch.float64, device=x0.device)
        return TransportPlan(w[:, None] * w[None, :], iterations=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q, r, g = ot.lowrank_sinkhorn(a, b, reg=epsilon, rank=rank, numItermax=max_iter, stopThr=tol, init=init, seed_init=seed)
    converged = not any("did not converge" in str(w.message) for w in caught)
    plan = (q / g) @ r.T
    if not torch.isfinite(plan).all():
        raise RuntimeError(f"low-rank Sinkhorn produced a non-finite plan (rank={rank}, epsilon={epsilon}); "
                           "raise epsilon or lower rank")
    return TransportPlan(plan.to(x0.device), converged=converged)


def sample_plan(plan: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""One target per source row: :math:`j_i \sim P_{ij} / \sum_k P_{ik}`, independently per row.

    Args:
        plan: ``(n, m)`` non-negative plan whose rows have positive mass.
        generator: random generator on ``plan``'s device (``None``: torch's global one).

    Returns:
        ``(n,)`` LongTensor of target indices on ``plan``'s device; targets may repeat.
    """
    return torch.multinomial(plan, 1, generator=generator).squeeze(1)


def round_plan(plan: Tensor, cost: Tensor) -> Tensor:
    """Round a transport plan to a permutation: confident rows keep their argmax, the rest are solved exactly."""
    n = plan.shape[0]
    mass, col = plan.max(1)
    claim = torch.full((n,), -1.0, dtype=mass.dtype, device=mass.device).scatter_reduce(0, col, mass, "amax")
    keep = (mass == claim[col]) & (mass > 0)
    # one row per column even on ties: the highest row index among the maximal ones
    rows = torch.arange(n, device=plan.device)
    holder = torch.full((n,), -1, dtype=torch.long, device=plan.device).scatter_reduce(0, col, torch.where(keep, rows, -1), "amax")
    keep &= holder[col] == rows
    return check_permutation(complete_exactly(torch.where(keep, col, -1), cost), n, "round_plan")


def complete_exactly(assigned: Tensor, cost: Tensor) -> Tensor:
    """Complete a partial assignment (``-1`` = unassigned row): the free rows are matched to the free
    columns by an exact solve (scipy) of their sub-problem. One host sync; meant for few free rows."""
    free_rows = torch.nonzero(assigned < 0).flatten()
    if free_rows.numel() == 0:
        return assigned
    n = assigned.shape[0]
    taken = _scatter_where(assigned, torch.ones_like(assigned, dtype=torch.bool), torch.zeros(n, dtype=torch.bool, device=assigned.device))
    free_cols = torch.nonzero(~taken).flatten()
    sub = solve_lsa(cost[free_rows][:, free_cols]).perm
    return assigned.index_put((free_rows,), free_cols[sub])


def solve_bsp(cost: Tensor | None, x0: Tensor, x1: Tensor, n_plans: int = 64, seed: int = 0) -> Solution:
    """Approximate bijection by POT's BSP-OT (merged binary-space-partition matchings), CPU.

    Near-exact and log-linear in n for low-dimensional points (1.003-1.02x the optimum on the 2D toys
    at n=256-4096 with 64 plans); quality drops in high dimension, where it is not a good default.
    """
    import ot

    a = cpu_float64(x0.reshape(x0.shape[0], -1))
    b = cpu_float64(x1.reshape(x1.shape[0], -1))
    _, perm, _ = ot.compute_bspot_bijection(a, b, n_plans=n_plans, seed=seed)
    return Solution(check_permutation(_from_numpy(perm, x0.device), x0.shape[0], "bsp"), iterations=n_plans)


def solve_multiscale(
    cost: Tensor | None,
    x0: Tensor,
    x1: Tensor,
    leaf_size: int = 512,
    iterations: int = 10,
    seed: int = 0,
    sweeps: int = 0,
) -> Solution:
    r"""Two-level assignment: k-means clusters of the targets, an exact transport of the sources to
    the clusters, then one exact assignment inside each cluster. Works on the points (no ``n x n``
    cost matrix).

    1. k-means (k-means++ start, ``iterations`` Lloyd steps on ``128 k`` of the targets, then every
       target to its nearest centre; ``k = round(n / leaf_size)`` clusters) groups the targets
       into clusters :math:`c` of sizes :math:`m_c` and centres :math:`\mu_c`.
    2. Every source goes to one cluster by the exact transport of the sources to the cluster means,
       capacities the cluster sizes (:func:`coarse_transport`, which says why this is exact for
       plans uniform within clusters).
    3. Each cluster's sources and targets are matched exactly (``exact``).
    4. ``sweeps`` times: the sources are clustered afresh (k-means with another seed), and each
       cluster's sources are re-matched exactly to the targets they hold. The current pairs are
       feasible in every block, so the cost never rises; each sweep moves targets across the
       boundaries of step 1 (Gaussian clouds, n=4096, d=3072: 92% -> 95%, 96%, 97% of the gap
       after 1, 2, 3 sweeps, each costing about what steps 1-3 cost).

    The work is ``O(n k d)`` for the clustering and ``O(n^2 d / k)`` for the leaves instead of
    ``O(n^2 d)`` plus an ``n``-size assignment. Near-exact where the targets are clustered (8-cluster
    mixtures and digit images at n=4096, d=784/3072: 95.6-99.9% of the gap, see ``docs/coupling.md``),
    poor on unclustered clouds (Gaussian: 88-92%), where the cluster boundaries are arbitrary.
    ``leaf_size >= n`` is the exact solver. CPU for the two exact steps.

    Args:
        leaf_size: target points per cluster (sets ``k``).
        iterations: Lloyd iterations of the k-means.
        seed: seed of the k-means++ start.
        sweeps: refinement sweeps (step 4).
    """
    if leaf_size < 1 or iterations < 0 or sweeps < 0:
        raise ValueError(f"multiscale needs leaf_size >= 1, iterations >= 0 and sweeps >= 0; got {leaf_size}, {iterations}, {sweeps}")
    n = x0.shape[0]
    a, b = flat_features(x0), flat_features(x1)
    k = max(1, min(n, round(n / leaf_size)))
    labels, assign = coarse_transport(a, b, k, iterations, seed)
    perm = torch.empty(n, dtype=torch.long, device=x0.device)

    def match(rows: Tensor, cols: Tensor) -> None:  # sources ``rows`` take targets ``cols`` exactly
        if rows.numel():
            perm[rows] = cols[solve_exact(squared_euclidean(a[rows], b[cols]), a[rows], b[cols]).perm]

    for c in range(k):
        match(torch.nonzero(assign == c).flatten(), torch.nonzero(labels == c).flatten())
    for sweep in range(sweeps):
        blocks = kmeans(a, k, iterations, torch.Generator().manual_seed(seed + 1 + sweep), sample=128 * k)[1]
        for c in range(k):
            rows = torch.nonzero(blocks == c).flatten()
            match(rows, perm[rows])
    return Solution(check_permutation(perm, n, "multiscale"), iterations=iterations)


#: methods whose permutation depends on the cost only up to row and column potentials: the coupler
#: gives them a bfloat16 cost without the points' squared norms (``squared_euclidean(reduced=True)``,
#: two passes fewer). Float32 costs keep them: LAPJV took longer on the reduced float32 cost of
#: Gaussian and mixture batches than the two passes save (docs/coupling.md).
SHIFT_INVARIANT = ("exact", "emd", "lsa", "lapjv")

#: methods that work on the points themselves: the coupler passes them ``cost=None`` (no ``n x n`` matrix)
POINT_METHODS = {"bsp", "lowrank", "multiscale"}

SOLVERS: dict[str, Callable[..., Solution]] = {
    "independent": solve_independent,
    "exact": solve_exact,
    "emd": solve_emd,
    "lsa": solve_lsa,
    "lapjv": solve_lapjv,
    "auction": solve_auction,
    "sinkhorn": solve_sinkhorn,
    "bsp": solve_bsp,
    "multiscale": solve_multiscale,
}

#: the library's own solvers (their results are permutations by construction; a registered
#: solver's result is checked)
BUILT_IN = frozenset(SOLVERS)


def register_solver(name: str, solve: Callable[..., Solution] | None = None, *, points: bool = False):
    """Add ``solve(cost, x0, x1, **options) -> Solution`` to :data:`SOLVERS` under ``name`` (returns
    it; without ``solve``, a decorator: ``@register_solver("greedy")``). ``points=True``: it works on
    the points ``x0``, ``x1`` ``(n, *shape)`` and is given ``cost=None`` (no ``n x n`` matrix);
    otherwise ``cost`` is the ``(n, n)`` squared-distance matrix. Its keyword arguments are the
    coupler's options, checked by name when the coupler is built; its result is checked to be a
    ``Solution`` holding a permutation after every solve."""
    if solve is None and not callable(name):
        return lambda fn: register_solver(name, fn, points=points)
    check_plugin("solver", name, solve, "fn(cost, x0, x1, **options)", None, None, None)
    if name in BUILT_IN or name in PLANS or name in ("auto", "online"):
        raise ValueError(f"solver name {name!r} is the library's; register yours under another name")
    SOLVERS[name] = solve
    (POINT_METHODS.add if points else POINT_METHODS.discard)(name)
    return solve


def find_solver(method: str) -> str:
    """``""`` if ``method`` names a solver or a plan, else why not. A ``module.function`` import path
    is imported and registered under that name (as a point solver if the function was registered as
    one under another name)."""
    if method in SOLVERS or method in PLANS:
        return ""
    solve, why = import_function(method) if isinstance(method, str) else (None, "")
    if solve is None:
        return why or "not registered"
    alias = next((k for k, fn in SOLVERS.items() if fn is solve), None)
    register_solver(method, solve, points=alias in POINT_METHODS)
    return ""


#: methods that can return a transport plan to sample (``OTCoupler(method, plan_sampler=True)``)
PLANS: dict[str, Callable[..., TransportPlan]] = {
    "exact": plan_emd,
    "emd": plan_emd,
    "sinkhorn": plan_sinkhorn,
    "lowrank": plan_lowrank,
}

#: the function whose keyword arguments a method's ``**options`` are (``exact`` and ``sinkhorn``
#: pass theirs on)
_OPTIONS_OF = {"exact": plan_emd, "sinkhorn": plan_sinkhorn}

#: option values that solvers cannot take (a zero ``n_plans`` crashes POT's BSP-OT, a zero
#: ``eps_final`` divides by zero): ``name: (test, what the value must be)``
_OPTION_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **{k: (lambda v: v >= 1, ">= 1")
       for k in ("n_plans", "max_iter", "max_rounds", "check_every", "rank", "leaf_size", "threads")},
    **{k: (lambda v: v > 0, "> 0") for k in ("eps_start", "eps_final", "tol", "warm_epsilon")},
    **{k: (lambda v: v >= 0, ">= 0") for k in ("warm_start", "iterations", "sweeps")},
    **{k: (lambda v: 0 <= v < 1, "in [0, 1)") for k in ("tail", "phase_tail")},
    "eps_factor": (lambda v: v > 1, "> 1"),
}


def _options_function(method: str, plan: bool = False) -> Callable:
    """The function whose keyword arguments ``method``'s options are (its plan's, with ``plan=True``)."""
    return PLANS[method] if plan else _OPTIONS_OF.get(method, SOLVERS.get(method))


def budget_option(method: str, plan: bool = False) -> str | None:
    """The option that sets ``method``'s iteration budget (``max_rounds`` or ``max_iter``), if any."""
    params = inspect.signature(_options_function(method, plan)).parameters
    return next((name for name in ("max_rounds", "max_iter") if name in params), None)


def check_options(method: str, options: dict, plan: bool = False) -> None:
    """``ValueError`` unless ``options`` are keyword arguments of ``method``'s solver (its plan's,
    with ``plan=True``) with values it can take, naming the ones it takes."""
    params = inspect.signature(_options_function(method, plan)).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    allowed = [k for k, p in params.items() if k not in ("cost", "x0", "x1") and p.kind in kinds]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())  # a registered solver's **options
    if not takes_any and (unknown := sorted(options.keys() - set(allowed))):
        hint = " (POT's reg is epsilon here, relative to the cost's standard deviation)" if "reg" in unknown else ""
        raise ValueError(f"OTCoupler({method!r}) does not take {unknown}{hint}; its options: {allowed or 'none'}")
    for name, value in options.items():
        test, want = _OPTION_RANGES.get(name, (None, ""))
        if name == "epsilon":  # Sinkhorn needs a positive regularisation; the low-rank solver also takes 0
            test, want = (lambda v: v > 0, "> 0") if method == "sinkhorn" else (lambda v: v >= 0, ">= 0")
        if test is not None and isinstance(value, (int, float)) and not test(value):
            raise ValueError(f"OTCoupler({method!r}): {name} must be {want}, got {value}")
