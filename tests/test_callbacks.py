import glob
import math
import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eval_modules import SHAPE, ImageModule, PixelFeatures, real_images
from otflow_lightning.callbacks import FIDCallback, SamplingCallback, WassersteinCallback
from otflow_lightning.callbacks.common import eval_steps, real_indices, shard, source_noise
from otflow_lightning.metrics import images_to_uint8, wasserstein2_squared
from otflow_lightning.metrics.fid import build_fid


def _trainer(tmp_path, callbacks, **kwargs):
    kwargs = {"logger": False, **kwargs}
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


# ---------------------------------------------------------------- generation split, steps, protocol
def test_noise_is_the_same_set_for_any_split():
    module = ImageModule()
    whole = torch.cat(list(source_noise(module, 0, 50, seed=3, chunk=16)))
    parts = [torch.cat(list(source_noise(module, *shard(50, r, 3), seed=3, chunk=16))) for r in range(3)]
    assert [len(p) for p in parts] == [17, 17, 16]
    assert torch.equal(torch.cat(parts), whole)


def test_steps_must_be_supported_and_protocol_is_checked():
    module = ImageModule()
    module.supported_steps = (1, 2)
    assert eval_steps(module, None) == [1, 2]
    with pytest.raises(ValueError, match=r"cannot sample with \[3\] steps; allowed: \[1, 2\]"):
        eval_steps(module, [1, 3])

    class NoShape(pl.LightningModule):
        def sample(self, x0, steps=1):
            return x0

    with pytest.raises(TypeError, match="data_shape"):
        SamplingCallback().setup(None, NoShape(), "fit")


def test_schedule_state_survives_a_checkpoint_and_keys_are_distinct():
    a, b = FIDCallback(name="fid"), FIDCallback(name="fid_val")
    assert a.state_key != b.state_key
    assert WassersteinCallback(method="exact").state_key != WassersteinCallback(method="sliced").state_key
    # every setting that tells two callbacks of one class apart is in the key
    for cls, one, other in [
        (SamplingCallback, dict(steps=[1]), dict(steps=[2], every_n_steps=500)),
        (SamplingCallback, dict(), dict(seed=1)),
        (SamplingCallback, dict(), dict(every_n_epochs=3)),
        (WassersteinCallback, dict(real="val"), dict(real="train")),
        (WassersteinCallback, dict(), dict(n_real=500)),
        (WassersteinCallback, dict(method="sliced"), dict(method="sliced", n_projections=64)),
        (FIDCallback, dict(), dict(feature=64)),
    ]:
        assert cls(**one).state_key != cls(**other).state_key, (one, other)
    assert SamplingCallback(steps=(1, 2)).state_key == SamplingCallback(steps=[1, 2]).state_key
    assert SamplingCallback(n_samples=64, steps=[1, 2], every_n_epochs=3).state_key == (
        "SamplingCallback{'name': 'samples', 'n_samples': '64', 'steps': '[1, 2]', 'seed': '4321', 'every_n_epochs': '3', 'every_n_steps': 'None'}")
    # a Dataset (whose repr holds its address) is left out: the key is the same in every run
    real = [TensorDataset(torch.randn(8, 2)) for _ in range(2)]
    assert WassersteinCallback(real=real[0]).state_key == WassersteinCallback(real=real[1]).state_key
    assert "TensorDataset" not in WassersteinCallback(real=real[0]).state_key
    cb = SamplingCallback(every_n_steps=10)
    cb.load_state_dict({"runs": 4, "last_step": 30})
    fake_trainer = type("T", (), {"global_step": 35})()
    assert not cb._due(fake_trainer)
    fake_trainer.global_step = 40
    assert cb._due(fake_trainer) and cb.state_dict() == {"runs": 6, "last_step": 40}


