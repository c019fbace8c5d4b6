import itertools

import pytest
import torch

from otflow_lightning.ot import OTCoupler, pair_cost


def brute_force(x0, x1):
    n = x0.shape[0]
    cost = torch.cdist(x0.double(), x1.double()).square()
    return min(cost[torch.arange(n), torch.tensor(p)].sum().item() for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("method", ["exact", "lsa"])
@pytest.mark.parametrize("seed", range(5))
def test_exact_methods_match_brute_force(method, seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g) * 2 + 1
    coupling = OTCoupler(method).couple(x0, x1)
    assert sorted(coupling.perm.tolist()) == list(range(7))
    assert abs(pair_cost(x0, x1[coupling.perm]).sum().item() - brute_force(x0, x1)) < 1e-9
    assert coupling.cost <= coupling.independent_cost + 1e-12


def test_label_cost_matches_within_labels():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g)
    c0, c1 = torch.arange(40) % 4, torch.arange(40).flip(0) % 4
    perm = OTCoupler("exact").match(x0, x1, c0, c1)
    assert torch.equal(c0, c1[perm])
