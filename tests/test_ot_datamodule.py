"""The DataModule's coupling options: conditional (C2OT) pairs and the global-coupling switch."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from otflow_lightning.data import OTPairDataModule
from otflow_lightning.ot import OTCoupler, pair_cost


def training_batch(dm, n=64, seed=0):
    dm.trainer = SimpleNamespace(training=True, global_rank=0, global_step=0)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 4.0 * y[:, None]
    return x, y, dm.on_after_batch_transfer((torch.arange(n), (x, y)), 0)


@pytest.mark.parametrize("global_coupling", [False, True])  # one process: global == local
def test_conditional_pairs_share_labels(global_coupling):
    data = TensorDataset(torch.randn(256, 2), torch.randint(0, 3, (256,)))
    dm = OTPairDataModule(data, coupling="exact", batch_size=64, conditional=True, global_coupling=global_coupling, seed=0)
    x, y, pair = training_batch(dm)
    assert torch.equal(pair.x1, x[pair.index]) and torch.equal(pair.labels, y[pair.index])
    assert torch.equal(torch.bincount(pair.labels, minlength=3), torch.bincount(y, minlength=3))
    plain = OTPairDataModule(data, coupling="exact", batch_size=64, seed=0)
    _, _, unconditional = training_batch(plain)
    assert torch.equal(unconditional.x0, pair.x0)  # same noise; conditional pays a higher cost to keep labels
    assert pair.stats["coupling/cost"] > 1.05 * unconditional.stats["coupling/cost"]  # measured 60.3 vs 52.7
    assert pair_cost(pair.x0, pair.x1).mean() < pair_cost(pair.x0, x).mean()  # and still paired by OT
    assert {"coupling/cost_ratio", "coupling/ms"} <= pair.stats.keys()


def test_conditional_needs_labels():
    dm = OTPairDataModule(TensorDataset(torch.randn(256, 2)), batch_size=64, conditional=True, seed=0)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, global_step=0)
    with pytest.raises(ValueError, match="labelled"):
        dm.on_after_batch_transfer((torch.arange(64), (torch.randn(64, 2),)), 0)


def test_coupler_instance_is_used():
    coupler = OTCoupler("auction")
    dm = OTPairDataModule("moons", coupling=coupler, batch_size=32, seed=0)
    assert dm.coupler is coupler


def test_ot_batch_larger_than_the_training_batch_is_solved_once_and_served_in_chunks():
    import lightning.pytorch as pl

    from otflow_lightning import OTNeuralFlowMatching
    from otflow_lightning.ot import pair_cost

    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    data = OTPairDataModule("moons", "8gaussians", batch_size=32, ot_batch_size=128, toy_size=1024)
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, callbacks=[Record()])
    trainer.fit(OTNeuralFlowMatching(source="8gaussians"), data)
    assert trainer.num_training_batches == 1024 // 128 * 4 and len(seen) == 12
    assert all(len(p) == 32 for p in seen)
    for group in (seen[0:4], seen[4:8], seen[8:12]):  # four training batches = one exactly solved OT batch
        x0, x1 = torch.cat([p.x0 for p in group]), torch.cat([p.x1 for p in group])
        # Coupling.cost sums float32 batches in float32 (about 1e-7 relative)
        assert float(pair_cost(x0, x1).mean()) == pytest.approx(OTCoupler("exact").couple(x0, x1).cost, rel=1e-6)
        assert torch.cat([p.index for p in group]).unique().numel() == 128
        assert float(pair_cost(x0, x1).mean()) < 0.9 * float(pair_cost(x0, x1.roll(1, 0)).mean())  # not trivially so
    with pytest.raises(ValueError, match="multiple of batch_size"):
        OTPairDataModule("moons", batch_size=32, ot_batch_size=48)
    with pytest.raises(ValueError, match="ot_batch_size"):
        OTPairDataModule("moons", batch_size=32, ot_batch_size=64, coupling="online")


def test_ot_batch_chunks_resume_mid_group(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from otflow_lightning import OTNeuralFlowMatching

    def fit(steps, ckpt=None):
        data = OTPairDataModule("moons", "8gaussians", batch_size=32, ot_batch_size=128, toy_size=1024)
        trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, limit_val_batches=0,
                             default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        trainer.fit(OTNeuralFlowMatching(source="8gaussians"), data, ckpt_path=ckpt)
        return trainer

    fit(6)  # stops inside the second OT batch (chunk 2 of 4)
    assert fit(10, str(tmp_path / "last.ckpt")).global_step == 10


def test_multiscale_and_bfloat16_couplings_through_the_datamodule():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (256,), generator=g)
    x = torch.randn(256, 96, generator=g) + 4.0 * y[:, None]
    costs = {}
    for coupling in ("exact", "independent", "multiscale", OTCoupler("exact", cost_dtype="bfloat16")):
        dm = OTPairDataModule(TensorDataset(x, y), coupling=coupling, batch_size=256, conditional=True, seed=0)
        dm.trainer = SimpleNamespace(training=True, global_rank=0, global_step=0)
        pair = dm.on_after_batch_transfer((torch.arange(256), (x, y)), 0)  # the same noise for every coupling
        assert sorted(pair.index.tolist()) == list(range(256))  # a bijection of the batch
        assert torch.equal(pair.x1, x[pair.index]) and torch.equal(pair.labels, y[pair.index])
        costs[str(coupling)] = pair.stats["coupling/cost"]
    gain = costs["independent"] - costs["exact"]  # per-class OT's gain over independent pairs within classes
    assert gain > 0
    for name in ("multiscale", "OTCoupler('exact', cost_dtype='bfloat16')"):
        assert costs[name] <= costs["exact"] + 0.05 * gain  # >= 95% of the gap closed
