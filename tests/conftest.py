"""Small CIFAR-10-shaped data sets written by the tests, and config composition without a CLI."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from resnet_onecycle.data.sources import CLASSES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def class_images(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images whose mean colour depends on the class, so a net can learn them."""
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    base = np.random.default_rng(1234).integers(0, 256, (len(CLASSES), 3))[labels]  # one colour per class
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 41, (len(labels), 3, 32, 32))
    images = np.clip(base[:, :, None, None] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_image_tree(root: Path, n_train: int = 6, n_test: int = 3, suffix: str = ".png", seed: int = 0) -> Path:
    """root/train|test/<class>/NNNN.png, like the offline JPEG copy."""
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = class_images(n, seed + (split == "test"))
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:04d}{suffix}")
    return root


def write_batches(root: Path, n_per_class: int = 2) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch}, the official python format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        images, labels = class_images(n_per_class, seed=i)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels.tolist()}, f)
    return folder


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    return write_image_tree(tmp_path / "cifar-images")


@pytest.fixture
def learnable_tree(tmp_path: Path) -> Path:
    return write_image_tree(tmp_path / "learnable", n_train=40, n_test=10)


def compose_train(overrides: list[str], out: Path):
    """The train config as `python src/train.py` would compose it, with paths under `out`."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.root_dir={out}", f"paths.output_dir={out}/run", *overrides],
        )


@pytest.fixture
def offline_copy() -> Path:
    """The offline CIFAR-10 JPEG copy, from $CIFAR10_JPEG (.ci/run sets it)."""
    path = os.environ.get("CIFAR10_JPEG")
    if not path or not Path(path).exists():
        pytest.skip("set CIFAR10_JPEG to the offline CIFAR-10 JPEG copy (cifar10-jpeg.tar.gz) to run this test")
    return Path(path)
