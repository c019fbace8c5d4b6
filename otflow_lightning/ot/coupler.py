"""``OTCoupler``: pair a source batch with a target batch by minibatch optimal transport."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .costs import COST_DTYPES, label_mismatch, pair_cost, squared_euclidean
from .solvers import (
    BUILT_IN,
    LOW_DIM,
    PLANS,
    POINT_METHODS,
    SHIFT_INVARIANT,
    SOLVERS,
    Solution,
    budget_option,
    check_options,
    check_permutation,
    find_solver,
    sample_plan,
)

__all__ = ["OTCoupler", "Coupling", "check_batch", "auto_method"]

log = logging.getLogger(__name__)
POLICIES = ("raise", "warn")
#: ``auto`` uses ``auction`` for CUDA batches of at least this many samples in more than ``LOW_DIM`` features
AUTO_AUCTION_N = 1024
#: ``auto`` uses ``multiscale`` for CPU batches of at least this many samples ...
AUTO_MULTISCALE_N = 4096
#: ... where it closes at least this fraction of the gap on half the batch (:func:`multiscale_trial`): 95%
#: plus the trial's measured error near it (``benchmarks/auto_trial.py``)
AUTO_MULTISCALE_GAP = 0.955


@functools.cache
def fast_bfloat16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively: Intel AMX, or AVX512-BF16 (AMD Zen 4
    and later, some Intel Xeons). The measured speed of a bfloat16 cost matrix: ``docs/coupling.md``."""
    return any(getattr(torch.cpu, f"_is_{unit}_supported", lambda: False)() for unit in ("amx_tile", "avx512_bf16"))


def multiscale_trial(x0: Tensor, x1: Tensor, sample: int = 2048, leaf_size: int = 512) -> float:
    """Gap closed by ``multiscale`` on ``sample`` random pairs of the batch, with as many clusters
    as it would use on the whole batch: ``(C_independent - C) / (C_independent - C_optimal)``.

    Where the whole batch's gap was 94-97%, the trial was within -1.25 and +0.6 points of it on
    mixtures, noisy digit images and noisy low-rank data (n=4096, d=784/3072;
    ``benchmarks/auto_trial.py``).
    """
    n = x0.shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:sample].to(x0.device)
    a, b = x0[pick], x1[pick]
    leaf = max(1, round(a.shape[0] * leaf_size / n))  # the whole batch's cluster count
    independent = pair_cost(a, b).double().mean()
    optimal = pair_cost(a, b[SOLVERS["exact"](squared_euclidean(a, b), a, b).perm]).double().mean()
    multiscale = pair_cost(a, b[SOLVERS["multiscale"](None, a, b, leaf_size=leaf).perm]).double().mean()
    return float((independent - multiscale) / (independent - optimal).clamp_min(1e-30))


def auto_method(
    x0: Tensor, x1: Tensor, label_weight: float | None = None, trial: Callable[[Tensor, Tensor], float] | None = None
) -> tuple[str, str | None]:
    """``(method, cost_dtype)`` that ``OTCoupler("auto")`` solves this batch with; ``trial``
    replaces :func:`multiscale_trial` (the coupler passes one that remembers its result).

    The rule, in order, for a batch of ``n`` samples of ``d`` features (the measurements behind it:
    ``docs/coupling.md``, "auto"):

    - ``d <= 16`` (:data:`~otflow_lightning.ot.solvers.LOW_DIM`): ``exact`` (POT's network simplex; exact).
    - on a CUDA device: ``auction`` (near-exact) from ``n >= 1024``, else ``exact``.
    - on the CPU, ``n >= 4096``, no float ``label_weight``, and ``multiscale`` closes >= 95.5% of the
      gap on half the batch (:func:`multiscale_trial`): ``multiscale``.
    - otherwise ``exact``, on a bfloat16 cost where the CPU multiplies bfloat16 natively
      (:func:`fast_bfloat16_cpu`; near-exact and faster in image dimensions), on the default
      float32/float64 cost elsewhere.
    """
    n, d = x0.shape[0], x0[0].numel()
    if d <= LOW_DIM:
        return "exact", None
    if x0.device.type == "cuda":
        return ("auction" if n >= AUTO_AUCTION_N else "exact"), None
    if n >= AUTO_MULTISCALE_N and label_weight is None and (trial or multiscale_trial)(x0, x1) >= AUTO_MULTISCALE_GAP:
        return "multiscale", None
    return "exact", ("bfloat16" if x0.device.type == "cpu" and fast_bfloat16_cpu() else None)


