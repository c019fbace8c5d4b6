"""Data: the pairing DataModule, sources, toy distributions, toy and image datasets."""

from .datamodule import OTPairDataModule, Pair
from .datasets import IndexedDataset, ToyDataset
from .images import IMAGE_DATASETS, CIFAR10Dataset, DigitsDataset, ImageFolderDataset, MNISTDataset, ZipDataset, image_dataset
from .sources import SOURCES, check_source, draw_source, register_source
from .toys import TOYS, sample_toy

__all__ = [
    "OTPairDataModule",
    "Pair",
    "ToyDataset",
    "IndexedDataset",
    "DigitsDataset",
    "MNISTDataset",
    "CIFAR10Dataset",
    "ImageFolderDataset",
    "ZipDataset",
    "IMAGE_DATASETS",
    "image_dataset",
    "draw_source",
    "check_source",
    "register_source",
    "SOURCES",
    "TOYS",
    "sample_toy",
]
