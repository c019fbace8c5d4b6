"""Sources of your own: one registered source is drawn by the DataModule's pairs and online bank,
the module's ``generate`` and the evaluation callbacks alike; by import path from a config."""

import textwrap

import pytest
import torch
from torch import nn

from otflow_lightning import OTMeanFlow, OTPairDataModule
from otflow_lightning.callbacks.common import source_noise
from otflow_lightning.cli import main
from otflow_lightning.data import SOURCES, draw_source, register_source

from conftest import CONFIGS
from test_datamodule import fake_trainer, first_batch


def square(n, shape, generator=None, device=None):
    """Uniform on [2, 3]^d: far from every built-in source, so a stray Gaussian draw shows."""
    return 2 + torch.rand(n, *shape, generator=generator, device=device)


class Zero(nn.Module):
    """``u = 0``: one-step samples are the source draws themselves."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, z, t, h, labels=None):
        return z * self.w


@pytest.fixture
def registered():
    register_source("square", square)
    yield "square"
    SOURCES.pop("square", None)


def in_square(x):
    return bool(((x >= 2) & (x <= 3)).all())


def test_a_registered_source_is_drawn_everywhere(registered):
    dm = OTPairDataModule(target="moons", source="square", batch_size=64, seed=0, toy_size=512)
    dm.setup("fit")
    dm.trainer = fake_trainer(training=True)
    assert in_square(first_batch(dm, dm.train_dataloader()).x0)
    dm.trainer = fake_trainer(training=False)
    assert in_square(first_batch(dm, dm.val_dataloader()).x0)

    online = OTPairDataModule(target="moons", source="square", coupling="online", batch_size=64, seed=0, toy_size=512)
    online.setup("fit")
    assert in_square(online.online.bank)

    model = OTMeanFlow(net=Zero(), source="square")
    assert in_square(model.generate(100))
    assert in_square(torch.cat(list(source_noise(model, 0, 100, seed=0))))


def test_a_datamodule_subclass_source_also_fills_the_online_bank():
    class Shifted(OTPairDataModule):
        def draw_source(self, x1, generator):
            return square(x1.shape[0], x1.shape[1:], generator, x1.device)

    dm = Shifted(target="moons", coupling="online", batch_size=64, seed=0, toy_size=512)
    dm.setup("fit")
    assert in_square(dm.online.bank)  # it held N(0, I) draws, unlike every training pair


def test_a_source_named_by_import_path_is_imported_and_registered(tmp_path, monkeypatch):
    (tmp_path / "my_sources.py").write_text(textwrap.dedent("""
        import torch

        def box(n, shape, generator=None, device=None):
            return 2 + torch.rand(n, *shape, generator=generator, device=device)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        cli = main(["--config", f"{CONFIGS}/toy.yaml", "--data.source=my_sources.box"], run=False)
        assert cli.model.source == cli.datamodule.source == "my_sources.box"
        assert in_square(draw_source("my_sources.box", 10, (2,)))
    finally:
        SOURCES.pop("my_sources.box", None)


def test_bad_sources_are_named(registered):
    with pytest.raises(ValueError, match=r"unknown source 'my_sources\.nothing'.*a registered source \[.*'square'"):
        OTMeanFlow(source="my_sources.nothing")
    register_source("flat", lambda n, shape, generator=None, device=None: torch.zeros(n, 3))
    try:
        with pytest.raises(ValueError, match=r"source 'flat' drew shape \(2, 3\) for n=2 and data of shape \(2,\)"):
            OTMeanFlow(source="flat")
    finally:
        SOURCES.pop("flat")
    with pytest.raises(ValueError, match="'moons' is taken by a 2D toy"):
        register_source("moons", square)
    with pytest.raises(ValueError, match="source '8gaussians' is a 2D toy but the data have shape"):
        OTMeanFlow(source="8gaussians", data_shape=(3,))


def test_callbacks_evaluate_a_translation_model_on_its_source_dataset():
    """Under source_data the evaluation callbacks map items of the source set (they drew N(0, I)),
    the same items for any split across ranks."""
    import types

    source = torch.utils.data.TensorDataset(10 + torch.randn(300, 2, generator=torch.Generator().manual_seed(0)))
    dm = OTPairDataModule(target="moons", source_data=source, batch_size=50, toy_size=500, seed=0)
    model = OTMeanFlow(net=Zero())
    model._trainer = types.SimpleNamespace(datamodule=dm)
    whole = torch.cat(list(source_noise(model, 0, 400, seed=3, chunk=128)))
    assert whole.shape == (400, 2) and (whole > 5).all()  # the source items, not N(0, I)
    items = {tuple(x.tolist()) for x in whole[:300]}
    assert len(items) == 300 and torch.equal(whole[300:], whole[:100])  # each item once, then again
    split = torch.cat([*source_noise(model, 0, 170, seed=3, chunk=64), *source_noise(model, 170, 400, seed=3, chunk=64)])
    assert torch.equal(split, whole)


def test_a_draw_source_override_warns_that_evaluation_draws_the_named_source(tmp_path):
    import lightning.pytorch as pl

    class Shifted(OTPairDataModule):
        def draw_source(self, x1, generator):
            return square(x1.shape[0], x1.shape[1:], generator, x1.device)

    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="Shifted overrides draw_source: training pairs use it, but generate"):
        trainer.fit(OTMeanFlow(), Shifted(target="moons", batch_size=64, toy_size=256))


def test_source_mistakes_are_named_where_they_are_made(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match=r"give the name, e.g. @register_source\('mine'\)"):
        @register_source
        def bare(n, shape, generator=None, device=None):
            return torch.zeros(n, *shape)
    with pytest.raises(TypeError, match=r"calls it as fn\(n, shape, generator=\.\.\., device=\.\.\.\)"):
        register_source("no_generator", lambda n, shape: torch.zeros(n, *shape))
    register_source("two_rows", lambda n, shape, generator=None, device=None: torch.zeros(2, *shape))
    try:  # the trial at build time draws 2 rows and passes; every draw is checked
        with pytest.raises(ValueError, match=r"source 'two_rows' drew shape \(2, 2\) for n=5"):
            OTMeanFlow(source="two_rows").generate(5)
    finally:
        SOURCES.pop("two_rows")
    # an import path that fails its trial is not left registered; a missing dependency is not "unknown"
    with pytest.raises(ValueError, match="source 'torch.randn' failed on a trial draw"):
        OTMeanFlow(source="torch.randn")
    assert "torch.randn" not in SOURCES
    (tmp_path / "broken_source.py").write_text("import a_dependency_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="importing broken_source for 'broken_source.f' failed: No module named "
                                          "'a_dependency_not_installed'"):
        OTMeanFlow(source="broken_source.f")