@dataclass
class Coupling:
    """Result of one minibatch match.

    Attributes:
        perm: ``(n,)`` LongTensor; ``(x0[i], x1[perm[i]])`` are the pairs. A permutation, except
            under a plan sampler (``OTCoupler(plan_sampler=True)``), where it is an index of sampled
            targets that may repeat some targets and leave others out.
        cost: mean squared distance of the coupled pairs (the sampled pairs under a plan sampler),
            each pair's distance summed in the batch's precision (float32: about 1e-7 relative).
        independent_cost: mean squared distance of the identity (independent) pairing.
        ms: wall time of the solve, cost matrix included, in milliseconds (not the statistics); on
            CUDA, the time the solve took on the current stream (CUDA events: neither work queued
            before it nor a training step running on another stream counts).
        iterations: solver iterations, where the solver reports them.
        converged: ``False`` if the solver stopped at its budget (the permutation was repaired).
        failures: unconverged solves so far by this coupler (under ``on_failure="warn"``).
        unique_targets: fraction of distinct targets in ``perm`` under a plan sampler (1 for a
            permutation), ``None`` otherwise.
        method: the method that solved (what ``auto`` chose; per-label solves join theirs with ``+``).
    """

    perm: Tensor
    cost: float
    independent_cost: float
    ms: float
    iterations: int | None = None
    converged: bool = True
    failures: int = 0
    unique_targets: float | None = None
    method: str = ""

    @property
    def cost_ratio(self) -> float:
        """OT cost over independent cost (1 for independent pairing, lower is better)."""
        if self.independent_cost > 0:
            return self.cost / self.independent_cost
        return 1.0 if self.cost == 0 else math.inf  # x0 == x1 pair by pair: no coupling beats the identity

    def stats(self) -> dict[str, float]:
        """Scalars to log, under ``coupling/``."""
        out = {"coupling/cost_ratio": self.cost_ratio, "coupling/cost": self.cost, "coupling/ms": self.ms}
        if self.iterations is not None:
            out["coupling/iterations"] = float(self.iterations)
        out["coupling/failures"] = float(self.failures)
        if self.unique_targets is not None:
            out["coupling/unique_targets"] = self.unique_targets
        return out


def check_batch(x0: Tensor, x1: Tensor, c0: Tensor | None = None, c1: Tensor | None = None) -> None:
    """Raise ``ValueError`` naming the argument for empty, mismatched or non-finite batches."""
    for name, t in (("x0", x0), ("x1", x1), ("c0", c0), ("c1", c1)):
        if t is not None and not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}; convert it with torch.as_tensor")
    if x0.ndim == 0 or x1.ndim == 0 or x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ValueError(f"empty batch: x0 has shape {tuple(x0.shape)}, x1 has shape {tuple(x1.shape)}")
    if x0.shape != x1.shape:
        raise ValueError(
            f"source x0 {tuple(x0.shape)} and target x1 {tuple(x1.shape)} must have the same shape; "
            "check that the source's shape matches the data (DataModule `source` / `data_shape`)"
        )
    for name, x in (("x0 (source)", x0), ("x1 (target)", x1)):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # a finite sum has finite terms
            raise ValueError(f"{name} holds NaN or Inf values; clean the data or check the transform that produced them")
    if (c0 is None) != (c1 is None):
        raise ValueError("give labels for both sides (c0 and c1) or for neither")
    if c0 is not None and (c0.shape != x0.shape[:1] or c1.shape != x1.shape[:1]):
        raise ValueError(
            f"labels c0 {tuple(c0.shape)} / c1 {tuple(c1.shape)} must be 1-D, one class index per sample "
            f"({x0.shape[0]},); flatten (n, 1) labels and turn one-hot labels into indices with argmax(1)"
        )
    for name, c in (("c0", c0), ("c1", c1)):
        if c is not None and c.is_floating_point() and not torch.isfinite(c).all():
            raise ValueError(f"labels {name} hold NaN or Inf values")


