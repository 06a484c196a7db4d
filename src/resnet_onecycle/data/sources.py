"""Where CIFAR-10 comes from, decoded once into uint8 arrays (N, 3, 32, 32) and int64 labels.

`data.source` is one of:
  download                   the official CIFAR-10 through torchvision (needs the network once)
  <dir> or <.tar.gz>         holding the official python batches (`cifar-10-batches-py`)
  <dir> or <.tar.gz>         laid out train|test/<class>/*.png|jpg (one wrapping folder allowed),
                             such as the offline JPEG copy `cifar10-jpeg.tar.gz`
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_onecycle.errors import DataSourceError


class BatchUnpickler(pickle.Unpickler):
    """Unpickles what an official CIFAR-10 python batch holds (dicts, lists, bytes, ints and numpy
    arrays) and nothing else: any other global a pickle names (a function to call, a class to build)
    is refused before it is looked up, so reading a poisoned batch runs no code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}  # the last: bytes in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds; "
                                         "refused before anything in it ran")
        return super().find_class(module, name)


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

LAYOUTS = (
    "Accepted: data.source=download (the official CIFAR-10, needs the network once); "
    "a folder or .tar.gz holding the official python batches (cifar-10-batches-py/data_batch_1..5, test_batch); "
    "or a folder or .tar.gz laid out train|test/<class>/*.png|jpg with the ten CIFAR-10 class folders "
    "(airplane ... truck). The official archive is cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html; offline, copy it (or an image copy) to this machine "
    "and name it, e.g. data.source={example}"
)


def accepted_sources(failed: str | None = None) -> str:
    """What data.source accepts, with an example path other than the one that just failed."""
    example = "$HOME/datasets/cifar-10-python.tar.gz"
    if failed and Path(failed).expanduser() == Path(example.replace("$HOME", str(Path.home()))):
        example = "/data/cifar-10-python.tar.gz"
    return LAYOUTS.format(example=example)


def check_source(source: str) -> Path | None:
    """The source's path (None for `download`); a DataSourceError when there is nothing there."""
    if source == "download":
        return None
    path = Path(source).expanduser()
    if not source or not path.exists():
        raise DataSourceError(f"data.source={source!r}: no such file or folder ({path.resolve()}). "
                              + accepted_sources(source))
    return path


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 3, 32, 32)
    labels: np.ndarray  # int64 (N,)


def load_source(source: str, data_dir: Path) -> dict[str, Split]:
    """Read the whole source into memory, checking every image; raises DataSourceError."""
    path = check_source(source)
    if path is None:
        return load_download(data_dir)
    if path.is_dir():
        return load_dir(path, source)
    if tarfile.is_tarfile(path):
        return load_tar(path, source)
    raise DataSourceError(f"data.source={source!r} is a file but not a readable .tar.gz archive. {accepted_sources(source)}")


def load_download(data_dir: Path) -> dict[str, Split]:
    from torchvision.datasets import CIFAR10

    try:
        for train in (True, False):  # torchvision skips the download when the files are already there
            CIFAR10(str(data_dir), train=train, download=True)
    except Exception as error:  # noqa: BLE001 - any failure here means "no network and no local copy"
        raise DataSourceError(
            f"data.source=download could not fetch CIFAR-10 into data.data_dir={str(data_dir)!r} "
            f"({type(error).__name__}: {error}). Without the network, point data.source at a local copy. "
            + accepted_sources()
        ) from error
    return load_dir(data_dir / "cifar-10-batches-py", "download")


# --- the official python batches --------------------------------------------------------------


