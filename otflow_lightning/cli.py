"""The ``otflow`` command: LightningCLI over the one-step modules and the pairing DataModule.

``otflow fit --config configs/toy.yaml``; ``--model OTMeanFlow`` / ``--data OTPairDataModule`` pick
classes by name (any imported LightningModule / LightningDataModule subclass, or a full class
path such as ``my_project.MyModule``); ``--print_config`` prints the resolved YAML.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.utilities import rank_zero_warn

import otflow_lightning  # noqa: F401  (registers the package's classes for short names)
from otflow_lightning.modules.base import checkpoint_class, read_checkpoint, related_classes
from otflow_lightning.modules.base import saved_class as saved_class_of

__all__ = ["OTFlowCLI", "VersionedConfigSaver", "main", "entry_point"]


def _flat(tree, prefix: str = "") -> dict[str, object]:
    """``{"a.b": leaf}`` of nested dicts (lists and other values are leaves)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def _resolve(class_path: str) -> object:
    """The class a dotted path names (``None`` if it does not import)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _get(node, key: str, default=None):
    """``node[key]`` of a dict or a jsonargparse Namespace (``default`` for anything else)."""
    if isinstance(node, dict):
        return node.get(key, default)
    return getattr(node, key, default) if hasattr(node, "__dict__") else default


def _load_yaml(value: str):
    """A ``--config`` / ``--model`` value as YAML: a file's contents, or the text itself (``None`` if
    it does not parse; jsonargparse reports that)."""
    try:
        is_file = Path(value).is_file()
    except (OSError, ValueError):  # a name too long for a path: inline YAML
        is_file = False
    try:
        return yaml.safe_load(Path(value).read_text() if is_file else value)
    except (OSError, yaml.YAMLError):
        return None


def _source_in(model, data) -> str | None:
    """The ``source`` a model node sets where the data node beside it does not set the same."""
    source = _get(_get(model, "init_args", model), "source")
    return source if source is not None and source != _get(_get(data, "init_args", data), "source") else None


def _model_source_given(args) -> str | None:
    """The model ``source`` given on the command line (``--model.source``, ``--model`` as YAML), or in
    a ``--config`` file or a dict of args that does not set the data's ``source`` to the same value
    (the link from ``data.source`` overwrites it unseen; a config that sets both alike is consistent,
    and a later ``--data.source`` is meant to change both)."""
    if isinstance(args, dict):
        nodes = [args] + [v for v in args.values() if isinstance(v, dict)]  # top level, or under a subcommand
        return next((s for node in nodes if (s := _source_in(node.get("model"), node.get("data")))), None)
    if not isinstance(args, (list, tuple)):
        return None
    args, given = [str(a) for a in args], None
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        value = value if eq else (args[i + 1] if i + 1 < len(args) else None)
        if value is None:
            continue
        if key in ("--model.source", "--model.init_args.source"):
            given = value
        elif key == "--model" and isinstance(config := _load_yaml(value), dict):  # a class name is a str
            given = _source_in(config, None) or given
        elif key == "--config" and isinstance(config := _load_yaml(value), dict):
            given = _source_in(_get(config, "model"), _get(config, "data")) or given
    return given


def _newest_last_checkpoint(trainer) -> str | None:
    """The newest ``last*.ckpt`` of the default checkpoint layout, ``<root>/<logger name>/version_*/
    checkpoints/`` (and ``<root>/checkpoints/`` without a logger), where ``root`` is the logger's
    ``save_dir`` or the trainer's ``default_root_dir`` (the working directory by default). ``None``
    where a ``ModelCheckpoint`` has its own ``dirpath`` (Lightning resolves "last" there itself)
    or no such file exists."""
    callbacks = _get(trainer, "callbacks") or []
    if any(_get(_get(cb, "init_args"), "dirpath") for cb in (callbacks if isinstance(callbacks, list) else [callbacks])):
        return None
    roots = {Path(_get(trainer, "default_root_dir") or os.getcwd())}
    save_dir = _get(_get(_get(trainer, "logger"), "init_args"), "save_dir")
    if save_dir:
        roots.add(Path(save_dir))
    found = [p for root in roots for pattern in ("checkpoints/last*.ckpt", "*/version_*/checkpoints/last*.ckpt")
             for p in root.glob(pattern) if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


class VersionedConfigSaver(SaveConfigCallback):
    """Lightning's config saver that never replaces an earlier run's file: where the log folder holds
    ``config.yaml`` already (without a logger every run logs to the same root folder; or a logger
    given a fixed ``version``), it saves ``config-v1.yaml``, ``config-v2.yaml``, ... as
    ``ModelCheckpoint`` versions its files, and warns which name it took."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir, name = trainer.log_dir, self.config_filename  # log_dir broadcasts: every rank asks
            if trainer.is_global_zero:
                stem, suffix = os.path.splitext(self.config_filename)
                version = 0
                fs = get_filesystem(log_dir)  # a remote log folder (s3://...) too
                while fs.isfile(os.path.join(log_dir, name)):
                    version += 1
                    name = f"{stem}-v{version}{suffix}"
                if version:
                    rank_zero_warn(f"{os.path.join(log_dir, self.config_filename)} is an earlier run's; this run's "
                                   f"config is saved as {name} beside it")
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


