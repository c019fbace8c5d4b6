import re
import types
import warnings

import pytest
import torch
from torch.utils.data import Dataset

from otflow_lightning import OTPairDataModule, Pair
from otflow_lightning.ot import pair_cost
from otflow_lightning.utils import rank_generator


def fake_trainer(training=True, rank=0, step=0):
    return types.SimpleNamespace(training=training, global_rank=rank, global_step=step)


def first_batch(dm, loader):
    return dm.on_after_batch_transfer(next(iter(loader)), 0)


def test_training_batches_are_ot_paired_validation_batches_are_not():
    dm = OTPairDataModule(target="moons", source="8gaussians", batch_size=128, seed=0)
    dm.trainer = fake_trainer(training=True)
    pair = first_batch(dm, dm.train_dataloader())
    assert isinstance(pair, Pair) and pair.x0.shape == pair.x1.shape == (128, 2)
    # the pairing is a permutation of the batch: same multiset of targets, indices follow
    assert torch.equal(dm._train.points[pair.index], pair.x1)
    assert pair.stats["coupling/cost_ratio"] < 0.5
    assert pair_cost(pair.x0, pair.x1).mean() < 0.5 * pair_cost(pair.x0, pair.x1[torch.randperm(128)]).mean()

    dm.trainer = fake_trainer(training=False)
    val = first_batch(dm, dm.val_dataloader())
    assert val.stats == {} and torch.equal(val.index, torch.arange(128))  # dataset order kept
    again = first_batch(dm, dm.val_dataloader())
    assert torch.equal(val.x0, again.x0)  # the same validation noise each time


def test_ranks_draw_different_noise():
    a = rank_generator("cpu", seed=0, rank=0)
    b = rank_generator("cpu", seed=0, rank=1)
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    dms = []
    for rank in (0, 1):
        dm = OTPairDataModule(target="moons", batch_size=64, seed=0)
        dm.trainer = fake_trainer(rank=rank)
        dms.append(dm)
    x1 = torch.zeros(64, 2)
    n0 = dms[0].draw_source(x1, dms[0].generator(x1.device))
    n1 = dms[1].draw_source(x1, dms[1].generator(x1.device))
    assert not torch.allclose(n0, n1)


