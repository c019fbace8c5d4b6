"""Image datasets, loaded from small files written in the real on-disk formats (nothing downloads)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otflow_lightning import OTPairDataModule, Pair
from otflow_lightning.data import CIFAR10Dataset, DigitsDataset, ImageFolderDataset, MNISTDataset


def write_cifar(root: Path, per_batch: int = 4, seed: int = 0) -> np.ndarray:
    """CIFAR-10's ``cifar-10-batches-py`` layout: 5 training batches and a test batch, pickled dicts
    with a ``(n, 3072)`` uint8 ``data`` row-major in (C, H, W) and a ``labels`` list. Returns the
    first training batch's data."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch = {"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(), "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        first = data if first is None else first
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)], "num_cases_per_batch": per_batch}, f)
    return first


def _idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's MNIST layout: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = None
    for split in ("train", "t10k"):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _idx(raw / f"{split}-images-idx3-ubyte", images)
        _idx(raw / f"{split}-labels-idx1-ubyte", labels)
        out = (images, labels) if out is None else out
    return out


def test_digits_bundled_scaled_and_split():
    train, test = DigitsDataset("train"), DigitsDataset("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    x, y = train[0]
    assert x.shape == (1, 8, 8) and 0 <= y <= 9
    assert train.images.min() == -1 and train.images.max() == 1
    x16, y16 = DigitsDataset("train", size=16)[0]
    assert x16.shape == (1, 16, 16) and y16 == y
    pooled = torch.nn.functional.avg_pool2d(x16[None], 2).flatten()
    assert torch.corrcoef(torch.stack([pooled, x.flatten()]))[0, 1] > 0.9  # the same digit, upsampled


def test_cifar_pickles_load_in_order(tmp_path):
    first = write_cifar(tmp_path, per_batch=3)
    train, test = CIFAR10Dataset(str(tmp_path)), CIFAR10Dataset(str(tmp_path), train=False)
    assert len(train) == 15 and len(test) == 3
    x, _ = train[1]
    expected = torch.from_numpy(first[1].reshape(3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(x, expected)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])  # an interrupted extraction
    with pytest.raises(ValueError, match=r"data_batch_3 is unreadable .* delete .*cifar-10-batches-py and run again "
                                         r"with download=True"):
        CIFAR10Dataset(str(tmp_path))


def test_mnist_idx_files_load_through_torchvision(tmp_path):
    images, labels = write_mnist(tmp_path)
    ds = MNISTDataset(str(tmp_path), pad=2)
    x, y = ds[2]
    assert x.shape == (1, 32, 32) and y == labels[2]
    torch.testing.assert_close(x[0, 2:-2, 2:-2], torch.from_numpy(images[2]).float() / 127.5 - 1)
    assert (x[0, :2] == -1).all()


def test_missing_data_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        CIFAR10Dataset(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"MNIST.*download=True"):
        MNISTDataset(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="image dataset"):
        OTPairDataModule(target="imagenet")


def test_image_folder_labels_from_subfolders(tmp_path):
    for cls, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((20, 30, 3), value, dtype=np.uint8)).save(tmp_path / cls / "a.png")
    ds = ImageFolderDataset(str(tmp_path), size=8)
    assert ds.classes == ["cats", "dogs"]
    (x0, y0), (x1, y1) = ds[0], ds[1]
    assert x0.shape == (3, 8, 8) and (y0, y1) == (0, 1)
    assert (x0 == -1).all() and (x1 == 1).all()


def _first_batch(dm: OTPairDataModule, training: bool = True) -> Pair:
    class _Trainer:  # just what the hook reads
        global_rank, global_step = 0, 0

    _Trainer.training = training
    dm.trainer = _Trainer()
    loader = dm.train_dataloader() if training else dm.val_dataloader()
    batch = next(iter(loader))
    return dm.on_after_batch_transfer(batch[0] if isinstance(batch, tuple) and isinstance(batch[0], dict) else batch, 0)


def test_datamodule_named_image_target(tmp_path):
    write_cifar(tmp_path, per_batch=4)
    dm = OTPairDataModule(target="cifar10", root=str(tmp_path), batch_size=8, dataset_options={"hflip": True})
    assert dm.data_shape == (3, 32, 32) and len(dm.val_target) == 4
    pair = _first_batch(dm)
    assert pair.x0.shape == pair.x1.shape == (8, 3, 32, 32) and pair.labels.shape == (8,)
    assert 0 < pair.stats["coupling/cost_ratio"] < 1  # paired by OT: cheaper than the independent pairs


