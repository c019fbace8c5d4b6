"""``OTCoupler("auto")``, the default: which solver it picks, and what the pick delivers."""

import pytest
import torch

from otflow_lightning.data import OTPairDataModule
from otflow_lightning.ot import OTCoupler, Solution, auto_method, pair_cost
from otflow_lightning.ot import coupler as coupler_module
from otflow_lightning.ot.coupler import multiscale_trial


def gap_closed(x0, x1, perm):
    independent = pair_cost(x0, x1).double().mean()
    optimal = pair_cost(x0, x1[OTCoupler("exact", cost_dtype="float64").match(x0, x1)]).double().mean()
    return float((independent - pair_cost(x0, x1[perm]).double().mean()) / (independent - optimal))


def test_auto_is_the_default():
    assert OTCoupler().method == "auto"
    assert OTPairDataModule("moons", batch_size=8).coupler.method == "auto"


def test_auto_is_exact_in_low_dimension():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 2
    coupling = OTCoupler("auto").couple(x0, x1)
    assert coupling.method == "exact"
    assert gap_closed(x0, x1, coupling.perm) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("bf16, cost_dtype", [(True, "bfloat16"), (False, None)])
def test_auto_uses_a_bfloat16_cost_only_on_cpus_with_bfloat16_units(monkeypatch, bf16, cost_dtype):
    monkeypatch.setattr(coupler_module, "fast_bfloat16_cpu", lambda: bf16)
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(256, 300, generator=g), torch.randn(256, 300, generator=g)
    assert auto_method(x0, x1) == ("exact", cost_dtype)
    coupling = OTCoupler("auto").couple(x0, x1)
    assert coupling.method == "exact"
    assert gap_closed(x0, x1, coupling.perm) >= (0.999 if bf16 else 1 - 1e-9)


@pytest.mark.parametrize(
    "n, label_weight, trial, expected",
    [(4096, None, 0.96, "multiscale"), (4096, None, 0.95, "exact"), (2048, None, 1.0, "exact"), (4096, 1.0, 1.0, "exact")],
)
def test_auto_takes_multiscale_only_for_large_batches_where_its_trial_passes(monkeypatch, n, label_weight, trial, expected):
    monkeypatch.setattr(coupler_module, "multiscale_trial", lambda x0, x1: trial)
    x = torch.zeros(n, 32)
    assert auto_method(x, x, label_weight)[0] == expected


def mixture(n, d, k, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = scale * torch.randn(k, d, generator=g)
    return torch.randn(n, d, generator=g), centres[torch.randint(0, k, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


def test_auto_sends_a_clustered_large_batch_to_multiscale_and_a_gaussian_one_to_exact(monkeypatch):
    monkeypatch.setattr(coupler_module, "fast_bfloat16_cpu", lambda: False)
    x0, x1 = mixture(4096, 32, k=8, scale=3.0)
    assert multiscale_trial(x0, x1) > 0.99
    coupling = OTCoupler("auto").couple(x0, x1)
    assert coupling.method == "multiscale"
    assert gap_closed(x0, x1, coupling.perm) >= 0.99
    # Gaussian targets: cluster boundaries are arbitrary, multiscale closes about 90% of the gap
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(4096, 32, generator=g)
    assert multiscale_trial(x0, x1) < 0.95
    coupling = OTCoupler("auto").couple(x0, x1)
    assert coupling.method == "exact" and gap_closed(x0, x1, coupling.perm) == pytest.approx(1.0, abs=1e-6)


def test_auto_runs_its_trial_once_per_sample_shape(monkeypatch):
    calls = []
    monkeypatch.setattr(coupler_module, "multiscale_trial", lambda x0, x1: calls.append(x0.shape) or 1.0)
    identity = lambda cost, x0, x1: Solution(torch.arange(x0.shape[0]))  # noqa: E731 (multiscale itself is tested elsewhere)
    monkeypatch.setattr(coupler_module, "SOLVERS", {**coupler_module.SOLVERS, "multiscale": identity})
    coupler = OTCoupler("auto")
    for n, d in ((4096, 20), (4096, 20), (5000, 20), (4096, 30), (100, 30)):
        assert coupler.couple(torch.randn(n, d), torch.randn(n, d)).method == ("multiscale" if n >= 4096 else "exact")
    assert calls == [torch.Size([4096, 20]), torch.Size([4096, 30])]


def test_auto_reports_each_labels_choice():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    c = torch.arange(64) % 4
    coupling = OTCoupler("auto").couple(x0, x1, c, c)
    assert coupling.method == "exact"
    assert torch.equal(c[coupling.perm], c)


@pytest.mark.parametrize(
    "options", [dict(cost_dtype="bfloat16"), dict(plan_sampler=True), dict(leaf_size=256)]
)
def test_auto_refuses_settings_that_belong_to_a_named_method(options):
    with pytest.raises(ValueError, match="'auto' chooses the solver .* name a method"):
        OTCoupler("auto", **options)