def _budget_hint(solved: str, method: str, per_label: bool, plan_sampler: bool = False) -> str:
    """How to raise the budget of the solver(s) ``solved`` (``+``-joined) of a coupler of ``method``."""
    option = next(filter(None, (budget_option(m, plan_sampler) for m in solved.split("+"))), None)
    name = solved.split("+")[0] if method == "auto" else method
    if option is None:  # a registered solver without max_rounds / max_iter
        return f"{name!r} takes no max_rounds or max_iter option, so its own code decides when it gives up"
    plan, plan_yaml = (", plan_sampler=True", ", plan_sampler: true") if plan_sampler else ("", "")
    hint = (f"raise its budget: OTCoupler({name!r}{plan}, {option}=...) (in a YAML coupling: class_path: "
            f"otflow_lightning.OTCoupler, init_args: {{method: {name}{plan_yaml}}}, dict_kwargs: {{{option}: ...}})")
    if method == "auto":
        hint += "; 'auto' takes no options, so name the method"
    if per_label and "sinkhorn" in solved:
        hint += "; per-label sub-problems are small, where Sinkhorn converges slowly and 'exact' is cheap"
    return hint


class _SolveTimer:
    """Milliseconds from construction to :meth:`stop`. On a CUDA device: between two events on the
    current stream, so work queued before the solve (the previous step) or on another stream (the
    training step beside a prefetched solve) is not counted, and :meth:`stop` waits for that stream
    only, not for the whole device."""

    def __init__(self, device: torch.device) -> None:
        self.start, self.events = time.perf_counter(), None
        if device.type == "cuda":
            self.events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.events[0].record(torch.cuda.current_stream(device))
            self.device = device

    def stop(self) -> float:
        if self.events is None:
            return (time.perf_counter() - self.start) * 1e3
        start, end = self.events
        end.record(torch.cuda.current_stream(self.device))
        end.synchronize()
        return start.elapsed_time(end)


