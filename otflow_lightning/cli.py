"""The ``otflow`` command: LightningCLI over the one-step modules and the pairing DataModule.

``otflow fit --config configs/toy.yaml``; ``--model OTMeanFlow`` / ``--data OTPairDataModule`` pick
classes by name (any imported LightningModule / LightningDataModule subclass, or a full class
path such as ``my_project.MyModule``); ``--print_config`` prints the resolved YAML.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

import otflow_lightning  # noqa: F401  (registers the package's classes for short names)

__all__ = ["OTFlowCLI", "main", "entry_point"]


def _flat(tree, prefix: str = "") -> dict[str, object]:
    """``{"a.b": leaf}`` of nested dicts (lists and other values are leaves)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


class OTFlowCLI(LightningCLI):
    """LightningCLI with the data's ``source`` linked into the model (set it once, under ``data``),
    and a warning when ``--ckpt_path`` replaces model settings given in the config or on the
    command line (LightningCLI rebuilds the model a checkpoint was trained with)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.source", "model.init_args.source")

    def instantiate_classes(self) -> None:
        """Build the classes; an error raised by a class's own checks surfaces alone, not wrapped in
        jsonargparse's union-matching report (whose text repeats it under a second traceback)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            if root is err or not isinstance(root, (ValueError, TypeError, FileNotFoundError)):
                raise
            raise root from None

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's, plus: a checkpoint saved outside the CLI (a module built in Python) has no
        ``_class_path`` among its hyperparameters, so they are read as the init args of the
        config's model class (LightningCLI fails on them); and the warning on replaced settings. The
        rest follows LightningCLI's method (Lightning 2.6) step for step."""
        sub = self.config.get("subcommand")
        model = self.config[sub].get("model") if sub else None
        before = _flat(model.as_dict()) if hasattr(model, "as_dict") else None
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:  # saved under the CLI
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        elif getattr(model, "class_path", None):
            hparams = {"class_path": model.class_path, "init_args": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        after = self.config[sub].get("model")
        if before is None or not hasattr(after, "as_dict"):
            return
        after = _flat(after.as_dict())
        changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k] and before[k] is not None)
        if changed:
            shown = "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in changed[:8])
            rank_zero_warn(
                f"--ckpt_path restores the model the checkpoint was trained with, so these model settings of the "
                f"config / command line are replaced by the checkpoint's: {shown}"
                f"{' ...' if len(changed) > 8 else ''}. To train with new model settings from these weights, start a "
                "new run and load the state dict instead of resuming"
            )


def main(args: list[str] | dict | None = None, run: bool = True) -> OTFlowCLI:
    """Run the CLI on ``args`` (default ``sys.argv[1:]``); tests pass a list to run in-process."""
    if os.getcwd() not in sys.path:  # let --model my_module.MyClass import from the working directory
        sys.path.insert(0, os.getcwd())
    return OTFlowCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def entry_point() -> None:
    """The ``otflow`` console script (exit status 0 on success, unlike returning the CLI object)."""
    main()


if __name__ == "__main__":
    entry_point()