# ---------------------------------------------------------------- EMA
class Shift(pl.LightningModule):
    """``sample(x0) = x0 + shift``; SGD pushes ``shift`` along (1, 1) by 1 per step, so EMA lags far behind."""

    data_shape = (2,)

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(2))

    def sample(self, x0, steps=1):
        return x0 + self.shift

    def training_step(self, batch, batch_idx):
        return -self.shift.sum() + 0 * batch[0].sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


class RawWeights(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, *args):
        self.raw = pl_module.shift.detach().clone()


def test_two_callbacks_of_one_class_with_other_settings_run_side_by_side(tmp_path):
    """Lightning refuses two stateful callbacks with one ``state_key``; a subclass adds its own settings."""

    class MeanError(WassersteinCallback):
        state_key_attrs = WassersteinCallback.state_key_attrs + ("scale",)

        def __init__(self, scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

    callbacks = [SamplingCallback(steps=[1]), SamplingCallback(steps=[2], every_n_steps=500, name="two_steps"),
                 MeanError(n_samples=500), MeanError(n_samples=500, every_n_steps=100), MeanError(scale=2.0)]
    _trainer(tmp_path, callbacks)  # no "more than one stateful callback" error
    assert len({cb.state_key for cb in callbacks}) == len(callbacks)
    with pytest.raises(RuntimeError, match="more than one stateful callback"):  # the same settings twice still collide
        _trainer(tmp_path, [SamplingCallback(steps=[1]), SamplingCallback(steps=[1])])


def test_two_sampling_callbacks_write_their_own_files(tmp_path):
    real = TensorDataset(torch.randn(40, 2, generator=torch.Generator().manual_seed(0)))
    loaders = DataLoader(real, batch_size=10), DataLoader(real, batch_size=20)
    same = [SamplingCallback(n_samples=64, steps=[1]), SamplingCallback(n_samples=64, steps=[2])]
    with pytest.raises(ValueError, match="two SamplingCallbacks write samples/step\\*.png .* give each its own name"):
        _trainer(tmp_path, same, max_steps=2).fit(Shift(), *loaders)
    named = [SamplingCallback(n_samples=64, steps=[1]), SamplingCallback(n_samples=64, steps=[2], name="two_steps")]
    _trainer(tmp_path, named, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None).fit(Shift(), *loaders)
    assert [os.path.basename(os.path.dirname(cb.last_path)) for cb in named] == ["samples", "two_steps"]
    assert all(os.path.isfile(cb.last_path) for cb in named)


def test_the_schedule_is_restored_under_the_settings_key(tmp_path):
    real = TensorDataset(torch.randn(40, 2, generator=torch.Generator().manual_seed(0)))
    loaders = DataLoader(real, batch_size=10), DataLoader(real, batch_size=20)
    settings = dict(n_samples=64, steps=[1, 2], every_n_epochs=3)
    cb = SamplingCallback(**settings)
    trainer = _trainer(tmp_path, [cb], max_steps=4, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(Shift(), *loaders)
    state = cb.state_dict()
    assert state == {"runs": 2, "last_step": 2}  # rendered at the first validation only
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    again = SamplingCallback(**settings)
    trainer = _trainer(tmp_path, [again], max_steps=4, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(Shift(), *loaders, ckpt_path=str(tmp_path / "last.ckpt"))
    assert again.state_dict() == state


@pytest.mark.parametrize("ema_first", [True, False])
def test_evaluation_sees_ema_weights_in_any_callback_order(tmp_path, ema_first):
    real = TensorDataset(torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) + 5)
    sampling, w2, raw = SamplingCallback(n_samples=200), WassersteinCallback(200, real=real), RawWeights()
    ours = [sampling, w2]
    ema = EMAWeightAveraging(decay=0.8)
    callbacks = [ema, *ours, raw] if ema_first else [*ours, ema, raw]
    trainer = _trainer(tmp_path, callbacks, max_steps=20, val_check_interval=20, check_val_every_n_epoch=None)
    module = Shift()
    trainer.fit(module, DataLoader(real, batch_size=10), DataLoader(real, batch_size=100))
    ema_shift = module.shift.detach()  # on_train_end copied the average into the module
    assert torch.allclose(raw.raw, torch.full((2,), 20.0))
    assert (raw.raw - ema_shift).abs().min() > 3  # the two models differ visibly
    x0 = next(source_noise(module, 0, 200, sampling.seed, chunk=200))
    torch.testing.assert_close(sampling.last_samples[1] - x0, ema_shift.expand(200, 2))
    x = torch.cat(list(source_noise(module, 0, 200, w2.seed, chunk=w2.batch_size))) + ema_shift
    expected = wasserstein2_squared(x, real.tensors[0])
    assert float(trainer.callback_metrics["val/w2_sq"]) == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------- sampling output
def test_sampling_writes_png_and_tensorboard_every_n_steps(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = ImageModule()
    module.training_step = lambda batch, batch_idx: module.weight.sum() * 0
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.0)
    cb = SamplingCallback(steps=[1, 2], every_n_steps=4)
    trainer = _trainer(
        tmp_path, [cb], logger=TensorBoardLogger(str(tmp_path)), max_steps=8, val_check_interval=2, check_val_every_n_epoch=None
    )
    data = DataLoader(real_images(), batch_size=8)
    trainer.fit(module, data, data)
    pngs = sorted(os.path.basename(p) for p in glob.glob(f"{trainer.log_dir}/samples/*.png"))
    assert pngs == ["step0000002.png", "step0000006.png"]  # validation at 2, 4, 6, 8; rendered >= 4 steps apart
    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("samples")] == [2, 6]
    assert set(cb.last_samples) == {1, 2} and cb.last_samples[1].shape == (64, *SHAPE)


# ---------------------------------------------------------------- FID
class CountingDataset(TensorDataset):
    reads = 0

    def __getitem__(self, i):
        CountingDataset.reads += 1
        return super().__getitem__(i)


def test_fid_real_statistics_are_cached_on_disk(tmp_path):
    real = CountingDataset(*real_images().tensors)
    values = []
    for _ in range(2):
        CountingDataset.reads = 0
        cb = FIDCallback(real, n_samples=30, feature=PixelFeatures(), cache_dir=str(tmp_path / "cache"))
        (metrics,) = _trainer(tmp_path, [cb]).validate(ImageModule(), DataLoader(real_images(4)), verbose=False)
        values.append(float(metrics["val/fid_1step"]))
        assert int(cb.fid.real_features_num_samples) == len(real)
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    assert CountingDataset.reads == 4  # the second run read the first item (shape check) and three fingerprint items
    assert len(os.listdir(tmp_path / "cache")) == 1


def _random_inception_weights(path, monkeypatch):
    """Save a randomly initialised torch-fidelity Inception-v3 state dict (the real architecture, no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with monkeypatch.context() as m:
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)


def test_fid_with_the_real_inception_network_from_a_weights_file(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = str(tmp_path / "inception.pth")
    _random_inception_weights(weights, monkeypatch)
    real = real_images(n=4)
    cb = FIDCallback(real, n_samples=4, weights_path=weights, batch_size=4, cache_dir=str(tmp_path / "cache"))
    (metrics,) = _trainer(tmp_path, [cb]).validate(ImageModule(), DataLoader(real_images(4)), verbose=False)
    assert isinstance(cb.fid.inception, FeatureExtractorInceptionV3) and cb.fid.inception.features_list == ["2048"]
    assert math.isfinite(metrics["val/fid_1step"])
    assert int(cb.fid.fake_features_num_samples) == 4
    # the real features torchmetrics summed are Inception's on the rounded uint8, 3-channel images
    with torch.no_grad():
        features = cb.fid.inception(images_to_uint8(real.tensors[0]).expand(-1, 3, -1, -1)).double()
    assert features.shape == (4, 2048)
    torch.testing.assert_close(cb.fid.real_features_sum, features.sum(0), rtol=1e-5, atol=1e-6)


def test_missing_inception_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(FileNotFoundError, match="download_inception_weights") as err:
        build_fid(2048)
    assert "weights_path" in str(err.value) and str(tmp_path / "empty_torch_home") in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found at '/nowhere/inception.pth'"):
        FIDCallback(real_images(), weights_path="/nowhere/inception.pth").setup(None, ImageModule(), "fit")


# ---------------------------------------------------------------- the example
def test_attach_callbacks_example_trains_and_logs(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "attach_callbacks.py")
    spec = importlib.util.spec_from_file_location("attach_callbacks", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trainer = example.main(max_steps=300, root=str(tmp_path))
    w2_1, w2_8 = float(trainer.callback_metrics["val/w2_sq"]), float(trainer.callback_metrics["val/w2_sq_8step"])
    # N(0, I) against the ring of radius 2 is about W2^2 = 2; 8 Euler steps of the trained flow do far better
    assert w2_8 < 0.5 and w2_8 < w2_1
    assert len(glob.glob(f"{trainer.log_dir}/samples/*.png")) == 2


def test_wasserstein_against_the_training_set_of_an_ot_pair_datamodule(tmp_path):
    from otflow_lightning import OTMeanFlow, OTPairDataModule

    dm = OTPairDataModule("moons", "8gaussians", batch_size=64, toy_size=1000, val_size=128)
    cb = WassersteinCallback(n_samples=300, real="train", steps=[1, 2])
    val = WassersteinCallback(n_samples=100, real="val", name="w2_val")  # a second one logs under its own name
    module = OTMeanFlow(source="8gaussians", data_shape=(2,))
    trainer = _trainer(tmp_path, [cb, val], max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    x0 = torch.cat(list(source_noise(module, 0, 300, cb.seed, chunk=cb.batch_size)))
    with torch.no_grad():
        expected = wasserstein2_squared(module.sample(x0, steps=2), dm._train.points[real_indices(1000, 300, cb.seed)])
    assert {"val/w2_sq", "val/w2_sq_2step"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/w2_sq_2step"]) == pytest.approx(float(expected), rel=1e-5)
    x0 = torch.cat(list(source_noise(module, 0, 100, val.seed, chunk=val.batch_size)))
    with torch.no_grad():
        expected = wasserstein2_squared(module.sample(x0), dm.val_target.points[real_indices(128, 100, val.seed)])
    assert float(trainer.callback_metrics["val/w2_val"]) == pytest.approx(float(expected), rel=1e-5)


class PointModule(pl.LightningModule):
    """A perfect model of two equal classes at x = -4 and x = +4 (unit noise): sample(x0) = x0 + sign(x0[0]) * 4 e_0."""

    data_shape = (2,)

    def sample(self, x0, steps=1):
        return x0 + torch.stack([torch.sign(x0[:, 0]) * 4, torch.zeros_like(x0[:, 0])], 1)

    def validation_step(self, batch, batch_idx):
        pass


def test_wasserstein_reads_a_random_subset_of_class_sorted_real_data(tmp_path):
    # 1000 real points of the model's own distribution sorted by class (x < 0 first), as an image
    # folder is read: the first 300 items are all one class and put the perfect model far away
    x = PointModule().sample(torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)))
    x = x[torch.argsort((x[:, 0] > 0).long(), stable=True)]
    n_left = int((x[:, 0] < 0).sum())
    real = TensorDataset(x, (x[:, 0] > 0).long())
    cb = WassersteinCallback(n_samples=300, real=real, method="exact")
    (metrics,) = _trainer(tmp_path, [cb]).validate(PointModule(), DataLoader(TensorDataset(x[:4])), verbose=False)
    indices = real_indices(1000, 300, cb.seed)
    assert 120 < int((indices >= n_left).sum()) < 180  # both classes, about half each
    x0 = torch.cat(list(source_noise(PointModule(), 0, 300, cb.seed, chunk=cb.batch_size)))
    assert float(metrics["val/w2_sq"]) == pytest.approx(float(wasserstein2_squared(PointModule().sample(x0), x[indices])), rel=1e-6)
    assert float(metrics["val/w2_sq"]) < 1.0
    assert float(wasserstein2_squared(PointModule().sample(x0), x[:300])) > 10


def test_real_indices_are_all_items_or_a_fixed_sorted_subset():
    assert torch.equal(real_indices(5, 5, seed=1), torch.arange(5))
    a, b = real_indices(100, 30, seed=1), real_indices(100, 30, seed=1)
    assert torch.equal(a, b) and len(set(a.tolist())) == 30 and bool((a[1:] > a[:-1]).all())
    assert not torch.equal(a, real_indices(100, 30, seed=2))
    with pytest.raises(ValueError, match="n_real=6 but the real dataset has only 5 samples"):
        real_indices(5, 6, seed=0)


def test_fid_and_w2_against_the_training_set_under_trainer_validate(tmp_path):
    from otflow_lightning import OTPairDataModule

    dm = OTPairDataModule(target="digits", batch_size=16)
    fid = FIDCallback("train", n_samples=30, n_real=100, feature=PixelFeatures(), cache_dir=str(tmp_path / "cache"))
    w2 = WassersteinCallback(n_samples=30, n_real=100, real="train", method="sliced")
    (metrics,) = _trainer(tmp_path, [fid, w2]).validate(ImageModule(), dm, verbose=False)
    assert int(fid.fid.real_features_num_samples) == 100 and math.isfinite(metrics["val/fid_1step"])
    real = torch.stack([dm.train_dataset[int(i)][0] for i in real_indices(len(dm.train_dataset), 100, w2.seed)])
    assert torch.equal(torch.cat(w2._real_shard), real.float())
    with pytest.raises(ValueError, match="no train dataloader.*pass real=<Dataset>"):
        _trainer(tmp_path, [WassersteinCallback(real="train")]).validate(ImageModule(), DataLoader(real_images(4)), verbose=False)


@pytest.mark.parametrize("shape", [(3,), (1,), (2, 8, 8)])
def test_sampling_draws_points_of_any_dimension_and_refuses_undrawable_data_at_setup(tmp_path, shape):
    class Module(PointModule):
        data_shape = shape

        def sample(self, x0, steps=1):
            return x0 * 2

    cb = SamplingCallback(n_samples=50)
    trainer = _trainer(tmp_path, [cb])
    if shape != (3,):
        with pytest.raises(ValueError, match=rf"cannot draw samples of shape \({shape[0]},"):
            cb.setup(trainer, Module(), "validate")
        return
    trainer.validate(Module(), DataLoader(TensorDataset(torch.randn(8, 3))), verbose=False)
    x0 = next(source_noise(Module(), 0, 50, cb.seed, chunk=50))
    assert os.path.isfile(cb.last_path) and torch.equal(cb.last_samples[1], 2 * x0)


def test_a_real_set_smaller_than_n_real_is_an_error_at_setup_not_at_the_first_validation(tmp_path):
    from otflow_lightning import OTMeanFlow, OTPairDataModule

    dm = OTPairDataModule("moons", "8gaussians", batch_size=64, toy_size=1000, val_size=500)
    trainer = _trainer(tmp_path, [WassersteinCallback(n_samples=2000)], max_steps=10_000, val_check_interval=10_000)
    with pytest.raises(ValueError, match=r"n_real=2000 real samples but the real set \('val' set of the datamodule\) has only 500"):
        trainer.fit(OTMeanFlow(source="8gaussians"), dm)
    assert trainer.global_step == 0  # refused before training, not after val_check_interval steps
    with pytest.raises(ValueError, match="FIDCallback.*n_real=60 .* has only 48"):
        FIDCallback(real_images(), n_real=60, feature=PixelFeatures()).setup(_trainer(tmp_path, []), ImageModule(), "fit")


@pytest.mark.parametrize("callback", [WassersteinCallback, FIDCallback])
def test_an_unknown_real_set_or_too_few_samples_is_an_error_when_the_callback_is_built(callback):
    with pytest.raises(ValueError, match=rf"{callback.__name__}: real='tset'; give 'train', 'val' or a Dataset"):
        callback(real="tset")
    with pytest.raises(ValueError, match=rf"{callback.__name__}: n_samples and n_real must be >= 2, got 1"):
        callback(n_samples=1)


def test_fid_feature_mistakes_are_named_when_the_metric_is_built():
    with pytest.raises(ValueError, match=r"feature=100; give an Inception feature size \(64, 192, 768, 2048\)"):
        FIDCallback(feature=100)

    class FloatOnly(nn.Module):  # forgets that it receives uint8 images
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(64, 4)

        def forward(self, x):
            return self.layer(x.flatten(1))

    class Unflattened(nn.Module):  # a backbone's (n, d, 1, 1) output
        def forward(self, x):
            return x.float().mean((2, 3), keepdim=True)

    with pytest.raises(ValueError, match=r"FloatOnly fails on uint8 images of shape \(n, 1, 8, 8\).*x\.float\(\) / 255"):
        build_fid(FloatOnly(), input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"Unflattened must return float features \(n, d\), got \(2, 1, 1, 1\)"):
        build_fid(Unflattened(), input_shape=SHAPE)
    build_fid(PixelFeatures(), input_shape=SHAPE)


class DictPointModule(PointModule):
    """A module from outside the library whose validation batches are dicts."""


class DictPoints(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.randn(2)}


def test_real_sets_of_another_form_or_shape_are_named_and_dict_batches_still_get_a_sample_grid(tmp_path):
    wrong_shape = WassersteinCallback(real=TensorDataset(torch.randn(200, 3)), n_samples=100)
    with pytest.raises(ValueError, match=r"real set holds samples of shape \(3,\) but the module's data_shape is \(2,\)"):
        wrong_shape.setup(_trainer(tmp_path, []), PointModule(), "fit")
    with pytest.raises(ValueError, match=r"real set yields dict items; give real=<Dataset> whose items are tensors"):
        WassersteinCallback(real=DictPoints(), n_samples=8).setup(_trainer(tmp_path, []), PointModule(), "fit")
    # real="val" of a plain loader is known only at the first evaluation: the same error there
    with pytest.raises(ValueError, match=r"WassersteinCallback\(real='val'\) yields dict items"):
        trainer = _trainer(tmp_path, [WassersteinCallback(n_samples=8)])
        trainer.validate(DictPointModule(), DataLoader(DictPoints()), verbose=False)
    # the sample grid draws its samples without the (unreadable) data behind them
    cb = SamplingCallback(n_samples=50)
    _trainer(tmp_path, [cb]).validate(DictPointModule(), DataLoader(DictPoints()), verbose=False)
    assert os.path.isfile(cb.last_path)


def test_a_monitored_metric_of_a_callback_that_skips_validations_is_warned_about(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    real = TensorDataset(torch.randn(100, 2))
    for every, warned in ((2, True), (1, False), (None, False)):
        w2 = WassersteinCallback(real=real, n_samples=100, every_n_epochs=every)
        callbacks = [w2, EarlyStopping(monitor="val/w2_sq")]
        trainer = _trainer(tmp_path, callbacks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):  # the second run is skipped under every_n_epochs=2
                trainer.validate(PointModule(), DataLoader(TensorDataset(torch.randn(8, 2))), verbose=False)
        assert any("monitors val/w2_sq" in str(w.message) for w in caught) == warned, every
