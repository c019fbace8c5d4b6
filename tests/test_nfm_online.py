"""The persistent (LOOM-style) online coupling: monotone global cost, optimum, checkpoints, DDP agreement."""

import itertools
import os
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from conftest import CONFIGS
from otflow_lightning import OnlineCoupling, OTMeanFlow, OTNeuralFlowMatching, OTPairDataModule
from otflow_lightning.data import sample_toy


def gaussian(n, g):
    return torch.randn(n, 2, generator=g)


def bound(size, **kwargs):
    online = OnlineCoupling(**kwargs)
    online.reset(size, gaussian, seed=0)
    return online


@pytest.mark.parametrize("method,store", [("exact", "vectors"), ("bsp", "vectors"), ("exact", "seeds")])
def test_global_cost_never_increases_and_noises_are_only_permuted(method, store):
    data = sample_toy("moons", 600, torch.Generator().manual_seed(1))
    online = bound(600, num_noises=2, method=method, store=store)
    assert online.stores_seeds == (store == "seeds")
    initial = online.bank.clone()
    costs = [online.global_cost(data)]
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randperm(600, generator=g)[:64]
        x0, coupling = online.couple(data[idx], idx, g)
        # the returned noise is the stored noise of the batch, paired by perm
        assert coupling.cost <= coupling.independent_cost + 1e-6
        costs.append(online.global_cost(data))
    assert all(b <= a + 1e-4 for a, b in zip(costs, costs[1:])), costs
    assert costs[-1] < 0.8 * costs[0]
    # no noise created or lost: the bank is a permutation of its initial entries
    assert torch.equal(sorted_entries(online.bank), sorted_entries(initial))


def sorted_entries(bank):
    flat = bank.reshape(bank.shape[0] * bank.shape[1], -1)
    return flat[torch.argsort(flat[:, 0])]


def test_full_batch_converges_to_the_brute_force_optimum():
    data = torch.randn(7, 2) * 2 + torch.tensor([3.0, 0.0])
    online = bound(7)
    noise = online.bank[:, 0].clone()
    best = min(sum(float((noise[i] - data[p[i]]).square().sum()) for i in range(7)) for p in itertools.permutations(range(7)))
    online.couple(data, torch.arange(7))
    assert online.global_cost(data) * 7 == pytest.approx(best, rel=1e-6)


def test_seed_store_regenerates_the_same_noise():
    online = bound(50, store="seeds")
    seeds = online.bank[:5, 0]
    assert torch.equal(online.noise(seeds), online.noise(seeds.clone()))
    assert online.noise(seeds).shape == (5, 2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_noises"):
        OnlineCoupling(num_noises=0)
    with pytest.raises(RuntimeError, match="reset"):
        OnlineCoupling().couple(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(IndexError, match="out of range"):
        bound(10).couple(torch.randn(4, 2), torch.arange(8, 12))


def _trainer(tmp, steps, **kwargs):
    return pl.Trainer(
        max_steps=steps, limit_val_batches=0, default_root_dir=tmp, logger=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )


def test_bank_is_checkpointed_and_restored_on_resume(tmp_path):
    tmp = str(tmp_path)
    pl.seed_everything(0)
    data = OTPairDataModule("moons", "8gaussians", coupling="online", batch_size=64, toy_size=1000, seed=0)
    model = OTMeanFlow(source="8gaussians")  # the online coupling serves OT-MF as well
    fresh = OTPairDataModule("moons", "8gaussians", coupling="online", batch_size=64, toy_size=1000, seed=0)
    fresh.setup("fit")
    trainer = _trainer(tmp, 5)
    trainer.fit(model, data)
    trained_bank = data.online.bank.clone()
    assert not torch.equal(trained_bank, fresh.online.bank)  # training rewrote it
    ckpt = os.path.join(tmp, "last.ckpt")
    trainer.save_checkpoint(ckpt)
    # resume: a new DataModule starts from a fresh bank and must get the trained one back
    resumed = OTPairDataModule("moons", "8gaussians", coupling="online", batch_size=64, toy_size=1000, seed=0)
    _trainer(tmp, 5).fit(OTMeanFlow(source="8gaussians"), resumed, ckpt_path=ckpt)
    assert torch.equal(resumed.online.bank, trained_bank)


def _ddp_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data = sample_toy("moons", 200, torch.Generator().manual_seed(1))
    online = bound(200, num_noises=2)
    g = torch.Generator().manual_seed(100 + rank)  # ranks draw different slots
    for step in range(5):
        order = torch.randperm(200, generator=torch.Generator().manual_seed(step))
        idx = order[rank * 40 : (rank + 1) * 40]  # disjoint batches, as a DistributedSampler gives
        online.couple(data[idx], idx, g)
    torch.save(online.bank, os.path.join(out, f"bank{rank}.pt"))
    dist.destroy_process_group()


def test_ranks_never_disagree_under_ddp(tmp_path):
    tmp = str(tmp_path)
    mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
    bank0, bank1 = (torch.load(os.path.join(tmp, f"bank{r}.pt")) for r in range(2))
    assert torch.equal(bank0, bank1)
    assert not torch.equal(bank0, bound(200, num_noises=2).bank)  # and both applied the updates


def test_cli_config_selects_online_coupling(tmp_path):
    from otflow_lightning.cli import main

    tmp = str(tmp_path)
    cli = main(
        ["--config", os.path.join(CONFIGS, "toy_nfm_online.yaml"), "--trainer.default_root_dir", tmp, "--data.init_args.toy_size", "2000"],
        run=False,
    )
    assert isinstance(cli.datamodule.online, OnlineCoupling)
    assert isinstance(cli.model, OTNeuralFlowMatching)
    assert cli.model.supported_steps == (1,)


def sorted_rows(x):
    return x[torch.argsort(x[:, 0])]


def test_conditional_online_moves_noise_only_within_classes():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (300,), generator=g)
    data = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])[labels] + 0.3 * torch.randn(300, 2, generator=g)
    conditional, plain = bound(300), bound(300)
    initial = conditional.bank[:, 0].clone()
    costs = [conditional.global_cost(data)]
    for step in range(10):
        idx = torch.randperm(300, generator=torch.Generator().manual_seed(step))[:100]
        conditional.couple(data[idx], idx, labels=labels[idx])
        plain.couple(data[idx], idx)
        costs.append(conditional.global_cost(data))
    assert all(b <= a + 1e-9 for a, b in zip(costs, costs[1:])) and costs[-1] < costs[0]
    for k in range(3):  # each class keeps exactly its own prior draws, only re-assigned among its points
        assert torch.equal(sorted_rows(conditional.bank[labels == k, 0]), sorted_rows(initial[labels == k]))
    # negative control: unconditional re-assignment carries noise across classes
    assert not torch.equal(sorted_rows(plain.bank[labels == 0, 0]), sorted_rows(initial[labels == 0]))
    with pytest.raises(ValueError, match="label_weight"):
        bound(300, label_weight=1.0).couple(data[:4], torch.arange(4), labels=labels[:4])


