"""Image datasets: sklearn's bundled digits, MNIST, CIFAR-10, an image folder, and a zip for evaluation.

Every dataset yields ``(x, label)`` with ``x`` a float tensor ``(C, H, W)`` scaled to [-1, 1] and
``label`` an int (``0`` for unlabelled folders). :func:`image_dataset` builds one by name, which
is what ``OTPairDataModule(target="cifar10", root=..., download=...)`` calls.

- ``digits``: sklearn's 1,797 8x8 digits (bundled with scikit-learn, nothing to download), a fixed
  80/20 train/test split. ``size=16`` (or any multiple of 8) upsamples bilinearly.
- ``mnist``: torchvision's MNIST (the idx files under ``root/MNIST/raw``); ``pad=2`` gives 32x32.
- ``cifar10``: the python pickled batches under ``root/cifar-10-batches-py``, read here (so
  files in that format load without torchvision's checksum); ``download=True`` fetches them with
  torchvision. ``hflip=True`` flips half the training images (the usual CIFAR-10 augmentation).
- ``folder``: every image under ``root`` (recursively), centre-cropped and resized to ``size``;
  labels are the first-level subfolder names when all images sit in subfolders.
"""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DigitsDataset",
    "MNISTDataset",
    "CIFAR10Dataset",
    "ImageFolderDataset",
    "ZipDataset",
    "IMAGE_DATASETS",
    "image_dataset",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _to_unit(images: Tensor, max_value: float) -> Tensor:
    """Scale ``[0, max_value]`` pixels to float ``[-1, 1]``."""
    return images.float() * (2.0 / max_value) - 1.0


def _missing(name: str, path: str | os.PathLike, cause: Exception | None = None) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found at {os.path.abspath(path)}; pass download=True (data.init_args.download: true) "
        f"to fetch it, or set root to the folder that holds it"
        + (f" ({cause})" if cause else "")
    )


class _TensorImages(Dataset):
    """Images held as one uint8 tensor ``(N, C, H, W)`` plus labels; decoded per item."""

    images: Tensor
    labels: Tensor
    hflip: bool = False

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = _to_unit(self.images[index], 255.0)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[index])


class DigitsDataset(Dataset):
    """sklearn's bundled 8x8 digits, ``(1, size, size)`` in [-1, 1], with labels 0-9.

    Args:
        split: ``train`` (80%), ``test`` (20%) or ``all``; the split is fixed (seed 0).
        size: image side, a multiple of 8 (bilinear upsampling beyond 8).
    """

    def __init__(self, split: str = "train", size: int = 8) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "test", "all"):
            raise ValueError(f"DigitsDataset split must be 'train', 'test' or 'all', got {split!r}")
        if size < 8 or size % 8:
            raise ValueError(f"DigitsDataset size must be a positive multiple of 8, got {size}")
        digits = load_digits()
        images = _to_unit(torch.from_numpy(digits.images), 16.0)[:, None]
        labels = torch.from_numpy(digits.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(labels))
        keep = {"train": order[:cut], "test": order[cut:], "all": order}[split]
        images, self.labels = images[keep], labels[keep]
        if size != 8:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class MNISTDataset(_TensorImages):
    """MNIST through torchvision: ``(1, 28 + 2 pad, 28 + 2 pad)`` in [-1, 1], labels 0-9.

    Args:
        root: folder holding ``MNIST/raw/*-idx?-ubyte`` (torchvision's layout).
        train: training (60k) or test (10k) split.
        download: fetch the files if missing.
        pad: pixels of background (-1) added on each side (``2`` gives 32x32).
    """

    def __init__(self, root: str = "data", train: bool = True, download: bool = False, pad: int = 0) -> None:
        from torchvision.datasets import MNIST

        try:
            mnist = MNIST(root, train=train, download=download)
        except RuntimeError as err:
            raise _missing("MNIST", Path(root) / "MNIST" / "raw", err) from None
        self.images = F.pad(mnist.data[:, None], (pad,) * 4) if pad else mnist.data[:, None]
        self.labels = mnist.targets.long()


