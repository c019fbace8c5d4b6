"""The image configs through the real CLI, on CPU, with fixture data in the real on-disk formats."""

from pathlib import Path

import pytest
import torch
import yaml

import otflow_lightning.callbacks as callbacks
from otflow_lightning.cli import main
from test_images import write_cifar

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def cpu_config(name: str, tmp_path: Path) -> Path:
    """The config without FID, which needs the Inception weights (never downloaded in tests); its
    arguments are still checked by building the callback."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    kept = []
    for c in config["trainer"]["callbacks"]:
        if c["class_path"] == "otflow_lightning.callbacks.FIDCallback":
            callbacks.FIDCallback(**c.get("init_args", {}))
        else:
            kept.append(c)
    config["trainer"]["callbacks"] = kept
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.num_nodes=1"]


def test_cifar_config_fast_dev_run(tmp_path):
    # the config as shipped (bf16-mixed autocast included) but on one CPU process with a tiny U-Net
    write_cifar(tmp_path / "data", per_batch=4)
    cli = main(args=[
        "fit", "--config", str(cpu_config("cifar.yaml", tmp_path)), *CPU, "--model.init_args.net.init_args.preset=tiny",
        "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
        f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
    ])
    assert cli.trainer.global_step == 1
    assert cli.model.net.__class__.__name__ == "UNet" and cli.model.jvp_no_grad
    assert cli.datamodule.data_shape == (3, 32, 32)


@pytest.mark.parametrize("config", ["digits.yaml", "digits_cond.yaml"])
def test_digits_config_trains_a_few_steps(tmp_path, config):
    cli = main(args=[
        "fit", "--config", str(cpu_config(config, tmp_path)), *CPU,
        "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={tmp_path}", "--data.init_args.batch_size=32",
    ])
    assert cli.trainer.global_step == 3
    assert "val/w2_sq" in cli.trainer.callback_metrics
    if config == "digits_cond.yaml":  # class-conditional: C2OT pairs, labels reach the net, 10x10 grid
        assert cli.model.num_classes == 10 and cli.datamodule.conditional and cli.model.guidance_scale == 2.0
        assert cli.model.net.label_embedding is not None
        assert list((tmp_path / "lightning_logs").rglob("step*.png"))
    # the checkpoint rebuilds the config's U-Net (not the default MLP) and samples as the trained module
    loaded = type(cli.model).load_from_checkpoint(next((tmp_path / "lightning_logs").rglob("last.ckpt")))
    assert type(loaded.net).__name__ == "UNet"
    x0, labels = torch.randn(4, 1, 8, 8), (None if cli.model.num_classes is None else torch.arange(4))
    assert torch.allclose(loaded.sample(x0, labels=labels), cli.model.cpu().sample(x0, labels=labels), atol=1e-5)


def test_cifar_nfm_config_fast_dev_run(tmp_path):
    write_cifar(tmp_path / "data", per_batch=4)
    cli = main(args=[
        "fit", "--config", str(cpu_config("cifar_nfm.yaml", tmp_path)), *CPU,
        "--model.init_args.net.init_args.net.init_args.preset=tiny", "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path}", f"--data.init_args.root={tmp_path / 'data'}",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
    ])
    assert cli.trainer.global_step == 1