def _global_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data = sample_toy("moons", 200, torch.Generator().manual_seed(1))
    online = bound(200)
    pairs = []
    for step in range(4):
        order = torch.randperm(200, generator=torch.Generator().manual_seed(step))
        idx = order[rank * 40 : (rank + 1) * 40]
        x0, coupling = online.couple(data[idx], idx, across_ranks=True)
        pairs.append((x0, data[idx][coupling.perm], online.bank[idx[coupling.perm], 0].clone(), coupling.cost))
    torch.save({"bank": online.bank, "pairs": pairs}, os.path.join(out, f"global{rank}.pt"))
    dist.destroy_process_group()


def test_global_online_coupling_solves_the_world_batch_once(tmp_path):
    tmp = str(tmp_path)
    mp.spawn(_global_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
    r0, r1 = (torch.load(os.path.join(tmp, f"global{r}.pt")) for r in range(2))
    assert torch.equal(r0["bank"], r1["bank"])
    # the same as one process matching the world batch (both ranks' indices, in rank order)
    data = sample_toy("moons", 200, torch.Generator().manual_seed(1))
    single = bound(200)
    for step in range(4):
        idx = torch.randperm(200, generator=torch.Generator().manual_seed(step))[:80]
        _, coupling = single.couple(data[idx], idx)
        assert r0["pairs"][step][3] == pytest.approx(coupling.cost) == r1["pairs"][step][3]
    assert torch.equal(r0["bank"], single.bank)
    for r in (r0, r1):  # each rank trains on its own data with the noise the bank now assigns to it
        for x0, x1, stored, _ in r["pairs"]:
            assert torch.equal(x0, stored)


class SaveBank(pl.Callback):
    """Each rank saves the online bank at the start and the end of training."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(trainer.datamodule.online.bank.clone(), f"{self.folder}/start{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(trainer.datamodule.online.bank.clone(), f"{self.folder}/end{trainer.global_rank}.pt")


def _online_fit(tmp_path, batch_size):
    data = OTPairDataModule("moons", "8gaussians", coupling="online", batch_size=batch_size, toy_size=101, seed=0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SaveBank(str(tmp_path))], default_root_dir=str(tmp_path),
    )
    trainer.fit(OTMeanFlow(source="8gaussians"), data)


def test_online_bank_loses_no_noise_under_ddp_when_ranks_do_not_split_the_data_evenly(tmp_path, monkeypatch):
    # 101 points on 2 ranks: a padding DistributedSampler repeats one index on both ranks, and in one
    # step the two copies would write the same noise to two entries and drop another one
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _online_fit(tmp_path, batch_size=50)  # 50 per rank: both ranks' whole share in every step
    start, end = torch.load(tmp_path / "start0.pt"), torch.load(tmp_path / "end0.pt")
    assert torch.equal(end, torch.load(tmp_path / "end1.pt"))
    assert not torch.equal(start, end)  # the steps re-assigned noise
    assert torch.equal(sorted_entries(end), sorted_entries(start))  # ... and only permuted it


def test_online_under_ddp_needs_a_full_batch_per_rank():
    # the padding sampler gave 51 per rank here, with the repeated index on both ranks in the one step
    data = OTPairDataModule("moons", "8gaussians", coupling="online", batch_size=51, toy_size=101, seed=0)
    data.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ValueError, match=r"101 samples \(50 on each of 2 ranks\), fewer than batch_size=51: lower batch_size"):
        data.train_dataloader()
    data = OTPairDataModule("moons", "8gaussians", coupling="online", batch_size=50, toy_size=101, seed=0)
    data.trainer = SimpleNamespace(world_size=2, global_rank=1)
    sampler = data.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler) and sampler.drop_last and len(sampler) == 50


def test_source_data_and_training_set_need_a_full_batch_on_every_rank():
    from torch.utils.data import TensorDataset

    source = TensorDataset(torch.randn(101, 2))
    data = OTPairDataModule("moons", source_data=source, batch_size=60, toy_size=500, seed=0)
    data.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ValueError, match=r"source_data has 101 samples \(51 on each of 2 ranks\), fewer than batch_size=60"):
        data.train_dataloader()  # 51 per rank: 0 source batches, an epoch of 0 steps
    # without Lightning's distributed sampler every rank reads the whole set: no per-rank split
    data.trainer = SimpleNamespace(world_size=2, global_rank=0,
                                   _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
    assert len(data.train_dataloader().iterables["source"]) == 1  # 101 // 60 source batches on this rank