class CIFAR10Dataset(_TensorImages):
    """CIFAR-10's python pickled batches: ``(3, 32, 32)`` in [-1, 1], labels 0-9.

    Args:
        root: folder holding ``cifar-10-batches-py`` (``data_batch_1`` ... ``data_batch_5``,
            ``test_batch``).
        train: the five training batches (50k) or the test batch (10k).
        download: fetch and verify the archive with torchvision if a needed batch file is missing.
        hflip: random horizontal flips (training augmentation).
    """

    def __init__(self, root: str = "data", train: bool = True, download: bool = False, hflip: bool = False) -> None:
        folder = Path(root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        missing = [n for n in names if not (folder / n).is_file()]
        if download and missing:  # torchvision verifies the archive and extracts it again
            from torchvision.datasets import CIFAR10

            CIFAR10(root, train=train, download=True)
            missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise _missing(f"CIFAR-10 ({', '.join(missing)})", folder)
        images, labels = [], []
        for name in names:
            try:
                with open(folder / name, "rb") as f:
                    batch = pickle.load(f, encoding="latin1")
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise ValueError(f"{folder / name} is unreadable ({err}); delete {folder} and run again with "
                                 "download=True") from err
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"])
        self.images = torch.from_numpy(np.concatenate(images))
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.hflip = hflip


def _hidden(parts: tuple[str, ...]) -> bool:
    """A path under a folder or with a name that no image set means: dotfiles (macOS' ``._name.png``) and ``__MACOSX``."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


class ImageFolderDataset(Dataset):
    """Every image file under ``root``, centre-cropped to a square and resized to ``size``.

    Args:
        root: folder searched recursively for ``.png``, ``.jpg``, ... files (not hidden files or
            folders, nor ``__MACOSX``). 8-bit images, and 16-bit grayscale scaled to 8 bits; 32-bit
            integer or float images are refused.
        size: output side in pixels.
        channels: 3 (RGB) or 1 (grayscale).
        hflip: random horizontal flips.
    """

    def __init__(self, root: str, size: int = 32, channels: int = 3, hflip: bool = False) -> None:
        if channels not in (1, 3):
            raise ValueError(f"ImageFolderDataset channels must be 1 or 3, got {channels}")
        base = Path(root)
        fix = "set root (data.init_args.root) to the folder of images"
        if not base.is_dir():
            raise FileNotFoundError(f"image folder {os.path.abspath(root)} does not exist; {fix}")
        self.files = sorted(
            p for p in base.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p.relative_to(base).parts)
        )
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {os.path.abspath(root)}; {fix}")
        self._open(self.files[0]).close()  # an unreadable or unsupported first file fails here, at setup
        tops = [p.relative_to(base).parts for p in self.files]
        self.classes = sorted({t[0] for t in tops}) if all(len(t) > 1 for t in tops) else []
        self.labels = [self.classes.index(t[0]) if self.classes else 0 for t in tops]
        self.size, self.mode, self.hflip = size, "RGB" if channels == 3 else "L", hflip

    def __len__(self) -> int:
        return len(self.files)

    @staticmethod
    def _open(path: Path):
        """The image at ``path``, decoded (PIL, 8 bits a channel; 16-bit grayscale scaled down), or
        an ``OSError`` naming the file (a truncated file reads its header, then fails on the pixels)."""
        from PIL import Image

        try:
            img = Image.open(path)
            img.load()
            if img.mode.startswith("I;16"):  # 16-bit grayscale: convert() would clip it to 255
                img = Image.fromarray((np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)).round().astype(np.uint8))
        except OSError as err:
            raise OSError(f"cannot read image {path}: {err}; remove or re-save it") from err
        if img.mode in ("I", "F"):
            img.close()
            raise ValueError(f"{path} is a 32-bit {'float' if img.mode == 'F' else 'integer'} image (mode {img.mode}), "
                             "whose value range is unknown; convert the folder to 8- or 16-bit images")
        return img

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        with self._open(self.files[index]) as img:
            img = img.convert(self.mode)
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((self.size, self.size), Image.BICUBIC)
            pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
        x = _to_unit(pixels.reshape(self.size, self.size, -1).permute(2, 0, 1), 255.0)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[index]


class ZipDataset(Dataset):
    """Item ``i`` is ``(target[i], source[i % len(source)])``: fixed source/target pairs for evaluation."""

    def __init__(self, target: Dataset, source: Dataset) -> None:
        self.target, self.source = target, source

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int):
        return self.target[index], self.source[index % len(self.source)]


IMAGE_DATASETS = ("digits", "mnist", "cifar10", "folder")


def image_dataset(name: str, root: str = "data", train: bool = True, download: bool = False, **options) -> Dataset:
    """Build an image dataset by name (:data:`IMAGE_DATASETS`).

    Args:
        name: ``digits``, ``mnist``, ``cifar10`` or ``folder``.
        root: data folder (``folder``: the image folder itself; ``digits``: unused).
        train: training split (``False``: the test split).
        download: fetch MNIST / CIFAR-10 if missing.
        **options: passed to the dataset (``size`` for digits and folders, ``pad`` for MNIST,
            ``hflip`` for CIFAR-10 and folders, ``channels`` for folders).
    """
    classes = {"digits": DigitsDataset, "mnist": MNISTDataset, "cifar10": CIFAR10Dataset, "folder": ImageFolderDataset}
    if name not in classes:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {IMAGE_DATASETS} or pass a Dataset")
    dataset = classes[name]
    accepted = sorted(set(inspect.signature(dataset).parameters) - {"split", "root", "train", "download"})
    if unknown := sorted(set(options) - set(accepted)):
        raise ValueError(f"dataset_options {unknown} are not options of the {name!r} dataset; it takes {accepted}")
    if name == "digits":
        return dataset("train" if train else "test", **options)
    if name == "folder":
        return dataset(root, **options)
    return dataset(root, train=train, download=download, **options)
