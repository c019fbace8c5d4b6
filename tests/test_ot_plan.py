"""Plan samplers: ``OTCoupler(method, plan_sampler=True)`` draws each source's target from a transport plan."""

import os
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from otflow_lightning.data import OTPairDataModule, sample_toy
from otflow_lightning.ot import OnlineCoupling, OTCoupler, draw_source_labels, pair_cost, squared_euclidean
from otflow_lightning.ot.solvers import PLANS, plan_sinkhorn, sample_plan

from conftest import CONFIGS


def gap_closed(x0, x1, perm):
    opt = OTCoupler("lsa").match(x0, x1)
    c_ind, c_opt, c = (float(pair_cost(x0, x1[p]).sum()) for p in (torch.arange(len(x0)), opt, perm))
    return (c_ind - c) / (c_ind - c_opt)


def test_sampled_targets_follow_the_plan_rows():
    plan = torch.tensor(
        [
            [0.50, 0.25, 0.25, 0.00],
            [0.00, 0.00, 0.10, 0.90],
            [0.20, 0.20, 0.20, 0.40],
        ],
        dtype=torch.float64,
    ) / 3  # rows of mass 1/3, columns not uniform: row- and column-normalising differ
    draws = 20_000
    j = sample_plan(plan.repeat(draws, 1), torch.Generator().manual_seed(0)).reshape(draws, 3)
    freq = torch.stack([torch.bincount(j[:, i], minlength=4) for i in range(3)]).double() / draws
    expected = plan / plan.sum(1, keepdim=True)
    assert (freq - expected).abs().max() < 0.015  # binomial std error <= 0.0036
    assert freq[expected == 0].sum() == 0  # never a target the plan gives no mass