class NaNData(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.tensor([float("nan") if i == 3 else 0.0, 1.0])


def test_nan_in_batch_is_a_clear_error():
    dm = OTPairDataModule(target=NaNData(), batch_size=64, seed=0)
    dm.trainer = fake_trainer()
    with pytest.raises(ValueError, match="x1 \\(target\\) holds NaN"):
        first_batch(dm, dm.train_dataloader())


class ImageData(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(1, 4, 4), i % 2


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="source '8gaussians' is a 2D toy but the data have shape \\(1, 4, 4\\)"):
        OTPairDataModule(target=ImageData(), source="8gaussians", batch_size=4).setup("fit")
    dm = OTPairDataModule(target=ImageData(), source="gaussian", batch_size=4, seed=0)
    dm.trainer = fake_trainer()
    pair = first_batch(dm, dm.train_dataloader())
    assert pair.x0.shape == (4, 1, 4, 4) and pair.labels.shape == (4,)
    from otflow_lightning.ot import check_batch

    with pytest.raises(ValueError, match="must have the same shape"):
        check_batch(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="batch_size"):
        OTPairDataModule(batch_size=0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        OTPairDataModule(target=ImageData(), batch_size=16).train_dataloader()


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown coupling method 'sinkhorn2'.*or 'online'"):
        OTPairDataModule(coupling="sinkhorn2")
    with pytest.raises(ValueError, match="unknown target 'moon'"):
        OTPairDataModule(target="moon")
    with pytest.raises(ValueError, match="unknown source 'noise'"):
        OTPairDataModule(source="noise")


def test_model_and_data_source_mismatch_is_an_error():
    import lightning.pytorch as pl

    from otflow_lightning import OTMeanFlow

    model = OTMeanFlow(source="gaussian")
    data = OTPairDataModule(target="moons", source="8gaussians", batch_size=32, toy_size=64)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="mismatched config.*'gaussian'.*'8gaussians'"):
        trainer.fit(model, data)


def test_model_and_data_shape_mismatch_names_the_fix():
    """Image data on the default (vector) model: the error says to set data_shape and build an image net."""
    import lightning.pytorch as pl

    from otflow_lightning import OTMeanFlow, OTNeuralFlowMatching
    from otflow_lightning.nets import TimeMLP

    def fit(model, data):
        trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(model, data)

    digits = OTPairDataModule(target="digits", batch_size=32)
    with pytest.raises(ValueError, match=re.escape(
            "mismatched config: model.data_shape=(2,) but the data have shape (1, 8, 8); set model.data_shape: "
            "[1, 8, 8] and an image net, e.g. UNet(in_channels=1, num_times=2) (see configs/digits.yaml)")):
        fit(OTMeanFlow(), digits)
    with pytest.raises(ValueError, match=re.escape(
            "set model.data_shape: [1, 8, 8] and an image net, e.g. ResidualFlowMap(UNet(in_channels=1, num_times=1))")):
        fit(OTNeuralFlowMatching(), digits)
    # vector data of another dimension: only the data_shape to set
    with pytest.raises(ValueError, match=re.escape("model.data_shape=(3,) but the data have shape (2,); set model.data_shape: [2]") + "$"):
        fit(OTMeanFlow(data_shape=[3], net=TimeMLP(dim=3)), OTPairDataModule(target="moons", batch_size=32, toy_size=64))


def test_generate_uses_the_models_source():
    from otflow_lightning import OTMeanFlow

    model = OTMeanFlow(source="8gaussians")
    torch.nn.init.zeros_(model.net.layers[-1].weight)
    torch.nn.init.zeros_(model.net.layers[-1].bias)
    x = model.generate(4000, generator=torch.Generator().manual_seed(0))  # zero velocity: output = source
    assert x.shape == (4000, 2)
    assert abs(x.norm(dim=1).mean().item() - 5.0) < 0.2  # the 8 Gaussians sit at radius 5


def test_data_that_would_train_silently_wrong_is_refused():
    with pytest.raises(ValueError, match="toy_size must be >= 1"):
        OTPairDataModule(toy_size=0)
    assert OTPairDataModule(val_size=0).val_dataloader() == []  # 0: no validation set
    with pytest.raises(ValueError, match=r"val_target items have shape \(3,\) but the training data have \(2,\)"):
        OTPairDataModule(val_target=torch.utils.data.TensorDataset(torch.randn(10, 3))).setup("fit")

    class ByteImages(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.full((1, 4, 4), i, dtype=torch.uint8)

    dm = OTPairDataModule(target=ByteImages(), batch_size=4, seed=0)
    dm.trainer = fake_trainer()
    with pytest.raises(ValueError, match="target samples must be floating point, got torch.uint8"):
        first_batch(dm, dm.train_dataloader())


def test_an_ot_batch_too_small_to_couple_is_warned_about():
    with pytest.warns(UserWarning, match="an OT batch of 1 samples barely couples anything"):
        OTPairDataModule(batch_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OTPairDataModule(batch_size=4, coupling="independent")  # nothing to couple: no warning
        OTPairDataModule(batch_size=4, ot_batch_size=64)  # the match sees 64
        OTPairDataModule(batch_size=4, global_coupling=True)  # the match sees the world batch
    assert not [w for w in caught if "barely couples" in str(w.message)]


def test_validation_and_numpy_data_mistakes_name_the_set():
    import numpy as np
    from torch.utils.data import TensorDataset

    labelled = TensorDataset(torch.randn(16, 2), torch.arange(16) % 2)
    with pytest.raises(ValueError, match="conditional=True but val_target items have no labels"):
        OTPairDataModule(labelled, val_target=TensorDataset(torch.randn(8, 2)), conditional=True).setup("fit")
    bad_val = torch.randn(8, 2)
    bad_val[1, 0] = float("inf")
    dm = OTPairDataModule(labelled, val_target=TensorDataset(bad_val), batch_size=8, seed=0)
    dm.trainer = fake_trainer(training=False)
    with pytest.raises(ValueError, match=r"validation \(val_target\) batch: x1 \(target\) holds NaN or Inf"):
        first_batch(dm, dm.val_dataloader())

    class NumpyPoints(Dataset):  # items as numpy arrays: the DataLoader collates them to tensors
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return np.full(2, i, dtype=np.float32), i % 2

    dm = OTPairDataModule(NumpyPoints(), batch_size=8, seed=0)
    assert dm.data_shape == (2,)
    dm.trainer = fake_trainer()
    pair = first_batch(dm, dm.train_dataloader())
    assert pair.x1.shape == (8, 2) and torch.equal(pair.labels, pair.x1[:, 0].long() % 2)


def test_online_bank_of_another_training_set_is_refused_on_resume():
    saved = OTPairDataModule(coupling="online", toy_size=4096, seed=0)
    saved.setup("fit")
    state = saved.state_dict()
    resumed = OTPairDataModule(coupling="online", seed=0)  # toy_size 50000
    resumed.setup("fit")
    with pytest.raises(ValueError, match="bank holds 4096 points but the training set has 50000"):
        resumed.load_state_dict(state)


def test_seed_none_takes_the_runs_seed_for_the_toy_set_and_the_noise_bank(monkeypatch):
    """``seed=None`` follows ``seed_everything``: a seed sweep gets other toy points and another first
    noise bank; without a run seed (and with seed_everything(0), as in the configs) it is seed 0."""

    def data(run_seed):
        if run_seed is None:
            monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        else:
            monkeypatch.setenv("PL_GLOBAL_SEED", str(run_seed))
        dm = OTPairDataModule(coupling="online", toy_size=500, seed=None)
        dm.setup("fit")
        return dm._train.points, dm.state_dict()["online"]["bank"]

    def module_under(run_seed):
        monkeypatch.setenv("PL_GLOBAL_SEED", str(run_seed))
        dm = OTPairDataModule(coupling="online", toy_size=500, seed=None)
        dm.setup("fit")
        return dm

    pinned = OTPairDataModule(coupling="online", toy_size=500, seed=0)
    pinned.setup("fit")
    x1, bank1 = data(1)
    x2, bank2 = data(2)
    for x, bank in (data(None), data(0)):
        assert torch.equal(x, pinned._train.points) and torch.equal(bank, pinned.state_dict()["online"]["bank"])
    assert not torch.equal(x1, x2) and not torch.equal(bank1, bank2)
    # a resume under another run seed would pair the saved bank with other toy points: refused
    saved = module_under(1).state_dict()
    module_under(1).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"toy data and noise bank were drawn with the run seed 1, this run's is 2: resume "
                                         r"with the same seed"):
        module_under(2).load_state_dict(saved)
    # without an online coupling there is no bank: the message names the toy data only
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    plain = OTPairDataModule(coupling="bsp", toy_size=500, seed=None)
    plain.setup("fit")
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    other = OTPairDataModule(coupling="bsp", toy_size=500, seed=None)
    other.setup("fit")
    with pytest.raises(ValueError, match=r"the checkpoint's toy data were drawn with the run seed 1, this run's is 2"):
        other.load_state_dict(plain.state_dict())


def test_a_loader_override_without_indices_is_a_clear_error():
    """A subclass's own train_dataloader (the Lightning idiom) must yield (index, item) batches: say how."""
    from torch.utils.data import DataLoader, TensorDataset

    from otflow_lightning.data import IndexedDataset

    data = TensorDataset(torch.randn(64, 2), torch.zeros(64, dtype=torch.long))
    dm = OTPairDataModule(batch_size=16, seed=0)
    dm.trainer = fake_trainer()
    for plain in (DataLoader(data, batch_size=16), DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=16)):
        with pytest.raises(TypeError, match=r"wrap the dataset: DataLoader\(otflow_lightning.data.IndexedDataset"):
            first_batch(dm, plain)
    pair = first_batch(dm, DataLoader(IndexedDataset(data), batch_size=16))  # the fix works
    assert pair.x1.shape == (16, 2) and torch.equal(pair.labels, torch.zeros(16, dtype=torch.long))