class OTCoupler:
    r"""Minibatch OT coupling as a permutation of the target batch (or, on request, a sampled plan).

    Solves :math:`\min_\sigma \sum_i C_{i\sigma(i)}` with :math:`C_{ij} = \|x_0^i - x_1^j\|^2`
    and returns :math:`\sigma` as ``perm``. The result is a bijection: no sample is duplicated
    or dropped, and a failed solve never falls back to independent pairs.

    With ``plan_sampler=True`` the coupler instead computes a transport plan :math:`P` (``n x n``,
    on the inputs' device) and draws one target per source row, :math:`j_i \sim P_{ij} / \sum_k
    P_{ik}`, with the given generator. ``perm`` is then an *index*, not a permutation: every source
    appears once (``x0``'s marginal is exact) but targets may repeat or be left out (``x1``'s
    marginal holds only in expectation); ``coupling/unique_targets`` logs the fraction of distinct
    targets. Methods with a plan: :data:`~otflow_lightning.ot.solvers.PLANS` (``exact``/``emd``,
    whose plan is the exact permutation, ``sinkhorn``, unrounded, and ``lowrank``, which has no
    permutation form and needs ``plan_sampler=True``).

    With labels (class-conditional generation, C2OT), ``label_weight=None`` matches strictly within
    each label (one exact sub-problem per class; both sides must hold the same label counts, as
    :func:`~otflow_lightning.ot.draw_source_labels` ensures), and a float adds
    ``label_weight * [c0_i != c1_j]`` to the cost.

    Args:
        method: ``auto`` (default: chosen per batch shape, device and data by :func:`auto_method`)
            or a solver in :data:`~otflow_lightning.ot.SOLVERS`: ``exact`` (fastest exact CPU
            solver for the dimension), ``auction`` (GPU-capable, near-exact), ``sinkhorn``, ``bsp``,
            ``multiscale`` (clustered large batches), ``emd``, ``lsa``, ``lapjv``, ``independent``;
            or, with ``plan_sampler``, ``lowrank``; or a solver of your own (``register_solver``, or
            its import path).
        label_weight: weight of the label-mismatch cost; ``None`` matches strictly within labels.
        on_failure: what an unconverged solve does (a solver stopped at its budget; its result was
            repaired into a permutation, or its plan sampled as it was): ``raise`` a ``RuntimeError``
            (default) or ``warn``: log a warning, count it in :attr:`failures` and in
            ``coupling/failures``, and keep the result.
        plan_sampler: sample each source's target from the method's transport plan instead of
            returning a permutation (see above).
        cost_dtype: precision of the cost matrix: ``None`` (float64 up to 64 features, float32
            above), ``"float64"``, ``"float32"`` or ``"bfloat16"``: inner products in bfloat16,
            the rest in float32, faster on CPUs and GPUs with bfloat16 matrix units; an approximate
            cost (:func:`~otflow_lightning.ot.costs.squared_euclidean`). The point methods (``bsp``,
            ``lowrank``, ``multiscale``) build no cost matrix and refuse it.
        **options: passed to the solver (e.g. ``n_plans`` for ``bsp``, ``eps_final`` for ``auction``,
            ``rank`` for ``lowrank``, ``leaf_size`` for ``multiscale``).

    Example:
        >>> coupler = OTCoupler("exact")
        >>> x0, x1 = torch.randn(64, 2), torch.randn(64, 2) + 3
        >>> perm = coupler.match(x0, x1)
        >>> sorted(perm.tolist()) == list(range(64))
        True
    """

    def __init__(
        self,
        method: str = "auto",
        label_weight: float | None = None,
        on_failure: str = "raise",
        plan_sampler: bool = False,
        cost_dtype: str | None = None,
        **options,
    ) -> None:
        if method != "auto" and (why := find_solver(method)):
            raise ValueError(
                f"unknown coupling method {method!r}{f' ({why})' if why != 'not registered' else ''}; choose 'auto' or "
                f"one of {sorted(SOLVERS.keys() | PLANS.keys())}, or give a solver's import path "
                "(my_project.solvers.greedy; see register_solver)"
            )
        if method == "auto" and (plan_sampler or cost_dtype is not None or options):
            raise ValueError(
                "method 'auto' chooses the solver and the cost precision itself: name a method (e.g. 'exact') "
                f"to set plan_sampler, cost_dtype or solver options (got plan_sampler={plan_sampler}, "
                f"cost_dtype={cost_dtype!r}, options {sorted(options)})"
            )
        if plan_sampler and method not in PLANS:
            raise ValueError(
                f"plan_sampler=True needs a method with a transport plan, one of {sorted(PLANS)}; "
                f"{method!r} returns only a permutation (set plan_sampler=False to use it)"
            )
        if method not in SOLVERS and method != "auto" and not plan_sampler:
            raise ValueError(
                f"method {method!r} gives a transport plan, not a permutation: pass plan_sampler=True to sample "
                "pairs from it (targets may then repeat), or pick a bijective method"
            )
        if cost_dtype is not None and cost_dtype not in COST_DTYPES:
            raise ValueError(f"cost_dtype must be None or one of {sorted(COST_DTYPES)}, got {cost_dtype!r}")
        if cost_dtype is not None and method in POINT_METHODS:
            raise ValueError(f"method {method!r} works on the points and builds no cost matrix: leave cost_dtype unset")
        if on_failure not in POLICIES:
            raise ValueError(f"on_failure must be one of {POLICIES}, got {on_failure!r}")
        if label_weight is not None and not 0 <= label_weight < float("inf"):
            raise ValueError(
                f"label_weight must be a finite number >= 0, or None for strict per-label matching, got {label_weight}"
            )
        if label_weight is not None and method in POINT_METHODS:
            raise ValueError(
                f"method {method!r} solves on the points and cannot add a label cost: use label_weight=None "
                "(strict per-label matching) or a cost-matrix method such as 'exact' or 'sinkhorn'"
            )
        if method != "auto":
            check_options(method, options, plan_sampler)
        self.method, self.label_weight, self.on_failure, self.options = method, label_weight, on_failure, options
        self.plan_sampler, self.cost_dtype = plan_sampler, cost_dtype
        self.failures = 0
        self._trials: dict[tuple, float] = {}  # auto's multiscale trial per (sample shape, device)

    def resolve(self, x0: Tensor, x1: Tensor) -> tuple[str, str | None]:
        """``(method, cost_dtype)`` for this batch: the coupler's own, or under ``auto`` the choice of
        :func:`auto_method`, whose one look at the data (:func:`multiscale_trial`) is made on the
        first large batch of each sample shape and device and kept (so a training run keeps one
        solver and pays for the trial once)."""
        if self.method != "auto":
            return self.method, self.cost_dtype
        return auto_method(x0, x1, self.label_weight, self._trial)

    def _trial(self, x0: Tensor, x1: Tensor) -> float:
        """:func:`multiscale_trial`, run once per sample shape and device."""
        key = (tuple(x0.shape[1:]), x0.device.type)
        if key not in self._trials:
            gap = self._trials[key] = multiscale_trial(x0, x1)
            log.info(
                "OTCoupler('auto'): multiscale closed %.4f of the gap on half a batch of %d samples of shape %s; "
                "batches of >= %d such samples use %s",
                gap, x0.shape[0], key[0], AUTO_MULTISCALE_N, "multiscale" if gap >= AUTO_MULTISCALE_GAP else "exact",
            )
        return self._trials[key]

    def __repr__(self) -> str:
        opts = f", cost_dtype={self.cost_dtype!r}" if self.cost_dtype else ""
        opts += "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"OTCoupler({self.method!r}{', plan_sampler=True' if self.plan_sampler else ''}{opts})"

    def cost_matrix(
        self,
        x0: Tensor,
        x1: Tensor,
        c0: Tensor | None = None,
        c1: Tensor | None = None,
        reduced: bool = False,
        cost_dtype: str | None = None,
    ) -> Tensor:
        """``(n, n)`` cost the solver minimises: squared Euclidean, plus the weighted label term.

        ``reduced=True`` leaves out the points' squared norms (``squared_euclidean(reduced=True)``):
        the same optimal assignment; what the methods in
        :data:`~otflow_lightning.ot.solvers.SHIFT_INVARIANT` are given with ``cost_dtype="bfloat16"``.
        ``cost_dtype`` overrides the coupler's (``auto`` passes its choice).
        """
        cost = squared_euclidean(x0, x1, cost_dtype or self.cost_dtype, reduced)
        if c0 is not None and self.label_weight is not None:
            cost = cost + self.label_weight * label_mismatch(c0, c1).to(cost)
        return cost

    def _solve(
        self, x0: Tensor, x1: Tensor, c0: Tensor | None, c1: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Solution, str]:
        method, cost_dtype = self.resolve(x0, x1)
        if method not in SOLVERS and method not in PLANS and find_solver(method):  # sent to another process
            raise RuntimeError(f"OT solver {method!r} is not registered in this process (a DDP worker, or after "
                               "unpickling): register it at the top level of a module, or name it by import path")
        if method in POINT_METHODS:
            cost = None
        else:
            reduced = method in SHIFT_INVARIANT and cost_dtype == "bfloat16"
            cost = self.cost_matrix(x0, x1, c0, c1, reduced, cost_dtype)
        if not self.plan_sampler:
            solution = SOLVERS[method](cost, x0, x1, **self.options)
            if method not in BUILT_IN:
                fix = "a solver must return Solution(perm) with (x0[i], x1[perm[i]]) the pairs, each target once"
                if not isinstance(solution, Solution):
                    raise RuntimeError(f"OT solver {method!r} returned a {type(solution).__name__}; {fix}")
                check_permutation(solution.perm, x0.shape[0], method, fix)
            return solution, method
        plan = PLANS[method](cost, x0, x1, **self.options)
        return Solution(sample_plan(plan.plan, generator), plan.iterations, plan.converged), method

    def _solve_per_label(
        self, x0: Tensor, x1: Tensor, c0: Tensor, c1: Tensor, generator: torch.Generator | None
    ) -> tuple[Solution, str]:
        """One sub-problem per label: ``x0`` with label k is matched among ``x1`` with label k."""
        perm = torch.empty(x0.shape[0], dtype=torch.long, device=x0.device)
        iterations, converged, methods = None, True, []
        for label in torch.unique(c1):
            rows = torch.nonzero(c0 == label).flatten()
            cols = torch.nonzero(c1 == label).flatten()
            if rows.numel() != cols.numel():
                raise ValueError(
                    f"strict per-label matching needs the same count of each label in c0 and c1; label {label.item()} "
                    f"has {rows.numel()} sources and {cols.numel()} targets. Draw source labels with "
                    "draw_source_labels(c1, generator), or set label_weight for a soft label cost"
                )
            sol, method = self._solve(x0[rows], x1[cols], None, None, generator)
            methods += [method] if method not in methods else []
            perm[rows] = cols[sol.perm]
            converged &= sol.converged
            if sol.iterations is not None:
                iterations = (iterations or 0) + sol.iterations
        return Solution(perm, iterations, converged), "+".join(methods)

    def _pair(
        self, x0: Tensor, x1: Tensor, c0: Tensor | None, c1: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Solution, str, float]:
        """Check, solve and apply the failure policy: ``(solution, method, ms)``."""
        check_batch(x0, x1, c0, c1)
        timer = _SolveTimer(x0.device)
        with torch.no_grad():
            strict = c0 is not None and self.label_weight is None
            sol, method = self._solve_per_label(x0, x1, c0, c1, generator) if strict else self._solve(x0, x1, c0, c1, generator)
        ms = timer.stop()
        if not sol.converged:
            ran = "" if sol.iterations is None else f", {sol.iterations} iterations"
            where = f"n={x0.shape[0]}{ran}" + (", summed over the per-label sub-problems" if strict else "")
            message = f"OT solver {method!r} stopped at its budget ({where})"
            if self.on_failure == "raise":
                hint = _budget_hint(method, self.method, strict, self.plan_sampler)
                raise RuntimeError(f"{message}; {hint}, or pass on_failure='warn' to count and continue")
            self.failures += 1
            kept = "its plan was sampled as it was" if self.plan_sampler else "its result was repaired into a permutation"
            log.warning("%s; %s (failure %d)", message, kept, self.failures)
        return sol, method, ms

    def couple(
        self,
        x0: Tensor,
        x1: Tensor,
        c0: Tensor | None = None,
        c1: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Coupling:
        """Match the batches and return the pairing with its statistics (see :meth:`match`). The
        statistics cost two passes over the batches (about 11 ms at n=1024, d=3072 on one CPU
        core), which ``Coupling.ms`` leaves out."""
        sol, method, ms = self._pair(x0, x1, c0, c1, generator)
        with torch.no_grad():
            transport = float(pair_cost(x0, x1[sol.perm], None).double().mean())
            independent = float(pair_cost(x0, x1, None).double().mean())
            unique = sol.perm.unique().numel() / x0.shape[0] if self.plan_sampler else None
        return Coupling(sol.perm, transport, independent, ms, sol.iterations, sol.converged, self.failures, unique, method)

    def match(
        self,
        x0: Tensor,
        x1: Tensor,
        c0: Tensor | None = None,
        c1: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return ``perm`` (LongTensor ``(n,)`` on the inputs' device): ``(x0[i], x1[perm[i]])`` are the pairs.

        Args:
            x0: ``(n, *shape)`` source batch.
            x1: ``(n, *shape)`` target batch.
            c0, c1: optional ``(n,)`` labels of the source and target samples.
            generator: random generator on the inputs' device for a plan sampler's draws (``None``:
                torch's global one); unused by the permutation methods.

        Returns:
            A permutation of ``range(n)``; under ``plan_sampler=True`` an index that may repeat targets.
            No statistics are computed (:meth:`couple` gives them).
        """
        return self._pair(x0, x1, c0, c1, generator)[0].perm

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        c0: Tensor | None = None,
        c1: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Return the paired batch ``(x0, x1[perm])``."""
        return x0, x1[self.match(x0, x1, c0, c1, generator)]