def test_coupler_samples_the_plan_with_its_generator():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g) + 1.0
    coupler = OTCoupler("sinkhorn", plan_sampler=True)
    got = coupler.match(x0, x1, generator=torch.Generator().manual_seed(7))
    plan = plan_sinkhorn(squared_euclidean(x0, x1)).plan
    assert torch.equal(got, sample_plan(plan, torch.Generator().manual_seed(7)))
    assert torch.equal(got, coupler.match(x0, x1, generator=torch.Generator().manual_seed(7)))  # reproducible
    assert not torch.equal(got, coupler.match(x0, x1, generator=torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("d", [2, 40])
def test_exact_plan_sampler_returns_the_exact_permutation(d):
    g = torch.Generator().manual_seed(d)
    x0, x1 = torch.randn(60, d, generator=g), torch.randn(60, d, generator=g) + 0.5
    coupling = OTCoupler("exact", plan_sampler=True).couple(x0, x1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(coupling.perm, OTCoupler("lsa").match(x0, x1))
    assert coupling.unique_targets == 1.0 and coupling.stats()["coupling/unique_targets"] == 1.0


@pytest.mark.parametrize("method, floor", [("lowrank", 0.85), ("sinkhorn", 0.9)])
def test_plan_samplers_close_the_gap_on_clustered_2d_data(method, floor):
    """8gaussians, n=256. Measured gap closed of the sampled pairs over seeds 0-4: lowrank (rank 32)
    0.93-0.97, sinkhorn 0.95-0.98; exact-or-better permutations would be 1 (sampled pairs may exceed 1)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(256, 2, generator=g), sample_toy("8gaussians", 256, generator=g)
    coupling = OTCoupler(method, plan_sampler=True).couple(x0, x1, generator=torch.Generator().manual_seed(0))
    assert gap_closed(x0, x1, coupling.perm) >= floor
    # honest statistics: the cost is that of the sampled pairs, and the duplication is visible
    assert coupling.cost == pytest.approx(float(pair_cost(x0, x1[coupling.perm]).mean()))
    assert coupling.unique_targets == pytest.approx(coupling.perm.unique().numel() / 256)
    assert coupling.unique_targets < 0.8


def test_plan_sampler_respects_strict_labels():
    g = torch.Generator().manual_seed(1)
    c1 = torch.randint(0, 3, (90,), generator=g)
    x1 = torch.randn(90, 2, generator=g) + 3.0 * c1[:, None]
    x0, c0 = torch.randn(90, 2, generator=g), draw_source_labels(c1, g)
    perm = OTCoupler("sinkhorn", plan_sampler=True).match(x0, x1, c0, c1, generator=g)
    assert torch.equal(c1[perm], c0)


def test_unsupported_combinations_raise():
    with pytest.raises(ValueError, match="plan_sampler=True"):
        OTCoupler("lowrank")
    with pytest.raises(ValueError, match=r"plan_sampler=True needs .*\['emd', 'exact', 'lowrank', 'sinkhorn'\]"):
        OTCoupler("auction", plan_sampler=True)
    for method in ("independent", "lapjv", "bsp", "lsa"):
        with pytest.raises(ValueError, match="plan_sampler"):
            OTCoupler(method, plan_sampler=True)
    with pytest.raises(ValueError, match="label_weight=None"):
        OTCoupler("lowrank", plan_sampler=True, label_weight=1.0)
    with pytest.raises(ValueError, match="label_weight=None"):
        OTCoupler("bsp", label_weight=1.0)  # BSP-OT, too, sees only the points
    with pytest.raises(ValueError, match="bijection"):
        OnlineCoupling(method="sinkhorn", plan_sampler=True)
    with pytest.raises(ValueError, match="rank"):
        OTCoupler("lowrank", plan_sampler=True, rank=0).match(torch.randn(8, 2), torch.randn(8, 2))
    with pytest.raises(ValueError, match="init"):
        OTCoupler("lowrank", plan_sampler=True, init="deterministic").match(torch.randn(8, 2), torch.randn(8, 2))
    assert set(PLANS) == {"exact", "emd", "sinkhorn", "lowrank"}


def test_datamodule_pairs_by_a_sampled_plan():
    labels = torch.randint(0, 2, (256,))
    data = TensorDataset(0.3 * torch.randn(256, 2) + torch.stack([6.0 * labels - 3.0, torch.zeros(256)], 1), labels)
    dm = OTPairDataModule(data, coupling=OTCoupler("lowrank", plan_sampler=True, rank=8), batch_size=64, seed=0)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, global_step=0)
    x, y = data.tensors[0][:64], data.tensors[1][:64]
    pair = dm.on_after_batch_transfer((torch.arange(64), (x, y)), 0)
    assert torch.equal(pair.x1, x[pair.index]) and torch.equal(pair.labels, y[pair.index])  # payload follows the index
    assert pair.index.unique().numel() < 64  # targets repeat
    assert pair.stats["coupling/unique_targets"] == pair.index.unique().numel() / 64
    assert pair.stats["coupling/cost"] == pytest.approx(float(pair_cost(pair.x0, pair.x1).mean()))
    assert gap_closed(pair.x0, x, pair.index) >= 0.8  # measured 0.85-1.0 over 5 data and 3 sampling seeds


def test_plan_sampler_fits_from_the_cli(in_tmp):
    """The config snippet of docs/coupling.md, in a short fit."""
    from otflow_lightning.cli import main

    coupling = (
        "{class_path: otflow_lightning.ot.OTCoupler, init_args: {method: lowrank, plan_sampler: true}, dict_kwargs: {rank: 32}}"
    )
    cli = main(
        [
            "fit", "--config", os.path.join(CONFIGS, "toy.yaml"), f"--data.init_args.coupling={coupling}",
            "--data.init_args.batch_size=64", "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        ]
    )
    coupler = cli.datamodule.coupler
    assert coupler.method == "lowrank" and coupler.plan_sampler and coupler.options == {"rank": 32}
    assert cli.trainer.global_step == 3
    assert 0 < float(cli.trainer.callback_metrics["coupling/unique_targets"]) < 1


def test_lowrank_plan_of_one_point_on_a_side_is_uniform():
    """n=1, all-equal targets, or a class of one sample under strict labels: every plan is optimal
    (k-means on one distinct point made POT's plan non-finite, an error)."""
    g = torch.Generator().manual_seed(0)
    coupler = OTCoupler("lowrank", plan_sampler=True)
    assert coupler.match(torch.randn(1, 2), torch.randn(1, 2), generator=g).tolist() == [0]
    plan = PLANS["lowrank"](None, torch.randn(16, 2, generator=g), torch.zeros(16, 2))
    assert torch.allclose(plan.plan, torch.full((16, 16), 1 / 256, dtype=torch.float64))
    c1 = torch.tensor([0] * 20 + [1] * 23 + [2])
    x0, x1 = torch.randn(44, 2, generator=g), torch.randn(44, 2, generator=g) + 3 * c1[:, None]
    perm = coupler.match(x0, x1, c1, c1, generator=g)
    assert torch.equal(c1[perm], c1) and perm[43] == 43  # labels respected; the single class-2 sample kept
