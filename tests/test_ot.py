"""Tests for the coupling engine: solvers, errors, failure policy, conditional coupling."""

import itertools
import logging

import pytest
import torch

from otflow_lightning.ot import SOLVERS, OTCoupler, draw_source_labels, pair_cost, squared_euclidean
from otflow_lightning.ot.solvers import HAS_LAPJV, repair_permutation, solve_auction

EXACT = ["exact", "emd", "lsa"] + (["lapjv"] if HAS_LAPJV else [])


def brute_force_cost(cost: torch.Tensor) -> float:
    n = cost.shape[0]
    return min(float(cost[torch.arange(n), torch.tensor(p)].sum()) for p in itertools.permutations(range(n)))


def is_permutation(perm: torch.Tensor, n: int) -> bool:
    return perm.dtype == torch.long and sorted(perm.tolist()) == list(range(n))


def clouds(n, d, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + shift


@pytest.mark.parametrize("method", EXACT + ["auction"])
@pytest.mark.parametrize("d", [2, 40])
def test_exact_methods_match_brute_force(method, d):
    for seed in range(4):
        x0, x1 = clouds(7, d, seed, shift=0.5)
        perm = OTCoupler(method).match(x0, x1)
        assert is_permutation(perm, 7)
        cost = squared_euclidean(x0, x1, torch.float64)
        got = float(cost[torch.arange(7), perm].sum())
        assert got == pytest.approx(brute_force_cost(cost), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", EXACT)
def test_exact_agrees_with_scipy_on_larger_batches(method):
    for d in (2, 64):
        x0, x1 = clouds(200, d, seed=d)
        cost = squared_euclidean(x0, x1, torch.float64)
        ref = cost[torch.arange(200), OTCoupler("lsa").match(x0, x1)].sum()
        got = cost[torch.arange(200), OTCoupler(method).match(x0, x1)].sum()
        assert float(got) == pytest.approx(float(ref), rel=1e-12)


def gap_closed(x0, x1, perm):
    opt = OTCoupler("lsa").match(x0, x1)
    c_ind, c_opt, c = (float(pair_cost(x0, x1[p]).sum()) for p in (torch.arange(len(x0)), opt, perm))
    return (c_ind - c) / (c_ind - c_opt)


@pytest.mark.parametrize(
    "method, options, d, floor",
    [
        ("auction", {}, 2, 0.99),
        ("auction", {}, 256, 0.99),
        ("sinkhorn", {}, 2, 0.98),
        ("sinkhorn", {}, 256, 0.95),
        ("bsp", {}, 2, 0.95),
    ],
)
def test_approximate_methods_close_the_gap(method, options, d, floor):
    x0, x1 = clouds(128, d, seed=1)
    x1 = x1 + torch.where(torch.arange(128)[:, None] % 2 == 0, 2.0, -2.0)  # two clusters
    coupling = OTCoupler(method, **options).couple(x0, x1)
    assert is_permutation(coupling.perm, 128)
    assert gap_closed(x0, x1, coupling.perm) >= floor
    assert coupling.cost_ratio < 1.0


def test_stats_are_logged_every_step():
    x0, x1 = clouds(32, 2, shift=3.0)
    stats = OTCoupler("auction").couple(x0, x1).stats()
    assert {"coupling/cost_ratio", "coupling/ms", "coupling/iterations", "coupling/failures"} <= stats.keys()
    assert 0 < stats["coupling/cost_ratio"] < 1 and stats["coupling/iterations"] > 0


def test_cost_is_accurate_far_from_origin():
    x0, x1 = clouds(6, 3, seed=3)
    a, b = x0 + 1e4, x1 + 1e4  # float32 inputs far from the origin
    exact = (a.double()[:, None] - b.double()[None]).square().sum(-1)
    assert torch.allclose(squared_euclidean(a, b), exact, rtol=1e-12, atol=1e-9)
    naive = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T  # the cancelling matmul form
    assert (naive.double() - exact).abs().max() > 1.0


def test_bfloat16_cost_error_is_bounded():
    x0, x1 = clouds(64, 3072, seed=5, shift=0.3)
    exact = squared_euclidean(x0, x1, torch.float64)
    fast = squared_euclidean(x0, x1, "bfloat16")
    assert fast.dtype == torch.float32
    # only the inner products run in bfloat16 (8-bit mantissa): each term is off by <= ~2**-8 |a||b|
    centre = 0.5 * (x0.mean(0) + x1.mean(0))
    scale = (x0 - centre).norm(dim=1)[:, None] * (x1 - centre).norm(dim=1)[None, :]
    err = (fast.double() - exact).abs()
    assert (err <= 2 * 2**-8 * scale.double()).all()
    assert err.max() > 1e-3  # it is the bfloat16 path: float32 would be ~100x closer
    assert (squared_euclidean(x0, x1, torch.float32).double() - exact).abs().max() < err.max() / 10


@pytest.mark.parametrize("data", ["gaussian", "clusters"])
def test_bfloat16_cost_keeps_the_assignment_near_optimal(data):
    x0, x1 = clouds(256, 784, seed=6)
    if data == "clusters":  # 8 well separated clusters: the gap to close is small against the cost
        centres = 3.0 * torch.randn(8, 784, generator=torch.Generator().manual_seed(7))
        x1 = centres[torch.arange(256) % 8] + 0.3 * x1
    perm = OTCoupler("exact", cost_dtype="bfloat16").match(x0, x1)
    assert is_permutation(perm, 256)
    opt = OTCoupler("lsa", cost_dtype="float64").match(x0, x1)
    c_ind, c_opt, c = (float(pair_cost(x0, x1[p]).sum()) for p in (torch.arange(256), opt, perm))
    assert (c_ind - c) / (c_ind - c_opt) >= 0.999
    assert c >= c_opt * (1 - 1e-12)


def test_single_precision_lapjv_finds_the_optimum():
    if not HAS_LAPJV:
        pytest.skip("lapjv not installed")
    x0, x1 = clouds(300, 784, seed=8)
    cost64 = squared_euclidean(x0, x1, torch.float64)
    ref = float(cost64[torch.arange(300), OTCoupler("lsa", cost_dtype="float64").match(x0, x1)].sum())
    perm = SOLVERS["lapjv"](squared_euclidean(x0, x1, torch.float32)).perm  # solved in float32
    assert float(cost64[torch.arange(300), perm].sum()) == pytest.approx(ref, rel=1e-6)


def test_reduced_cost_is_the_cost_less_row_and_column_potentials():
    x0, x1 = clouds(50, 40, seed=9, shift=2.0)
    full = squared_euclidean(x0, x1, torch.float64)
    reduced = squared_euclidean(x0, x1, torch.float64, reduced=True)
    alpha, beta = x0.double() - x0.double().mean(0), x1.double() - x1.double().mean(0)
    delta = x0.double().mean(0) - x1.double().mean(0)  # |a - b|^2 = |alpha - beta + delta|^2
    rows = alpha.square().sum(1) + 2 * alpha @ delta + delta.square().sum()
    cols = beta.square().sum(1) - 2 * beta @ delta
    assert torch.allclose(reduced + rows[:, None] + cols[None, :], full, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (10.0, 1.0), (127.5, 127.5)])
def test_bfloat16_cost_is_as_good_for_targets_far_from_the_noise(shift, scale):
    """The bfloat16 inner products' error scales with the clouds' spreads, not their distance: pixels
    in [0, 255] against N(0, I) noise pair as well as centred data (29% of the gap when the reduced
    cost was centred on the joint mean)."""
    x0, x1 = clouds(400, 512, seed=12)
    x1 = x1 * scale + shift
    optimal = pair_cost(x0, x1[OTCoupler("exact", cost_dtype="float64").match(x0, x1)]).mean()
    independent = pair_cost(x0, x1).mean()
    got = pair_cost(x0, x1[OTCoupler("exact", cost_dtype="bfloat16").match(x0, x1)]).mean()
    assert float((independent - got) / (independent - optimal)) >= 0.999


def mixture(n, d, seed):
    """Gaussian sources, targets in 8 tight clusters: the case where LAPJV's start matters most."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(8, d, generator=g)
    return torch.randn(n, d, generator=g), centres[torch.randint(0, 8, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("cost_dtype", [None, "bfloat16"])
def test_lapjv_is_exact_on_clustered_targets(cost_dtype):
    if not HAS_LAPJV:
        pytest.skip("lapjv not installed")
    x0, x1 = mixture(300, 64, seed=10)
    cost = squared_euclidean(x0, x1, cost_dtype, reduced=cost_dtype == "bfloat16")  # the cost the coupler solves
    ref = float(cost[torch.arange(300), SOLVERS["lsa"](cost).perm].sum())  # scipy on the same cost
    perm = OTCoupler("exact", cost_dtype=cost_dtype).match(x0, x1)
    assert is_permutation(perm, 300)
    assert float(cost[torch.arange(300), perm].sum()) == pytest.approx(ref, rel=1e-6)


def test_lapjv_starts_from_column_means_and_row_minima(monkeypatch):
    if not HAS_LAPJV:
        pytest.skip("lapjv not installed")
    import lapjv

    seen = []
    solve = lapjv.lapjv
    monkeypatch.setattr(lapjv, "lapjv", lambda cost: seen.append(cost.copy()) or solve(cost))
    x0, x1 = mixture(256, 64, seed=11)
    cost = squared_euclidean(x0, x1).T  # a transposed view: its transpose is storage the caller owns
    kept = cost.clone()
    SOLVERS["lapjv"](cost)
    assert torch.equal(cost, kept)  # the reduction works on a copy
    reduced = torch.from_numpy(seen[0])
    expected = cost - cost.mean(0, keepdim=True)
    expected -= expected.amin(1, keepdim=True)
    assert torch.allclose(reduced, expected, atol=1e-4)
    assert (reduced >= 0).all() and (reduced.amin(1) == 0).all()  # a feasible dual: a zero in every row


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("exact", {"clusters": 8}, r"OTCoupler\('exact'\) does not take \['clusters'\]; its options: \['max_iter', 'threads'\]"),
        ("sinkhorn", {"reg": 0.1}, r"does not take \['reg'\] \(POT's reg is epsilon here"),
        ("auction", {"eps_fnial": 1e-3}, r"does not take \['eps_fnial'\]; its options: \['eps_start', 'eps_final'"),
        ("bsp", {"n_plans": 0}, r"n_plans must be >= 1, got 0"),  # POT's BSP-OT crashes the process on 0
        ("auction", {"eps_final": 0.0}, r"eps_final must be > 0"),
        ("sinkhorn", {"epsilon": -1.0}, r"epsilon must be > 0"),
        ("lapjv", {"threads": 2}, r"its options: none"),
    ],
)
def test_unknown_or_impossible_solver_options_are_refused_when_the_coupler_is_built(method, options, message):
    with pytest.raises(ValueError, match=message):
        OTCoupler(method, **options)
    OTCoupler("lowrank", plan_sampler=True, epsilon=0.0)  # the low-rank solver takes epsilon 0


def test_a_registered_solver_takes_its_own_options(monkeypatch):
    from otflow_lightning.ot.solvers import Solution

    def solve_reversed(cost, x0=None, x1=None, *, flip=True, **options):
        n = cost.shape[0]
        return Solution(torch.arange(n).flip(0) if flip else torch.arange(n))

    monkeypatch.setitem(SOLVERS, "reversed", solve_reversed)
    x0, x1 = clouds(6, 2)
    assert OTCoupler("reversed", flip=True, anything=1).match(x0, x1).tolist() == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("weight", [-1.0, float("inf"), float("nan")])
def test_label_weight_must_be_finite_and_non_negative(weight):
    with pytest.raises(ValueError, match="label_weight must be a finite number >= 0, or None"):
        OTCoupler("exact", label_weight=weight)


def test_unknown_cost_dtype_is_an_error():
    with pytest.raises(ValueError, match="cost_dtype"):
        OTCoupler("exact", cost_dtype="float16")


@pytest.mark.parametrize(
    "x0, x1, match",
    [
        (torch.zeros(0, 2), torch.zeros(0, 2), "empty"),
        (torch.zeros(4, 2), torch.zeros(5, 2), "same shape"),
        (torch.tensor([[0.0, float("nan")]] * 2), torch.zeros(2, 2), "x0"),
        (torch.zeros(2, 2), torch.tensor([[float("inf"), 0.0]] * 2), "x1"),
    ],
)
def test_bad_batches_raise_value_error_naming_the_argument(x0, x1, match):
    with pytest.raises(ValueError, match=match):
        OTCoupler("exact").match(x0, x1)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="method"):
        OTCoupler("hungarian")
    with pytest.raises(ValueError, match="on_failure"):
        OTCoupler("exact", on_failure="ignore")
    with pytest.raises(ValueError, match="c0 and c1"):
        OTCoupler().match(torch.zeros(2, 2), torch.zeros(2, 2), c0=torch.zeros(2))


def test_unconverged_solve_raises_or_is_counted(caplog):
    x0, x1 = clouds(64, 2, shift=1.0)
    with pytest.raises(RuntimeError, match="budget"):
        OTCoupler("auction", max_rounds=3, check_every=1).match(x0, x1)
    coupler = OTCoupler("auction", on_failure="warn", max_rounds=3, check_every=1)
    with caplog.at_level(logging.WARNING):
        first = coupler.couple(x0, x1)
        second = coupler.couple(x0, x1)
    assert is_permutation(first.perm, 64) and not first.converged
    assert second.stats()["coupling/failures"] == 2.0 and coupler.failures == 2
    assert "budget" in caplog.text


def test_auction_breaks_ties_between_duplicated_points():
    """Repeated targets tie columns exactly; every tied bidder took the first of them and one column
    was won per round. Here 512 copies of one target took about 1600 rounds (27 with the tie-break)
    and 4 targets of 128 copies about 10000 (2451); n=4096 with 8 targets in d=32 ran out of its
    20000 rounds. Rows repeated fewer than TIE_BREAK_COPIES times do not turn the tie-break on."""
    from otflow_lightning.ot.solvers import has_repeated_rows

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 32, generator=g)
    assert not has_repeated_rows(x0) and not has_repeated_rows(torch.cat([x0[:7], x0[:7]]), copies=3)
    assert has_repeated_rows(torch.cat([x0[:3]] * 3 + [x0]), copies=3)
    for distinct, most_rounds in ((1, 100), (4, 4000)):
        x1 = torch.randn(distinct, 32, generator=g)[torch.arange(512) % distinct]
        assert has_repeated_rows(x1)
        coupling = OTCoupler("auction").couple(x0, x1)
        optimum = pair_cost(x0, x1[OTCoupler("lsa", cost_dtype="float64").match(x0, x1)]).sum()
        independent = pair_cost(x0, x1).sum()
        transport = pair_cost(x0, x1[coupling.perm]).sum()
        gap = float((independent - transport) / (independent - optimum)) if distinct > 1 else 1.0
        assert coupling.converged and is_permutation(coupling.perm, 512) and gap > 0.98, gap
        assert coupling.iterations <= most_rounds, coupling.iterations


def test_repair_permutation_completes_a_partial_assignment():
    assigned = torch.tensor([3, -1, 0, -1, -1, 1])
    perm = repair_permutation(assigned)
    assert is_permutation(perm, 6) and perm[[0, 2, 5]].tolist() == [3, 0, 1]


def test_auction_runs_on_float32_costs_and_stops_early():
    x0, x1 = clouds(128, 16, seed=5)
    sol = solve_auction(squared_euclidean(x0, x1, torch.float32))
    assert sol.converged and sol.iterations < 20_000
    assert gap_closed(x0, x1, sol.perm) > 0.99


def test_auction_reading_only_unassigned_rows_is_the_same_auction():
    """Compaction (bids read only the rows unassigned at the last look) changes nothing but the traffic."""
    from otflow_lightning.ot.solvers import _Auction, _auction_rounds

    x0, x1 = clouds(300, 20, seed=3, shift=1.0)
    cost = squared_euclidean(x0, x1, torch.float32)
    cost = cost - cost.mean()
    eps = 1e-3 * cost.std()
    full, compact = _Auction(torch.cat([-cost, cost[:1]])), _Auction(torch.cat([-cost, cost[:1]]))
    rounds = _auction_rounds(full, eps, 20_000, 4, 0, compact=False)
    assert _auction_rounds(compact, eps, 20_000, 4, 0, compact=True) == rounds > 10  # enough for the rows to shrink
    assert torch.equal(full.assigned[:300], compact.assigned[:300]) and torch.equal(full.price, compact.price)
    assert is_permutation(compact.assigned[:300], 300)  # tail 0: the auction itself ends with every row assigned


def test_graphed_auction_pads_bidders_and_serves_later_solves(monkeypatch):
    """The CUDA-graph auction's logic on the CPU, with "capture" standing in for run-then-record.

    Power-of-two bidder buckets (padded slots do not bid) and one object reused for a second cost
    give the plain auction's rounds and assignment; the number of recorded blocks stays small.
    """
    from otflow_lightning.ot import solvers
    from otflow_lightning.ot.solvers import _Auction, _auction_rounds, _GraphedAuction

    monkeypatch.setattr(solvers, "_cuda_graph", lambda fn, device: (fn(), fn)[1])
    n = 300
    graphed = _GraphedAuction(torch.zeros(n + 1, n), block=4)
    for seed in (3, 4):  # the second solve reuses the first one's buffers and recorded blocks
        x0, x1 = clouds(n, 20, seed=seed, shift=1.0)
        cost = squared_euclidean(x0, x1, torch.float32)
        cost = cost - cost.mean()
        eps = 1e-3 * cost.std()
        plain = _Auction(torch.cat([-cost, cost[:1]]))
        torch.neg(cost, out=graphed.benefit[:n])
        graphed.price.zero_()
        rounds = _auction_rounds(plain, eps, 20_000, 4, 0)
        assert _auction_rounds(graphed, eps, 20_000, 4, 0) == rounds > 10
        assert torch.equal(graphed.assigned[:n], plain.assigned[:n]) and torch.equal(graphed.price, plain.price)
    assert set(graphed.graphs) <= {2**i for i in range(9)} | {n} and len(graphed.graphs) >= 3


def test_sinkhorn_prices_reach_the_entropic_fixed_point():
    """After enough steps, the plan exp((f + g - C) / eps) has uniform row and column sums."""
    from otflow_lightning.ot.solvers import sinkhorn_prices

    x0, x1 = clouds(64, 5, seed=4)
    cost = squared_euclidean(x0, x1)
    eps = torch.tensor(0.3) * cost.std()
    g = sinkhorn_prices(cost, eps, 300)
    f = -eps * torch.logsumexp((g[None, :] - cost) / eps, dim=1)
    plan = torch.exp((f[:, None] + g[None, :] - cost) / eps)
    ones = torch.ones(64, dtype=cost.dtype)
    assert torch.allclose(plan.sum(1), ones, atol=1e-9) and torch.allclose(plan.sum(0), ones, atol=1e-9)
    f1 = -eps * torch.logsumexp((sinkhorn_prices(cost, eps, 1)[None, :] - cost) / eps, dim=1)
    plan1 = torch.exp((f1[:, None] + sinkhorn_prices(cost, eps, 1)[None, :] - cost) / eps)
    assert not torch.allclose(plan1.sum(0), ones, atol=1e-2)  # one step is not there yet

# ---------------------------------------------------------------- conditional coupling (C2OT)
def labelled_target(n, seed=0):
    """Two classes at x = -3 and x = +3."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x1 = torch.randn(n, 2, generator=g) * 0.3
    x1[:, 0] += torch.where(labels == 1, 3.0, -3.0)
    return x1, labels, g


@pytest.mark.parametrize("label_weight", [None, 1e3])
def test_conditional_pairs_respect_labels(label_weight):
    x1, c1, g = labelled_target(200)
    x0 = torch.randn(200, 2, generator=g)
    c0 = draw_source_labels(c1, g)
    assert torch.equal(torch.bincount(c0), torch.bincount(c1))
    perm = OTCoupler("exact", label_weight=label_weight).match(x0, x1, c0, c1)
    assert is_permutation(perm, 200)
    assert torch.equal(c1[perm], c0)


def test_strict_labels_are_optimal_within_each_class():
    x1, c1, g = labelled_target(60, seed=2)
    x0, c0 = torch.randn(60, 2, generator=g), draw_source_labels(c1, g)
    perm = OTCoupler("exact").match(x0, x1, c0, c1)
    for k in (0, 1):
        rows, cols = torch.nonzero(c0 == k).flatten(), torch.nonzero(c1 == k).flatten()
        sub = OTCoupler("lsa").match(x0[rows], x1[cols])
        assert float(pair_cost(x0[rows], x1[perm[rows]]).sum()) == pytest.approx(float(pair_cost(x0[rows], x1[cols[sub]]).sum()))


def test_conditional_source_is_the_prior_in_every_class_while_inherited_labels_skew_it():
    """C2OT's train/test skew: after plain OT, noise paired with class 1 (at x=+3) sits at x > 0."""
    x1, c1, g = labelled_target(2000, seed=3)
    x0 = torch.randn(2000, 2, generator=g)
    inherited = c1[OTCoupler("exact").match(x0, x1)]  # plain OT, then the noise takes its partner's label
    c0 = draw_source_labels(c1, g)
    OTCoupler("exact").match(x0, x1, c0, c1)
    for k in (0, 1):
        # under conditional coupling each class's noise is N(0, I): mean ~ 0 (std error ~ 0.03)
        assert abs(float(x0[c0 == k, 0].mean())) < 0.15
    assert abs(float(x0[inherited == 1, 0].mean())) > 0.5  # the skew the conditional coupling avoids


def test_strict_labels_need_equal_counts():
    x1, c1, g = labelled_target(20)
    with pytest.raises(ValueError, match="draw_source_labels"):
        OTCoupler("exact").match(torch.randn(20, 2), x1, torch.zeros(20, dtype=torch.long), c1)


def test_every_registered_solver_returns_a_permutation():
    x0, x1 = clouds(50, 3, seed=7)
    for method in SOLVERS:
        assert is_permutation(OTCoupler(method).match(x0, x1), 50), method


def separated_clusters(n, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(k, d, generator=g)
    return torch.randn(n, d, generator=g), centres[torch.arange(n) % k] + 0.5 * torch.randn(n, d, generator=g)


def test_kmeans_recovers_separated_clusters():
    from otflow_lightning.ot.clusters import kmeans

    _, x = separated_clusters(300, 16, 5, seed=2)
    truth = torch.arange(300) % 5
    for seed in range(5):
        centres, labels = kmeans(x, 5, 10, torch.Generator().manual_seed(seed))
        assert len({(int(t), int(l)) for t, l in zip(truth, labels)}) == 5  # each true cluster is one label
        assert torch.allclose(centres[labels[:5]], torch.stack([x[truth == j].mean(0) for j in range(5)]), atol=1e-4)


def test_multiscale_with_one_leaf_is_exact():
    x0, x1 = clouds(96, 8, seed=4)
    cost = squared_euclidean(x0, x1, torch.float64)
    exact = float(cost[torch.arange(96), OTCoupler("lsa").match(x0, x1)].sum())
    perm = OTCoupler("multiscale", leaf_size=96).match(x0, x1)
    assert is_permutation(perm, 96)
    assert float(cost[torch.arange(96), perm].sum()) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("d", [2, 256])
def test_multiscale_is_near_exact_on_clustered_targets(d):
    x0, x1 = separated_clusters(512, d, 8, seed=3)
    coupling = OTCoupler("multiscale", leaf_size=64).couple(x0, x1)
    assert is_permutation(coupling.perm, 512)
    assert gap_closed(x0, x1, coupling.perm) >= 0.95
    assert coupling.iterations == 10


def test_multiscale_works_on_the_points_without_a_cost_matrix(monkeypatch):
    def no_matrix(*args, **kwargs):
        raise AssertionError("the n x n cost matrix was built")

    monkeypatch.setattr(OTCoupler, "cost_matrix", no_matrix)
    x0, x1 = separated_clusters(64, 4, 2, seed=5)
    assert is_permutation(OTCoupler("multiscale", leaf_size=32).match(x0, x1), 64)
    assert is_permutation(OTCoupler("bsp").match(x0, x1), 64)
    with pytest.raises(ValueError, match="label_weight"):
        OTCoupler("multiscale", label_weight=1.0)
    with pytest.raises(ValueError, match="cost_dtype"):
        OTCoupler("multiscale", cost_dtype="bfloat16")
    with pytest.raises(ValueError, match="leaf_size must be >= 1"):
        OTCoupler("multiscale", leaf_size=0).match(x0, x1)


def test_multiscale_sweeps_never_raise_the_cost_and_close_more_of_the_gap():
    x0, x1 = clouds(512, 64, seed=9)  # an unclustered cloud: the hard case for clusters
    gaps = [gap_closed(x0, x1, OTCoupler("multiscale", leaf_size=128, sweeps=s).match(x0, x1)) for s in (0, 1, 3)]
    assert gaps[0] <= gaps[1] <= gaps[2] <= 1.0
    assert gaps[2] > gaps[0] + 0.01


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_one_pair_and_identical_points_are_solved_not_budget_errors(method):
    """n = 1 and a constant cost (all points equal): every permutation is optimal; none may hit a budget."""
    for x0, x1 in [(torch.randn(1, 3), torch.randn(1, 3)), (torch.ones(9, 3), torch.ones(9, 3))]:
        coupling = OTCoupler(method).couple(x0, x1)
        assert coupling.converged and is_permutation(coupling.perm, x0.shape[0])


@pytest.mark.parametrize("method", ["exact", "emd", "multiscale"])
@pytest.mark.parametrize("scale", [1e-7, 1e7])
def test_network_simplex_is_exact_at_any_cost_scale(method, scale):
    """POT's simplex has an absolute tolerance: on raw costs of 1e-14 it stopped at 7x the optimum."""
    x0, x1 = (x * scale for x in clouds(128, 2, seed=3))
    cost = squared_euclidean(x0.double(), x1.double())
    optimum = cost[torch.arange(128), OTCoupler("lsa").match(x0.double(), x1.double())].sum()
    perm = OTCoupler(method, leaf_size=32).match(x0, x1) if method == "multiscale" else OTCoupler(method).match(x0, x1)
    if method == "multiscale":  # not exact, but its coarse transport must not be the weak link
        assert cost[torch.arange(128), perm].sum() <= 1.05 * optimum
    else:
        assert float(cost[torch.arange(128), perm].sum() / optimum) == pytest.approx(1.0, abs=1e-12)


def test_emd_budget_follows_the_failure_policy():
    x0, x1 = clouds(64, 2)
    coupling = OTCoupler("exact", max_iter=3, on_failure="warn").couple(x0, x1)
    assert not coupling.converged and coupling.failures == 1 and is_permutation(coupling.perm, 64)
    sampled = OTCoupler("emd", max_iter=3, on_failure="warn", plan_sampler=True).couple(x0, x1)
    assert is_permutation(sampled.perm, 64)  # the rounded plan is a permutation's
    with pytest.raises(RuntimeError, match=r"stopped at its budget \(n=64\); raise its budget: OTCoupler\('exact', "
                                           r"max_iter=\.\.\.\) .*dict_kwargs: \{max_iter: \.\.\.\}"):  # no "None iterations"
        OTCoupler("exact", max_iter=3).couple(x0, x1)
    labels = torch.arange(64) % 8  # per-label Sinkhorn on 8 points a class: say so, and what serves there
    with pytest.raises(RuntimeError, match=r"'sinkhorn' stopped .*summed over the per-label sub-problems.*"
                                           r"OTCoupler\('sinkhorn', max_iter=.*'exact' is cheap"):
        OTCoupler("sinkhorn", max_iter=2).couple(x0, x1, labels, labels)


def test_statistics_of_degenerate_and_budgeted_solves():
    """All points equal: cost_ratio 1 (no gain), not 0 (a perfect coupling); Sinkhorn reports the
    iterations it ran (POT's niter is 0-based)."""
    assert OTCoupler("exact").couple(torch.ones(8, 3), torch.ones(8, 3)).cost_ratio == 1.0
    x = torch.randn(16, 2)  # x0 == x1 pair by pair: independent pairing is optimal, anything else infinitely worse
    assert OTCoupler("exact").couple(x, x.clone()).cost_ratio == 1.0
    from otflow_lightning.ot import Coupling

    assert Coupling(torch.arange(16), cost=0.2, independent_cost=0.0, ms=0.0).cost_ratio == float("inf")
    x0, x1 = clouds(32, 2, shift=1.0)
    for budget in (1, 5):
        coupling = OTCoupler("sinkhorn", max_iter=budget, tol=1e-30, on_failure="warn").couple(x0, x1)
        assert coupling.iterations == budget and not coupling.converged


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_multiscale_clusters_half_precision_points_in_float32(dtype):
    """float16 cluster sums of 2D points at 300 overflowed to inf ("coarse transport did not fill every cluster")."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2048, 2, generator=g)
    centres = torch.randn(8, 2, generator=g) * 5 + 300
    x1 = centres[torch.randint(0, 8, (2048,), generator=g)] + torch.randn(2048, 2, generator=g)
    x0, x1 = x0.to(dtype), x1.to(dtype)
    perm = OTCoupler("multiscale", leaf_size=256).match(x0, x1)
    cost = squared_euclidean(x0.double(), x1.double())
    # the network simplex: exact (checked against brute force and scipy above), 10x faster than scipy here
    optimum = cost[torch.arange(2048), OTCoupler("exact").match(x0.double(), x1.double())].sum()
    independent = cost.diagonal().sum()
    assert float((independent - cost[torch.arange(2048), perm].sum()) / (independent - optimum)) > 0.99


def test_bad_dtypes_and_label_shapes_name_the_argument():
    x0, x1 = clouds(12, 2)
    labels = torch.arange(12) % 3
    with pytest.raises(ValueError, match="x0 .* must be a floating-point tensor, got torch.uint8"):
        OTCoupler("exact").couple(x0.to(torch.uint8), x1.to(torch.uint8))
    with pytest.raises(ValueError, match=r"must be 1-D, one class index per sample \(12,\)"):
        OTCoupler("exact").match(x0, x1, labels[:, None], labels[:, None])
    with pytest.raises(ValueError, match="labels c0 hold NaN"):
        OTCoupler("exact").match(x0, x1, labels.float().index_fill(0, torch.tensor([2]), float("nan")), labels.float())
    with pytest.raises(ValueError, match="x1 must be a torch.Tensor, got ndarray; convert it with torch.as_tensor"):
        OTCoupler("exact").match(x0, x1.numpy())
    with pytest.raises(ValueError, match="c0 must be a torch.Tensor, got list"):
        OTCoupler("exact").match(x0, x1, labels.tolist(), labels)


def test_bsp_takes_non_contiguous_points():
    x0, x1 = (x.T.contiguous().T for x in clouds(64, 2))  # column-major views
    assert not x0.is_contiguous()
    perm = OTCoupler("bsp").match(x0, x1)
    optimum = pair_cost(x0, x1[OTCoupler("lsa").match(x0, x1)]).sum()
    assert is_permutation(perm, 64) and pair_cost(x0, x1[perm]).sum() <= 1.1 * optimum
