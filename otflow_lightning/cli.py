"""The ``otflow`` command: LightningCLI over the one-step modules and the pairing DataModule.

``otflow fit --config configs/toy.yaml``; ``--model OTMeanFlow`` / ``--data OTPairDataModule`` pick
classes by name (any imported LightningModule / LightningDataModule subclass, or a full class
path such as ``my_project.MyModule``); ``--print_config`` prints the resolved YAML.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import otflow_lightning  # noqa: F401  (registers the package's classes for short names)

__all__ = ["OTFlowCLI", "main", "entry_point"]


class OTFlowCLI(LightningCLI):
    """LightningCLI with the data's ``source`` linked into the model (set it once, under ``data``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.source", "model.init_args.source")


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
