"""The DataModule's coupling options: conditional (C2OT) pairs and the global-coupling switch."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from otflow_lightning.data import OTPairDataModule
from otflow_lightning.ot import OTCoupler


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
    assert pair.stats["coupling/cost"] >= unconditional.stats["coupling/cost"] - 1e-9
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
