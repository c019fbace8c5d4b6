import pytest
import torch

from otflow_lightning.data import TOYS, ToyDataset, sample_toy


def energy_statistic(x, y):
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (zero iff the distributions agree)."""
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def energy_pvalue(x, y, permutations=200, seed=0):
    """Permutation p-value of the energy two-sample test."""
    g = torch.Generator().manual_seed(seed)
    observed = energy_statistic(x, y)
    joint, n = torch.cat([x, y]), x.shape[0]
    hits = 0
    for _ in range(permutations):
        p = torch.randperm(joint.shape[0], generator=g)
        hits += int(energy_statistic(joint[p[:n]], joint[p[n:]]) >= observed)
    return (hits + 1) / (permutations + 1)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_shape_finite_and_seeded(name):
    a = sample_toy(name, 500, torch.Generator().manual_seed(3))
    b = sample_toy(name, 500, torch.Generator().manual_seed(3))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a.std(0).min() > 0.3  # not degenerate


def test_toy_moments():
    x = sample_toy("8gaussians", 20000, torch.Generator().manual_seed(0))
    # centres at radius 5, std 0.1 ** 0.25 per axis: E|x|^2 = 25 + 2 * sqrt(0.1)
    assert abs(x.square().sum(1).mean().item() - (25 + 2 * 0.1**0.5)) < 0.2
    y = sample_toy("checkerboard", 20000, torch.Generator().manual_seed(0))
    assert y.abs().max() <= 4.0 + 1e-6
    # checkerboard: exactly half of the 4x4 cells are occupied
    cells = torch.unique((torch.floor(y / 2) + 2).long(), dim=0)
    assert cells.shape[0] == 8


@pytest.mark.parametrize("ours,theirs", [("8gaussians", "sample_8gaussians"), ("moons", "sample_moons")])
def test_toys_match_torchcfm(ours, theirs):
    utils = pytest.importorskip("torchcfm.utils")
    torch.manual_seed(1)
    x = sample_toy(ours, 600, torch.Generator().manual_seed(2))
    y = getattr(utils, theirs)(600).float()
    assert energy_pvalue(x, y) > 0.01
    # the test has power: the other torchcfm toy, or sklearn-style moons (noise per point), fail it
    other = utils.sample_8gaussians(600).float() if ours == "moons" else utils.sample_moons(600).float()
    assert energy_pvalue(x, other) < 0.01


def test_moons_differs_from_sklearn_style_moons():
    """torchcfm's moons add one uniform offset to both coordinates; per-axis Gaussian noise is another law."""
    g = torch.Generator().manual_seed(0)
    x = sample_toy("moons", 600, g)
    angle = torch.rand(600, generator=g) * torch.pi
    inner = torch.rand(600, generator=g) < 0.5
    pts = torch.stack([torch.where(inner, 1 - angle.cos(), angle.cos()), torch.where(inner, 0.5 - angle.sin(), angle.sin())], 1)
    sk = (pts + 0.2 * torch.randn(600, 2, generator=g)) * 3 - 1
    assert energy_pvalue(x, sk) < 0.01


def test_unknown_toy_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown toy distribution 'moon'.*moons"):
        sample_toy("moon", 10)


def test_toy_dataset_is_finite_and_reproducible():
    a, b = ToyDataset("spiral", 1000, seed=5), ToyDataset("spiral", 1000, seed=5)
    assert len(a) == 1000 and torch.equal(a.points, b.points)
    with pytest.raises(ValueError, match="size"):
        ToyDataset("spiral", 0)