def read_batches(read, source: str) -> dict[str, Split]:
    splits = {}
    for split, names in BATCH_FILES.items():
        images, labels = [], []
        for name in names:
            try:
                batch = BatchUnpickler(io.BytesIO(read(name)), encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                label = np.asarray(batch[b"labels"], dtype=np.int64)
            except Exception as error:  # noqa: BLE001
                raise DataSourceError(f"data.source={source!r}: batch file {name!r} is unreadable ({error}).") from error
            if len(label) != len(data) or (len(label) and not 0 <= label.min() <= label.max() < len(CLASSES)):
                raise DataSourceError(f"data.source={source!r}: batch file {name!r} has bad labels or sizes.")
            images.append(data)
            labels.append(label)
        splits[split] = Split(np.concatenate(images), np.concatenate(labels))
    return check_splits(splits, source)


def batches_root(names: list[str]) -> str | None:
    """The folder (possibly '') that holds `data_batch_1` and `test_batch`, if any."""
    for name in names:
        if Path(name).name == "data_batch_1":
            parent = str(Path(name).parent)
            parent = "" if parent == "." else parent + "/"
            if parent + "test_batch" in names:
                return parent
    return None


# --- image folders: train|test/<class>/*.png|jpg ----------------------------------------------


def image_root(names: list[str]) -> str | None:
    """The folder (possibly '') that holds `train/` and `test/`: at the top or one level down."""
    tops = {}
    for name in names:
        parts = Path(name).parts
        for depth in (0, 1):
            if len(parts) > depth + 2 and parts[depth] in SPLITS:
                prefix = "/".join(parts[:depth])
                tops.setdefault(prefix, set()).add(parts[depth])
    for prefix, splits in sorted(tops.items(), key=lambda item: len(item[0])):
        if splits == set(SPLITS):
            return prefix + "/" if prefix else ""
    return None


def decode_image(data: bytes, name: str, source: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode != "RGB" or image.size != (32, 32):
                raise DataSourceError(
                    f"data.source={source!r}: image {name!r} is {image.size[0]}x{image.size[1]} {image.mode}; "
                    "CIFAR-10 images must be 32x32 RGB."
                )
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as error:
        raise DataSourceError(f"data.source={source!r}: {name!r} is not a readable image ({error}).") from error


def read_images(members: dict[str, object], read, root: str, source: str) -> dict[str, Split]:
    """`members` maps relative names to handles that `read(handle)` turns into bytes."""
    files: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for name in sorted(members):
        if not name.startswith(root):
            continue
        parts = name[len(root):].split("/")
        if len(parts) != 3 or parts[0] not in SPLITS:
            continue
        split, cls, file = parts
        if file.startswith("."):
            continue  # hidden files such as .DS_Store
        if os.path.splitext(file)[1].lower() not in IMAGE_SUFFIXES:
            raise DataSourceError(
                f"data.source={source!r}: {name!r} is not a .png or .jpg image; "
                f"{split}/<class>/ folders must hold images only."
            )
        files[split].setdefault(cls, []).append(name)
    for split in SPLITS:
        found = set(files[split])
        if found != set(CLASSES):
            unknown, missing = sorted(found - set(CLASSES)), sorted(set(CLASSES) - found)
            raise DataSourceError(
                f"data.source={source!r}: {root}{split}/ has "
                + (f"unknown class folders {unknown}" if unknown else "")
                + (" and " if unknown and missing else "")
                + (f"no images for classes {missing}" if missing else "")
                + f". It needs exactly the ten CIFAR-10 class folders {list(CLASSES)}, each with images."
            )
    splits = {}
    for split in SPLITS:
        images, labels = [], []
        for label, cls in enumerate(CLASSES):
            for name in files[split][cls]:
                images.append(decode_image(read(members[name]), name, source))
                labels.append(label)
        splits[split] = Split(np.stack(images), np.asarray(labels, dtype=np.int64))
    return check_splits(splits, source)


def check_splits(splits: dict[str, Split], source: str) -> dict[str, Split]:
    for split, data in splits.items():
        if len(data.labels) == 0:
            raise DataSourceError(f"data.source={source!r}: the {split} split is empty.")
    return splits


# --- containers: a folder or a tar archive, both seen as {relative name: bytes reader} -----------


def load_dir(path: Path, source: str) -> dict[str, Split]:
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
    return load_files(files, Path.read_bytes, source, "folder")


def load_tar(path: Path, source: str) -> dict[str, Split]:
    try:
        # One pass in archive order: a .tar.gz cannot seek backwards without decompressing again.
        with tarfile.open(path) as archive:
            files = {m.name.removeprefix("./"): archive.extractfile(m).read() for m in archive if m.isfile()}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataSourceError(
            f"data.source={source!r}: the archive is truncated or corrupt ({type(error).__name__}: {error}). "
            "Copy it again from its origin."
        ) from error
    return load_files(files, lambda data: data, source, "archive")


def load_files(files: dict, read, source: str, kind: str) -> dict[str, Split]:
    names = list(files)
    root = batches_root(names)
    if root is not None:
        return read_batches(lambda name: read(files[root + name]), source)
    root = image_root(names)
    if root is None:
        raise DataSourceError(f"data.source={source!r}: the {kind} holds neither train/ and test/ nor python batches. "
                              + accepted_sources(source))
    return read_images(files, read, root, source)
