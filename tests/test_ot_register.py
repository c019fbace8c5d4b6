"""Solvers of your own: registered (on the cost matrix or the points) or named by import path, their
options checked when the coupler is built, their result checked to be a permutation."""

import pickle
import textwrap

import pytest
import torch

from otflow_lightning import OTPairDataModule
from otflow_lightning.ot import SOLVERS, OTCoupler, Solution, pair_cost, register_solver
from otflow_lightning.ot.solvers import POINT_METHODS


def sorted_1d(cost, x0, x1):
    """Exact in 1D: the k-th smallest source takes the k-th smallest target (cost unused)."""
    assert cost is None, "a point solver gets no cost matrix"
    perm = torch.empty_like(x0[:, 0], dtype=torch.long)
    perm[torch.argsort(x0[:, 0])] = torch.argsort(x1[:, 0])
    return Solution(perm)


def greedy(cost, x0=None, x1=None, reverse: bool = False):
    """Row by row, the cheapest free target (``reverse``: rows in reverse order)."""
    cost, n = cost.clone().double(), cost.shape[0]
    perm = torch.empty(n, dtype=torch.long)
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        perm[i] = torch.argmin(cost[i])
        cost[:, perm[i]] = float("inf")
    return Solution(perm)


@pytest.fixture
def registered():
    register_solver("sorted_1d", sorted_1d, points=True)
    register_solver("greedy")(greedy)
    yield
    for name in ("sorted_1d", "greedy"):
        SOLVERS.pop(name, None)
        POINT_METHODS.discard(name)


def test_registered_solvers_pair_as_the_builtin_ones(registered):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 1, generator=g), 3 * torch.rand(64, 1, generator=g)
    exact = pair_cost(x0, x1[OTCoupler("exact").match(x0, x1)]).sum()
    torch.testing.assert_close(pair_cost(x0, x1[OTCoupler("sorted_1d").match(x0, x1)]).sum(), exact)
    perm = OTCoupler("greedy", reverse=True).match(x0, x1)
    assert sorted(perm.tolist()) == list(range(64)) and pair_cost(x0, x1[perm]).sum() >= exact
    with pytest.raises(ValueError, match=r"OTCoupler\('greedy'\) does not take \['rounds'\]; its options: \['reverse'\]"):
        OTCoupler("greedy", rounds=3)
    with pytest.raises(ValueError, match="works on the points and builds no cost matrix"):
        OTCoupler("sorted_1d", cost_dtype="bfloat16")


def test_a_registered_solver_that_returns_no_permutation_is_an_error():
    register_solver("broken", lambda cost, x0=None, x1=None: Solution(torch.zeros(cost.shape[0], dtype=torch.long)))
    try:
        with pytest.raises(RuntimeError, match=r"OT solver 'broken' returned no permutation of the batch \(n=8\); a "
                                               r"solver must return Solution\(perm\)"):
            OTCoupler("broken").couple(torch.randn(8, 2), torch.randn(8, 2))
    finally:
        SOLVERS.pop("broken")
    register_solver("gives_up", lambda cost, x0=None, x1=None: Solution(torch.arange(cost.shape[0]), converged=False))
    try:  # an unconverged result goes through the on_failure policy
        with pytest.raises(RuntimeError, match="'gives_up' takes no max_rounds or max_iter option"):
            OTCoupler("gives_up").couple(torch.randn(8, 2), torch.randn(8, 2))
        coupling = OTCoupler("gives_up", on_failure="warn").couple(torch.randn(8, 2), torch.randn(8, 2))
        assert coupling.stats()["coupling/failures"] == 1.0
    finally:
        SOLVERS.pop("gives_up")
    with pytest.raises(ValueError, match="solver name 'exact' is the library's"):
        register_solver("exact", greedy)


def test_a_solver_named_by_import_path_is_imported(tmp_path, monkeypatch, registered):
    (tmp_path / "my_solvers.py").write_text(textwrap.dedent("""
        import torch
        from otflow_lightning.ot import Solution

        def reverse(cost, x0=None, x1=None):
            return Solution(torch.arange(cost.shape[0] - 1, -1, -1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        dm = OTPairDataModule(target="moons", coupling="my_solvers.reverse")
        assert torch.equal(dm.coupler.match(torch.randn(5, 2), torch.randn(5, 2)), torch.arange(4, -1, -1))
        SOLVERS.pop("my_solvers.reverse")  # a process the coupler is sent to (DDP spawn) imports it again
        sent = pickle.loads(pickle.dumps(dm.coupler))
        assert torch.equal(sent.match(torch.randn(5, 2), torch.randn(5, 2)), torch.arange(4, -1, -1))
        # a function registered as a point solver keeps that under its import path
        assert OTCoupler(f"{__name__}.sorted_1d").match(torch.randn(6, 1), torch.randn(6, 1)).shape == (6,)
    finally:
        for name in ("my_solvers.reverse", f"{__name__}.sorted_1d"):
            SOLVERS.pop(name, None)
            POINT_METHODS.discard(name)
    with pytest.raises(ValueError, match=r"unknown coupling method 'my_solvers\.nothing'.*import path"):
        OTCoupler("my_solvers.nothing")


def test_registration_mistakes_are_named_where_they_are_made():
    with pytest.raises(TypeError, match=r"give the name, e.g. @register_solver\('mine'\)"):
        @register_solver
        def bare(cost, x0, x1):
            return Solution(torch.arange(cost.shape[0]))
    with pytest.raises(TypeError, match=r"calls it as fn\(cost, x0, x1, \*\*options\), which its signature does not take"):
        register_solver("one_arg", lambda cost: None)
    with pytest.raises(TypeError, match="fn must be a function, got a int"):
        register_solver("number", 3)
    with pytest.raises(TypeError, match="the name must be a non-empty string, got 3"):
        register_solver(3, greedy)
    with pytest.raises(ValueError, match="solver name 'online' is the library's"):
        register_solver("online", greedy)
    assert "one_arg" not in SOLVERS and "number" not in SOLVERS and 3 not in SOLVERS
    register_solver("tensor", lambda cost, x0=None, x1=None: torch.arange(cost.shape[0]))
    try:
        with pytest.raises(RuntimeError, match="OT solver 'tensor' returned a Tensor; a solver must return Solution"):
            OTCoupler("tensor").match(torch.randn(4, 2), torch.randn(4, 2))
    finally:
        SOLVERS.pop("tensor")
    register_solver("local", greedy)
    sent = pickle.loads(pickle.dumps(OTCoupler("local")))
    SOLVERS.pop("local")  # a DDP spawn worker that never ran the registration
    with pytest.raises(RuntimeError, match="OT solver 'local' is not registered in this process"):
        sent.match(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"unknown coupling method 'otflow_lightning.nothing' \(module otflow_lightning "
                                         r"has no 'nothing'\)"):
        OTCoupler("otflow_lightning.nothing")
