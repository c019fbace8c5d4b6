"""End to end through the ``otflow`` command, in-process."""

import copy
import glob
import os
import textwrap
import types
import warnings

import pytest
import torch
import yaml

from otflow_lightning import OTMeanFlow
from otflow_lightning.callbacks import EvalCallback
from otflow_lightning.cli import main
from otflow_lightning.data import sample_toy
from otflow_lightning.metrics import wasserstein2_squared
from otflow_lightning.ot import pair_cost

from conftest import CONFIGS

TOY = os.path.join(CONFIGS, "toy.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def w2_of(module, n=2000):
    g = torch.Generator().manual_seed(99)
    x0 = sample_toy("8gaussians", n, g)
    return float(wasserstein2_squared(module.sample(x0, 1), sample_toy("moons", n, g)))


def test_toy_fit_end_to_end_w2_drops(in_tmp):
    torch.manual_seed(0)
    untrained = OTMeanFlow(source="8gaussians")
    before = w2_of(untrained)
    cli = main(["fit", "--config", TOY, "--trainer.max_steps=600", "--trainer.val_check_interval=300", *QUIET])
    logged = float(cli.trainer.callback_metrics["val/w2_sq"])
    after = w2_of(cli.model.eval())
    assert before > 5.0  # an untrained map barely moves 8gaussians
    assert logged < 0.3 and after < 0.3, (logged, after)  # measured 0.18 and 0.17; a flipped JVP sign: 0.63, 0.68
    # coupling statistics are logged: the toy's persistent OT pairing is far cheaper than independent pairs
    g = torch.Generator().manual_seed(5)
    independent = float(pair_cost(sample_toy("8gaussians", 4000, g), sample_toy("moons", 4000, g)).mean())
    assert float(cli.trainer.callback_metrics["coupling/cost"]) < 0.3 * independent
    assert 0.5 < float(cli.trainer.callback_metrics["coupling/cost_ratio"]) <= 1.0  # online: this batch's gain
    # artefacts a user expects: config, checkpoint, sample plots, TensorBoard events
    run = cli.trainer.log_dir
    assert os.path.exists(os.path.join(run, "config.yaml"))
    assert glob.glob(os.path.join(run, "checkpoints", "*.ckpt"))
    assert glob.glob(os.path.join(run, "samples", "*.png"))
    assert glob.glob(os.path.join(run, "events.out.tfevents.*"))


def test_checkpoint_resumes_and_reloads(in_tmp):
    args = ["--config", TOY, "--trainer.num_sanity_val_steps=0", *QUIET]
    first = main(["fit", *args, "--trainer.max_steps=40", "--trainer.val_check_interval=40"])
    ckpt = os.path.join(first.trainer.log_dir, "checkpoints", "last.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = main(["fit", *args, "--trainer.max_steps=60", "--trainer.val_check_interval=20", f"--ckpt_path={ckpt}"])
    assert second.trainer.global_step == 60
    assert not [w for w in caught if "--ckpt_path restores" in str(w.message)]  # same settings: no warning
    # a model setting changed on resume is replaced by the checkpoint's (LightningCLI): say so
    with pytest.warns(UserWarning, match=r"--ckpt_path restores .*init_args\.lr: 0\.5 -> 0\.003"):
        third = main(["fit", *args, "--trainer.max_steps=41", "--model.init_args.lr=0.5", f"--ckpt_path={ckpt}"])
    assert third.model.hparams.lr == 0.003
    model = OTMeanFlow.load_from_checkpoint(ckpt)
    assert isinstance(model, OTMeanFlow) and model.source == "8gaussians"
    # otflow predict keeps its samples with SampleWriter: the same as Trainer.predict returns
    predicted = main(["predict", *args, f"--ckpt_path={ckpt}", "--trainer.callbacks+=otflow_lightning.SampleWriter"])
    writer = next(c for c in predicted.trainer.callbacks if type(c).__name__ == "SampleWriter")
    saved = torch.load(writer.last_path)
    expected = torch.cat(predicted.trainer.predict(predicted.model, predicted.datamodule, ckpt_path=ckpt))
    assert saved["samples"].shape == (2000, 2) and torch.equal(saved["samples"], expected)
    assert torch.equal(saved["index"], torch.arange(2000))
    x0 = torch.randn(5, 2)
    assert model.sample(x0).shape == (5, 2)
    # "last": each run logs to a new version_N, so it resolves to the newest last checkpoint under the root
    newest = os.path.join(third.trainer.log_dir, "checkpoints", "last.ckpt")  # step 41, the latest written
    with pytest.warns(UserWarning, match=r"--ckpt_path last: .*") as record:
        fourth = main(["fit", *args, "--trainer.max_steps=45", "--trainer.limit_val_batches=0", "--ckpt_path=last"])
    said = [str(w.message) for w in record if "--ckpt_path last" in str(w.message)]
    assert said and said[0].endswith(newest) and fourth.trainer.ckpt_path == newest
    assert fourth.trainer.global_step == 45
    # a ModelCheckpoint with its own dirpath: Lightning resolves "last" there itself
    from otflow_lightning.cli import _newest_last_checkpoint

    custom = {"callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "ck"}}]}
    assert _newest_last_checkpoint(custom) is None
    assert _newest_last_checkpoint({}) == os.path.join(fourth.trainer.log_dir, "checkpoints", "last.ckpt")
    # the wrong file is refused before anything runs: a folder, a truncated file, another module's checkpoint
    with pytest.raises(ValueError, match=r"is a folder; give a checkpoint file in it: .*last\.ckpt"):
        main(["fit", *args, f"--ckpt_path={os.path.dirname(ckpt)}"])
    with open(ckpt, "rb") as f:
        (in_tmp / "cut.ckpt").write_bytes(f.read()[:1000])
    with pytest.raises(ValueError, match="cut.ckpt is not a readable checkpoint .* a truncated file"):
        main(["fit", *args, "--ckpt_path=cut.ckpt"])
    (in_tmp / "junk.ckpt").write_bytes(b"not a checkpoint" * 20)
    with pytest.raises(ValueError, match="junk.ckpt is not a readable checkpoint .* not a torch file"):
        main(["fit", *args, "--ckpt_path=junk.ckpt"])
    with pytest.raises(ValueError, match=r"holds a otflow_lightning\.OTMeanFlow checkpoint but the config trains "
                                         r"otflow_lightning\.OTNeuralFlowMatching"):
        main(["fit", "--config", os.path.join(CONFIGS, "toy_nfm.yaml"), *QUIET, f"--ckpt_path={ckpt}"])
    from otflow_lightning import OTNeuralFlowMatching

    with pytest.raises(ValueError, match=r"holds a otflow_lightning.OTMeanFlow checkpoint, not a .*OTNeuralFlowMatching "
                                         r"one; load it with OTMeanFlow.load_from_checkpoint"):
        OTNeuralFlowMatching.load_from_checkpoint(ckpt)
    assert type(OTMeanFlow.load_from_checkpoint(ckpt)) is OTMeanFlow
    with pytest.warns(UserWarning, match="otflow validate without --ckpt_path runs a model with freshly initialised"):
        main(["validate", *args, "--trainer.limit_val_batches=1"])


def test_a_second_run_in_one_folder_keeps_the_first_runs_config(in_tmp):
    """Without a logger every run logs to the root folder: the second run's config is saved beside
    the first's (config-v1.yaml), not over it."""
    args = ["fit", "--config", TOY, "--trainer.logger=false", "--trainer.max_steps=1", "--trainer.callbacks=[]",
            "--trainer.limit_val_batches=0", *QUIET]
    main([*args, "--model.lr=0.001"])
    with pytest.warns(UserWarning, match=r"config.yaml is an earlier run's; this run's config is saved as config-v1"):
        main([*args, "--model.lr=0.002"])
    assert yaml.safe_load((in_tmp / "config.yaml").read_text())["model"]["init_args"]["lr"] == 0.001
    assert yaml.safe_load((in_tmp / "config-v1.yaml").read_text())["model"]["init_args"]["lr"] == 0.002


def test_torch_threads_sets_torch_threads_before_the_run(in_tmp, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the run sets it; restored after the test
    try:
        torch.set_num_threads(2)
        main(["--config", TOY, "--torch_threads=1"], run=False)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"  # which DDP launchers keep
        torch.set_num_threads(2)
        main(["--config", TOY, "--torch_threads=null"], run=False)  # torch's own setting is left alone
        assert torch.get_num_threads() == 2
        for bad in (0, 10_000):
            with pytest.raises(ValueError, match=f"torch_threads must be a number of threads from 1 to this machine's "
                                                 f"{os.cpu_count()} cores, got {bad}"):
                main(["--config", TOY, f"--torch_threads={bad}"], run=False)
    finally:
        torch.set_num_threads(before)


def test_a_model_source_the_data_link_would_replace_is_refused(in_tmp):
    with pytest.raises(ValueError, match=r"model source 'gaussian' is not used: .* give --data.source gaussian"):
        main(["--config", TOY, "--model.source=gaussian"], run=False)
    config = in_tmp / "mine.yaml"
    config.write_text("model:\n  class_path: otflow_lightning.OTMeanFlow\n  init_args:\n    source: gaussian\n")
    with pytest.raises(ValueError, match="model source 'gaussian' is not used"):
        main(["--config", TOY, "--config", str(config)], run=False)
    assert main(["--config", TOY, "--model.init_args.source", "8gaussians"], run=False).model.source == "8gaussians"
    # a config that sets both alike, then --data.source: both change (the data's is the one to give)
    both = in_tmp / "both.yaml"
    both.write_text("model:\n  init_args:\n    source: 8gaussians\ndata:\n  init_args:\n    source: 8gaussians\n")
    cli = main(["--config", TOY, "--config", str(both), "--data.source", "gaussian"], run=False)
    assert cli.model.source == cli.datamodule.source == "gaussian"
    # --model as YAML (inline or a file), and a dict of args, are read alike
    inline = '{"class_path": "otflow_lightning.OTMeanFlow", "init_args": {"source": "gaussian"}}'
    with pytest.raises(ValueError, match="model source 'gaussian' is not used"):
        main(["--config", TOY, "--model", inline], run=False)
    model_file = in_tmp / "model.yaml"
    model_file.write_text("class_path: otflow_lightning.OTMeanFlow\ninit_args:\n  source: gaussian\n")
    with pytest.raises(ValueError, match="model source 'gaussian' is not used"):
        main(["--config", TOY, f"--model={model_file}"], run=False)
    as_dict = yaml.safe_load(open(TOY))
    as_dict["model"]["init_args"]["source"] = "gaussian"
    with pytest.raises(ValueError, match="model source 'gaussian' is not used"):
        main(as_dict, run=False)


def test_ckpt_path_takes_a_checkpoint_saved_from_python(in_tmp):
    """A module built in Python saves no ``_class_path``; ``--ckpt_path`` reads its settings as the
    init args of ``--model``'s class (LightningCLI rejected them) and restores its weights."""
    import lightning.pytorch as pl

    from otflow_lightning import OTPairDataModule

    module = OTMeanFlow(source="gaussian", lr=0.01)
    trainer = pl.Trainer(max_steps=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=".")
    trainer.fit(module, OTPairDataModule(source="gaussian", batch_size=64))
    trainer.save_checkpoint("python.ckpt")
    cli = main(["validate", "--model=OTMeanFlow", "--data=OTPairDataModule", "--data.source=gaussian",
                "--trainer.logger=false", *QUIET, "--ckpt_path=python.ckpt"])
    assert type(cli.model) is OTMeanFlow and cli.model.hparams.lr == 0.01
    assert all(torch.equal(a, b) for a, b in zip(cli.model.state_dict().values(), module.state_dict().values()))
    # loaded as the other module class, from Python or under otflow: a message that names the class
    from otflow_lightning import OTNeuralFlowMatching

    with pytest.raises(ValueError, match=r"python.ckpt holds a otflow_lightning.modules.meanflow.OTMeanFlow checkpoint, "
                                         r"not a otflow_lightning.modules.nfm.OTNeuralFlowMatching one; load it with "
                                         r"OTMeanFlow.load_from_checkpoint"):
        OTNeuralFlowMatching.load_from_checkpoint("python.ckpt")
    with pytest.raises(ValueError, match="the checkpoint holds a otflow_lightning.modules.meanflow.OTMeanFlow checkpoint"):
        pl.Trainer(max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                   default_root_dir=".").fit(OTNeuralFlowMatching(source="gaussian"),
                                             OTPairDataModule(source="gaussian", batch_size=64), ckpt_path="python.ckpt")
    with pytest.raises(ValueError, match=r"python.ckpt holds a otflow_lightning.modules.meanflow.OTMeanFlow checkpoint "
                                         r"but the config trains otflow_lightning.OTNeuralFlowMatching"):
        main(["validate", "--config", os.path.join(CONFIGS, "toy_nfm.yaml"), "--data.source=gaussian",
              "--trainer.logger=false", *QUIET, "--ckpt_path=python.ckpt"])


class SubMeanFlow(OTMeanFlow):
    """A subclass saved from Python: loaded through its parent, it comes back as itself."""


def test_load_from_checkpoint_reads_the_file_before_lightning(in_tmp):
    import io

    import lightning.pytorch as pl

    from otflow_lightning import OTNeuralFlowMatching, OTPairDataModule

    trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=".")
    trainer.fit(SubMeanFlow(source="gaussian", lr=0.01), OTPairDataModule(source="gaussian", batch_size=64))
    trainer.save_checkpoint("sub.ckpt")
    loaded = OTMeanFlow.load_from_checkpoint("sub.ckpt")
    assert type(loaded) is SubMeanFlow and loaded.lr == 0.01
    with open("sub.ckpt", "rb") as f:  # a file object: read, then left where it was for Lightning
        buffer = io.BytesIO(f.read())
    with pytest.raises(ValueError, match=r"holds a test_cli.SubMeanFlow checkpoint, not a .*OTNeuralFlowMatching one"):
        OTNeuralFlowMatching.load_from_checkpoint(buffer)
    assert buffer.tell() == 0 and type(OTMeanFlow.load_from_checkpoint(buffer)) is SubMeanFlow
    (in_tmp / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.ckpt is not a readable checkpoint .* not a torch file"):
        OTMeanFlow.load_from_checkpoint("notes.ckpt")
    torch.save({"a": 1}, "dict.ckpt")
    with pytest.raises(ValueError, match="dict.ckpt holds a torch dict without a state_dict, not a Lightning checkpoint"):
        OTMeanFlow.load_from_checkpoint("dict.ckpt")


EXTENSION = textwrap.dedent(
    '''
    import torch
    from torch import nn
    from otflow_lightning import OTMeanFlow


    class TinyNet(nn.Module):
        def __init__(self, width: int = 16):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))

        def forward(self, x, t, h):
            return self.body(torch.cat([x, t[:, None], h[:, None]], 1))


    class PlainLossMeanFlow(OTMeanFlow):
        """A downstream subclass: own network default, own loss weight."""

        def __init__(self, width: int = 16, **kwargs):
            super().__init__(net=TinyNet(width), **kwargs)
            self.save_hyperparameters()

        def loss_weight(self, sq_error):
            self.weight_calls = getattr(self, "weight_calls", 0) + 1
            return torch.ones_like(sq_error)
    '''
)


def test_downstream_subclass_trains_through_cli_and_reloads(in_tmp):
    (in_tmp / "my_ext.py").write_text(EXTENSION)
    cli = main(
        [
            "fit", "--config", TOY,
            "--model", "my_ext.PlainLossMeanFlow", "--model.width=24", "--model.data_shape=[2]",
            "--trainer.max_steps=30", "--trainer.val_check_interval=30", *QUIET,
        ]
    )
    import my_ext

    assert type(cli.model) is my_ext.PlainLossMeanFlow and cli.model.weight_calls >= 30  # training (and validation) called the override
    ckpt = os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt")
    loaded = my_ext.PlainLossMeanFlow.load_from_checkpoint(ckpt)
    assert type(loaded) is my_ext.PlainLossMeanFlow
    assert loaded.net.body[0].out_features == 24
    x0 = torch.randn(7, 2)
    assert torch.allclose(loaded.sample(x0), cli.model.cpu().sample(x0), atol=1e-6)


def test_print_config_names_the_classes(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", TOY, "--print_config"])
    out = capsys.readouterr().out
    assert "otflow_lightning.OTMeanFlow" in out and "otflow_lightning.OTPairDataModule" in out
    assert "source: 8gaussians" in out


@pytest.mark.parametrize(
    "override,message",
    [
        ("--data.init_args.coupling=hungarian", "unknown coupling method 'hungarian'"),
        ("--data.init_args.target=moon", "unknown target 'moon'"),
    ],
)
def test_cli_bad_config_is_a_clear_error(in_tmp, override, message, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        main(["fit", "--config", TOY, override, "--trainer.max_steps=1", *QUIET])
    text = str(info.value) + capsys.readouterr().err
    assert message in text
    # the class's own error, alone: not jsonargparse's union report wrapping it ("Does not validate ...")
    assert info.type is ValueError and info.value.__cause__ is None and "Does not validate" not in str(info.value)


def test_console_script_exits_zero(in_tmp):
    """`otflow fit ...` as a process: a successful run exits with status 0."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from otflow_lightning.cli import entry_point; entry_point()",
           "fit", "--config", TOY, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", *QUIET]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("config", sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml")))
def test_every_config_builds(config, tmp_path):
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]  # the GPU configs too
    cli = main(["--config", os.path.join(CONFIGS, config), f"--trainer.default_root_dir={tmp_path}", *cpu], run=False)
    assert cli.model.source == cli.datamodule.source
    # every evaluation callback's schedule includes the last validation: the trained model is evaluated and drawn
    interval, max_steps = cli.trainer.val_check_interval, cli.trainer.max_steps
    assert cli.trainer.check_val_every_n_epoch is None and isinstance(interval, int) and max_steps > 0
    validations = range(interval, max_steps + 1, interval)
    for cb in cli.trainer.callbacks:
        if isinstance(cb, EvalCallback):
            cb = copy.deepcopy(cb)
            due = [cb._due(types.SimpleNamespace(global_step=step)) for step in validations]
            assert due[-1], f"{type(cb).__name__} skips the last validation (step {max_steps})"