class OTFlowCLI(LightningCLI):
    """LightningCLI with the data's ``source`` linked into the model (set it once, under ``data``),
    and a warning when ``--ckpt_path`` replaces model settings given in the config or on the
    command line (LightningCLI rebuilds the model a checkpoint was trained with)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.source", "model.init_args.source")
        parser.add_argument(
            "--torch_threads", type=Optional[int], default=None,
            help="torch threads of each process, set before the classes are built (and as OMP_NUM_THREADS, which "
                 "Lightning's DDP launchers keep); default: torch's own, one per core, or cores / processes under "
                 "DDP. Small CPU models (the 2D toys) train fastest on one thread: a second one gains little on tiny "
                 "matrix products and stalls every operation whenever another process holds a core.",
        )

    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "torch_threads")
        if threads is not None:
            cores = os.cpu_count() or 1
            if not 1 <= threads <= cores:
                raise ValueError(f"torch_threads must be a number of threads from 1 to this machine's {cores} cores, "
                                 f"got {threads}")
            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)  # DDP launchers set cores / processes unless it is set

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's, refusing a ``model`` ``source`` that the link from ``data`` would replace unseen."""
        given = _model_source_given(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        data = (self.config[sub] if sub else self.config).get("data")
        source = getattr(getattr(data, "init_args", None), "source", None)
        if given is not None and source is not None and given != source:
            raise ValueError(f"model source {given!r} is not used: otflow sets the model's source from the data's "
                             f"({source!r}); give --data.source {given} (data: init_args: source: in a config) instead")

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
        """LightningCLI's method (Lightning 2.6), with these additions: ``last`` resolves to the
        newest last checkpoint of the default layout (:func:`_newest_last_checkpoint`); a folder, an
        unreadable file or a checkpoint of another model class is refused; a checkpoint saved
        outside the CLI (a module built in Python) has no ``_class_path`` among its
        hyperparameters, so they are read as the init args of the config's model class
        (LightningCLI fails on them); and a warning names the settings the checkpoint replaces."""
        sub = self.config.get("subcommand")
        model = self.config[sub].get("model") if sub else None
        before = _flat(model.as_dict()) if hasattr(model, "as_dict") else None
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if sub in ("validate", "test", "predict") and not ckpt_path:
            rank_zero_warn(f"otflow {sub} without --ckpt_path runs a model with freshly initialised weights; pass "
                           "--ckpt_path lightning_logs/version_N/checkpoints/last.ckpt to use a trained one")
        if ckpt_path == "last":
            ckpt_path = _newest_last_checkpoint(self.config[sub].get("trainer"))
            if ckpt_path is None:
                return  # Lightning starts afresh (the first run of a job that always passes "last")
            self.config[sub]["ckpt_path"] = ckpt_path
            rank_zero_warn(f"--ckpt_path last: each otflow run logs to a new version_N folder, so 'last' resumes "
                           f"the newest last checkpoint under the run's root: {ckpt_path}")
        if ckpt_path and Path(ckpt_path).is_dir():
            found = sorted(p.name for p in Path(ckpt_path).glob("*.ckpt"))
            raise ValueError(f"--ckpt_path {ckpt_path} is a folder; give a checkpoint file in it"
                             f"{': ' + ', '.join(found) if found else ' (it holds no .ckpt files)'}")
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        checkpoint = read_checkpoint(ckpt_path, f"--ckpt_path {ckpt_path}")
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        saved_class = saved_class_of(checkpoint)  # also of a module saved from Python
        if not hparams and not saved_class:
            return
        config_class = getattr(model, "class_path", None)
        # a checkpoint imports nothing; a subclass's is related (LightningCLI switches to it, and warns)
        related = related_classes(checkpoint_class(checkpoint), _resolve(config_class or ""))
        if saved_class and config_class and not related:
            raise ValueError(f"--ckpt_path {ckpt_path} holds a {saved_class} checkpoint but the config trains "
                             f"{config_class}; give the checkpoint of a {config_class.rsplit('.', 1)[-1]} run, or "
                             f"the config it was trained with (--model {saved_class})")
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
        save_config_callback=VersionedConfigSaver,
        args=args,
        run=run,
    )


def entry_point() -> None:
    """The ``otflow`` console script (exit status 0 on success, unlike returning the CLI object)."""
    main()


if __name__ == "__main__":
    entry_point()