def test_translation_draws_source_from_the_other_dataset(tmp_path):
    # digits (8x8) -> an image folder of constant images; x0 must be real digits
    for i in range(10):
        Image.fromarray(np.full((8, 8), 25 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    target = ImageFolderDataset(str(tmp_path), size=8, channels=1)
    dm = OTPairDataModule(target=target, val_target=target, source_data="digits", batch_size=4)
    pair = _first_batch(dm)
    digits = DigitsDataset("train").images
    assert pair.x0.shape == (4, 1, 8, 8)
    assert all((digits == x).flatten(1).all(1).any() for x in pair.x0)
    # each target image is constant; the pairing permuted whole images
    assert torch.allclose(pair.x1.flatten(1).std(1), torch.zeros(4), atol=1e-6)
    val = _first_batch(dm, training=False)
    torch.testing.assert_close(val.x0[0], DigitsDataset("test").images[0])


def test_image_folder_skips_hidden_files_reads_16_bit_and_names_a_bad_file(tmp_path):
    for cls, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(tmp_path / cls / "a.png")
    (tmp_path / "cats" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not images
    (tmp_path / "__MACOSX" / "cats").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cats" / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    ds = ImageFolderDataset(str(tmp_path), size=8)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 2
    # 16-bit grayscale keeps its range (convert() alone clips every pixel above 255 to white)
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.array([[0, 65535], [32768, 16384]], dtype=np.uint16)).save(deep / "x.png")
    assert Image.open(deep / "x.png").mode.startswith("I;16")
    x, _ = ImageFolderDataset(str(deep), size=2, channels=1)[0]
    torch.testing.assert_close(x[0], torch.tensor([[-1.0, 1.0], [128 / 127.5 - 1, 64 / 127.5 - 1]]))
    # a truncated file names itself
    bad = tmp_path / "cut"
    bad.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad / "a.png")
    (bad / "b.png").write_bytes((bad / "a.png").read_bytes()[:300])
    with pytest.raises(OSError, match=r"cannot read image .*b\.png: .*remove or re-save it"):
        ImageFolderDataset(str(bad), size=8)[1]
    floats = tmp_path / "floats"
    floats.mkdir()
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(floats / "f.tif")
    with pytest.raises(ValueError, match=r"f\.tif is a 32-bit float image .*convert the folder to 8- or 16-bit"):
        ImageFolderDataset(str(floats), size=4, channels=1)


def _flat_folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 30 * i, dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_named_folder_source_validates_on_its_training_images(tmp_path):
    """A named source without a test split: validation pairs the test targets with the source's images."""
    with pytest.raises(ValueError, match=r"dataset_options \['size'\] are not options of the 'cifar10'.*source_data as a Dataset"):
        OTPairDataModule(target="digits", source_data="cifar10", dataset_options={"size": 8}).setup("fit")
    root = str(_flat_folder(tmp_path / "src"))
    folder = ImageFolderDataset(root, size=8, channels=1)
    dm = OTPairDataModule(target=folder, val_target=folder, source_data="folder", root=root,
                          dataset_options={"size": 8, "channels": 1}, batch_size=4)
    val = _first_batch(dm, training=False)
    assert val.x0.shape == val.x1.shape == (4, 1, 8, 8)
    torch.testing.assert_close(val.x0, torch.stack([folder[i][0] for i in range(4)]))
    small = OTPairDataModule(target="digits", source_data=folder, batch_size=8)
    small.setup("fit")
    with pytest.raises(ValueError, match="source_data has 6 samples, fewer than batch_size=8"):
        small.train_dataloader()  # else every epoch has 0 steps and fit never ends


def test_image_data_mistakes_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"dataset_options \['hflip'\] are not options of the 'digits' dataset; it takes \['size'\]"):
        OTPairDataModule(target="digits", dataset_options={"hflip": True}).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"set root \(data.init_args.root\)"):
        ImageFolderDataset(str(tmp_path / "none"))
    flat = str(_flat_folder(tmp_path / "flat"))
    with pytest.raises(ValueError, match="conditional=True needs labels, but the image folder is flat"):
        OTPairDataModule(target="folder", root=flat, dataset_options={"size": 8, "channels": 1}, conditional=True).setup("fit")
    with pytest.warns(UserWarning, match="no test split, so there is no validation"):
        OTPairDataModule(target="folder", root=flat, dataset_options={"size": 8, "channels": 1}).setup("fit")


def test_cifar_download_refetches_an_incomplete_folder(tmp_path, monkeypatch):
    (tmp_path / "cifar-10-batches-py").mkdir()  # present, but without its batches
    calls = []

    def fake_cifar10(root, train, download):  # what torchvision would do, without the network
        calls.append(download)
        write_cifar(Path(root), per_batch=2)

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    assert len(CIFAR10Dataset(str(tmp_path), download=True)) == 10 and calls == [True]
