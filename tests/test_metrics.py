import itertools

import pytest
import torch

from otflow_lightning.metrics import (
    SlicedWasserstein2,
    Wasserstein2,
    images_to_uint8,
    sliced_wasserstein2_squared,
    wasserstein2_squared,
)
from otflow_lightning.metrics.sliced_wasserstein import random_directions


def test_exact_w2_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen) + 1
    cost = torch.cdist(x.double(), y.double()) ** 2
    best = min(sum(cost[i, p[i]] for i in range(6)) / 6 for p in itertools.permutations(range(6)))
    assert float(wasserstein2_squared(x, y)) == pytest.approx(float(best), rel=1e-12)


def test_w2_metric_accumulates_like_the_functional():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 2, generator=gen), torch.randn(40, 2, generator=gen) * 2
    metric = Wasserstein2()
    for part in x.split(16):
        metric.update(part, real=False)
    metric.update(y, real=True)
    assert float(metric.compute()) == pytest.approx(float(wasserstein2_squared(x, y)), rel=1e-12)


def test_sliced_w2_of_a_translation_is_the_mean_projected_shift():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    theta = random_directions(5, 4000, seed=7)
    value = sliced_wasserstein2_squared(x, x + shift, n_projections=4000, seed=7)
    # each 1D projection is an exact shift by theta . shift
    assert float(value) == pytest.approx(float((shift @ theta).square().mean()), rel=1e-9)
    # and the average over directions tends to |shift|^2 / d
    assert float(value) == pytest.approx(float(shift.square().sum() / 5), rel=0.05)


def test_sliced_w2_equal_sizes_match_pot():
    from ot import wasserstein_1d

    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(100, 3, generator=gen), torch.randn(100, 3, generator=gen) * 2
    theta = random_directions(3, 32, seed=5)
    expected = wasserstein_1d(x.double() @ theta, y.double() @ theta, p=2).mean()
    assert float(sliced_wasserstein2_squared(x, y, n_projections=32, seed=5)) == pytest.approx(float(expected), rel=1e-10)


def test_sliced_w2_is_at_most_exact_w2_and_metric_matches_functional():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 4, generator=gen), torch.randn(150, 4, generator=gen) * 1.5 + 0.3
    sliced = sliced_wasserstein2_squared(x, y, n_projections=64, seed=1)
    assert 0 < float(sliced) <= float(wasserstein2_squared(x, y))
    metric = SlicedWasserstein2(n_projections=64, seed=1)
    metric.update(x[:120], real=False)
    metric.update(x[120:], real=False)
    metric.update(y, real=True)
    assert float(metric.compute()) == pytest.approx(float(sliced), rel=1e-12)


def test_images_to_uint8_rounds_and_inverts_the_uint8_grid():
    k = torch.arange(256)
    assert torch.equal(images_to_uint8(k / 127.5 - 1).long(), k)
    assert images_to_uint8(torch.tensor([-3.0, -1.0, 0.999, 2.0])).tolist() == [0, 0, 255, 255]
    u8 = torch.tensor([7], dtype=torch.uint8)
    assert images_to_uint8(u8) is u8


def test_cached_real_fid_matches_torchmetrics_and_scipy_sqrtm():
    import numpy as np
    from scipy import linalg
    from torchmetrics.image.fid import FrechetInceptionDistance

    from eval_modules import PixelFeatures
    from otflow_lightning.metrics.fid import CachedRealFID

    gen = torch.Generator().manual_seed(5)
    real = torch.randint(0, 256, (40, 1, 8, 8), generator=gen, dtype=torch.uint8)
    fakes = [torch.randint(0, 200, (30, 1, 8, 8), generator=gen, dtype=torch.uint8) for _ in range(2)]
    ours = CachedRealFID(PixelFeatures(), reset_real_features=False)
    ours.update(real, real=True)
    for fake in fakes:  # the second compute reuses the cached square root of the real covariance
        ours.reset()
        ours.update(fake, real=False)
        reference = FrechetInceptionDistance(PixelFeatures())
        reference.update(real, real=True)
        reference.update(fake, real=False)
        f_r, f_g = (PixelFeatures()(x).double().numpy() for x in (real, fake))
        s_r, s_g = np.cov(f_r, rowvar=False), np.cov(f_g, rowvar=False)
        scipy_fid = ((f_r.mean(0) - f_g.mean(0)) ** 2).sum() + np.trace(s_r + s_g - 2 * linalg.sqrtm(s_r @ s_g).real)
        assert float(ours.compute()) == pytest.approx(float(reference.compute()), rel=1e-5)
        assert float(ours.compute()) == pytest.approx(scipy_fid, rel=1e-5)


def test_exact_w2_of_non_finite_samples_is_nan_not_zero():
    x, y = torch.randn(20, 2), torch.randn(20, 2)
    x[3, 1] = float("nan")
    assert torch.isnan(wasserstein2_squared(x, y))  # POT scored it 0, the best value
    metric = Wasserstein2()
    metric.update(x, real=False)
    metric.update(y, real=True)
    assert torch.isnan(metric.compute())


@pytest.mark.parametrize("scale, offset", [(1e-7, 0.0), (1e7, 0.0), (1.0, 1e7)])
def test_exact_w2_holds_at_any_scale_and_offset(scale, offset):
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 2, generator=gen, dtype=torch.float64), torch.randn(64, 2, generator=gen, dtype=torch.float64)
    reference = float(wasserstein2_squared(x, y))
    assert float(wasserstein2_squared(x * scale + offset, y * scale + offset)) / scale**2 == pytest.approx(reference, rel=1e-9)


def test_metrics_refuse_mixed_or_empty_sample_shapes():
    with pytest.raises(ValueError, match="same sample shape"):
        wasserstein2_squared(torch.randn(5, 2, 3), torch.randn(5, 3, 2))
    with pytest.raises(ValueError, match="at least one sample"):
        wasserstein2_squared(torch.randn(0, 2), torch.randn(5, 2))
    for metric in (Wasserstein2(), SlicedWasserstein2()):
        metric.update(torch.randn(8, 4), real=True)
        with pytest.raises(ValueError, match=r"samples of shape \(6,\) after samples of shape \(4,\)"):
            metric.update(torch.randn(8, 6), real=False)
        metric.reset()
        metric.update(torch.randn(8, 6), real=False)  # a reset starts afresh
