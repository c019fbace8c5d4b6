"""Assignment solvers: each turns an ``(n, n)`` cost matrix into a permutation.

A solver is a function ``solve(cost, x0, x1, **options) -> (perm, iterations)`` where ``perm`` is a
LongTensor on ``cost.device`` such that ``(x0[i], x1[perm[i]])`` are the pairs, and ``iterations``
is the solver's iteration count (or ``None`` when it has none to report). Register new ones in
:data:`SOLVERS`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["SOLVERS", "solve_independent", "solve_exact", "solve_lsa", "solve_bsp", "check_permutation"]


def check_permutation(perm: Tensor, n: int, method: str) -> Tensor:
    """Raise ``RuntimeError`` unless ``perm`` is a permutation of ``range(n)``."""
    if perm.shape != (n,) or not torch.equal(torch.sort(perm).values, torch.arange(n, device=perm.device)):
        raise RuntimeError(f"OT solver {method!r} returned no permutation of the batch (n={n}); please report this")
    return perm


def solve_independent(cost: Tensor, x0=None, x1=None) -> tuple[Tensor, None]:
    """The identity pairing: independent coupling of two i.i.d. batches."""
    return torch.arange(cost.shape[0], device=cost.device), None


def solve_exact(cost: Tensor, x0=None, x1=None, max_iter: int = 10_000_000, threads: int = 1) -> tuple[Tensor, int | None]:
    """Exact assignment by POT's network simplex (``ot.emd``) on the CPU in float64.

    With uniform marginals of equal size the simplex ends on a vertex of the Birkhoff polytope,
    i.e. a permutation matrix; on the clustered 2D toys it is 3x (n=1024) to 9x (n=4096) faster than
    scipy's Jonker-Volgenant. Raises ``RuntimeError`` if it stops at ``max_iter`` before optimality.
    """
    import ot

    n = cost.shape[0]
    c = cost.detach().to("cpu", torch.float64).numpy()
    w = np.full(n, 1.0 / n)
    plan, log = ot.emd(w, w, c, numItermax=max_iter, numThreads=threads, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"exact OT (ot.emd) did not converge: {log.get('warning')}; raise max_iter (now {max_iter})")
    perm = torch.from_numpy(plan.argmax(1)).to(cost.device)
    return check_permutation(perm, n, "exact"), None


def solve_lsa(cost: Tensor, x0=None, x1=None) -> tuple[Tensor, None]:
    """Exact assignment by scipy's ``linear_sum_assignment`` (Jonker-Volgenant) on the CPU."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.detach().to("cpu", torch.float64).numpy())
    perm = torch.empty(cost.shape[0], dtype=torch.long)
    perm[torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return perm.to(cost.device), None


def solve_bsp(cost: Tensor, x0: Tensor, x1: Tensor, n_plans: int = 64, seed: int = 0) -> tuple[Tensor, int]:
    """Approximate bijection by POT's BSP-OT (merged binary-space-partition matchings), CPU.

    Near-exact and log-linear in n for low-dimensional points (1.003-1.02x the optimum on the 2D toys
    at n=256-4096 with 64 plans); quality drops in high dimension, where it is not a good default.
    """
    import ot

    a = x0.detach().reshape(x0.shape[0], -1).to("cpu", torch.float64).numpy()
    b = x1.detach().reshape(x1.shape[0], -1).to("cpu", torch.float64).numpy()
    _, perm, _ = ot.compute_bspot_bijection(a, b, n_plans=n_plans, seed=seed)
    perm = torch.from_numpy(np.asarray(perm, dtype=np.int64)).to(cost.device)
    return check_permutation(perm, cost.shape[0], "bsp"), n_plans


SOLVERS: dict[str, Callable[..., tuple[Tensor, int | None]]] = {
    "independent": solve_independent,
    "exact": solve_exact,
    "lsa": solve_lsa,
    "bsp": solve_bsp,
}
