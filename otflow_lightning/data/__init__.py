"""Data: the pairing DataModule, sources, toy distributions and datasets."""

from .datamodule import OTPairDataModule, Pair
from .datasets import IndexedDataset, ToyDataset
from .sources import check_source, draw_source
from .toys import TOYS, sample_toy, toy_names

__all__ = [
    "OTPairDataModule",
    "Pair",
    "ToyDataset",
    "IndexedDataset",
    "draw_source",
    "check_source",
    "TOYS",
    "sample_toy",
    "toy_names",
]
