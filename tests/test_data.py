"""Each data source on small data written here; the cache; bad input; batches."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import class_images, make_tar, write_batches, write_image_tree
from resnet_onecycle.data import Batches, CIFAR10DataModule, DataSourceError
from resnet_onecycle.data.cache import cache_path, load_cached
from resnet_onecycle.data.sources import CLASSES, load_source


def check_tree_splits(splits, n_train=6, n_test=3):
    assert splits["train"].images.shape == (10 * n_train, 3, 32, 32)
    assert splits["train"].images.dtype == np.uint8
    assert splits["test"].images.shape == (10 * n_test, 3, 32, 32)
    assert np.bincount(splits["train"].labels).tolist() == [n_train] * 10
    # PNG is lossless: the pixels come back exactly, in class order
    images, labels = class_images(n_train, seed=0)
    assert np.array_equal(splits["train"].labels, labels)
    assert np.array_equal(splits["train"].images, images)


def test_image_folder(image_tree, tmp_path):
    check_tree_splits(load_source(str(image_tree), tmp_path))


def test_image_tar_gz_with_wrapping_folder(image_tree, tmp_path):
    archive = make_tar(image_tree, tmp_path / "copy.tar.gz")
    check_tree_splits(load_source(str(archive), tmp_path))


def test_jpeg_images_are_read(tmp_path):
    tree = write_image_tree(tmp_path / "jpeg", suffix=".jpg")
    splits = load_source(str(tree), tmp_path)
    images, _ = class_images(6, seed=0)
    assert splits["train"].images.shape == images.shape
    assert np.abs(splits["train"].images.astype(int) - images).mean() < 20  # lossy, but the same images


@pytest.mark.parametrize("as_archive", [False, True])
def test_python_batches(tmp_path, as_archive):
    folder = write_batches(tmp_path / "src")
    source = make_tar(folder, tmp_path / "cifar-10-python.tar.gz") if as_archive else folder
    splits = load_source(str(source), tmp_path)
    assert splits["train"].images.shape == (5 * 20, 3, 32, 32)
    assert splits["test"].images.shape == (20, 3, 32, 32)
    images, labels = class_images(2, seed=0)
    assert np.array_equal(splits["train"].images[:20], images)
    assert np.array_equal(splits["train"].labels[:20], labels)


def test_download_without_network_names_the_source_and_the_offline_copy(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    with pytest.raises(DataSourceError) as error:
        load_source("download", tmp_path)
    message = str(error.value)
    assert "data.source=download" in message
    assert "cifar-10-python.tar.gz" in message and "train|test/<class>" in message
    assert "../shared" not in message  # no path of a machine the user does not have


def test_cache_is_written_once_then_read(image_tree, tmp_path):
    data_dir = tmp_path / "cache"
    first, path, rebuilt = load_cached(str(image_tree), data_dir)
    assert rebuilt and path.exists() and path.parent == data_dir
    second, _, rebuilt = load_cached(str(image_tree), data_dir)
    assert not rebuilt
    assert np.array_equal(first["train"].images, second["train"].images)


def test_stale_or_damaged_cache_is_rebuilt(image_tree, tmp_path, caplog):
    data_dir = tmp_path / "cache"
    _, path, _ = load_cached(str(image_tree), data_dir)
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    with caplog.at_level("INFO", logger="resnet_onecycle.data.cache"):
        splits, _, rebuilt = load_cached(str(image_tree), data_dir)
    assert rebuilt and splits["train"].images.shape[0] == 60
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    message = warning.getMessage()
    assert f"The data cache {path} is damaged" in message and f"rebuilding it from {image_tree}" in message
    assert load_cached(str(image_tree), data_dir)[2] is False  # the rebuilt cache is good
    # the source changes: one more image per class in train -> the cache no longer matches
    for cls in CLASSES:
        Image.new("RGB", (32, 32)).save(image_tree / "train" / cls / "extra.png")
    splits, _, rebuilt = load_cached(str(image_tree), data_dir)
    assert rebuilt and splits["train"].images.shape[0] == 70


def test_different_sources_get_different_caches(tmp_path):
    a = write_image_tree(tmp_path / "a" / "same-name")
    b = write_image_tree(tmp_path / "b" / "same-name", seed=5)
    assert cache_path(str(a), tmp_path) != cache_path(str(b), tmp_path)


# --- bad input: a clear error naming the key or the file -----------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(DataSourceError, match=r"data\.source=.*nowhere.*no such file"):
        load_cached(str(tmp_path / "nowhere"), tmp_path)


def test_folder_without_train_and_test(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="neither train/ and test/"):
        load_source(str(tmp_path / "empty"), tmp_path)


def test_archive_without_train_and_test(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "flat" / "0001.png")
    archive = make_tar(tmp_path / "flat", tmp_path / "flat.tar.gz")
    with pytest.raises(DataSourceError, match="the archive holds neither train/ and test/"):
        load_source(str(archive), tmp_path)


def test_unknown_and_missing_class_folders(image_tree, tmp_path):
    (image_tree / "test" / "cat").rename(image_tree / "test" / "kitten")
    message = r"test/ has unknown class folders \['kitten'\] and no images for classes \['cat'\]"
    with pytest.raises(DataSourceError, match=message):
        load_source(str(image_tree), tmp_path)


def test_image_of_wrong_size_names_the_file(image_tree, tmp_path):
    Image.new("RGB", (64, 64)).save(image_tree / "train" / "dog" / "big.png")
    with pytest.raises(DataSourceError, match=r"train/dog/big\.png.*64x64 RGB.*32x32 RGB"):
        load_source(str(image_tree), tmp_path)


def test_grayscale_image_names_the_file(image_tree, tmp_path):
    Image.new("L", (32, 32)).save(image_tree / "test" / "ship" / "gray.png")
    with pytest.raises(DataSourceError, match=r"test/ship/gray\.png.*32x32 L"):
        load_source(str(image_tree), tmp_path)


def test_non_image_file_and_unreadable_image(image_tree, tmp_path):
    (image_tree / "train" / "frog" / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError, match=r"notes\.txt.*not a \.png or \.jpg"):
        load_source(str(image_tree), tmp_path)
    (image_tree / "train" / "frog" / "notes.txt").unlink()
    (image_tree / "train" / "frog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataSourceError, match=r"broken\.png.*not a readable image"):
        load_source(str(image_tree), tmp_path)


def test_unreadable_batch_file_is_named(tmp_path):
    folder = write_batches(tmp_path / "src")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataSourceError, match=r"batch file 'data_batch_3' is unreadable"):
        load_source(str(folder), tmp_path)


def test_empty_split(tmp_path):
    folder = write_batches(tmp_path / "src")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    with pytest.raises(DataSourceError, match="the test split is empty"):
        load_source(str(folder), tmp_path)


def test_truncated_archive(image_tree, tmp_path):
    archive = make_tar(image_tree, tmp_path / "copy.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataSourceError, match="truncated or corrupt"):
        load_source(str(cut), tmp_path)


def test_file_that_is_not_an_archive(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataSourceError, match="not a readable .tar.gz"):
        load_source(str(tmp_path / "data.bin"), tmp_path)


def test_failing_source_deletes_nothing(image_tree, tmp_path):
    data_dir = tmp_path / "cache"
    _, path, _ = load_cached(str(image_tree), data_dir)
    before = path.read_bytes()
    Image.new("RGB", (8, 8)).save(image_tree / "train" / "dog" / "small.png")
    with pytest.raises(DataSourceError):
        load_cached(str(image_tree), data_dir)
    assert path.read_bytes() == before  # the old cache stays until a good source replaces it
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([path.name, f".{path.name}.lock"])  # no partial file left


@pytest.mark.parametrize(
    "kwargs, key",
    [({"batch_size": 0}, "batch_size"), ({"batch_size": "512"}, "batch_size"), ({"subset": 0}, "subset"),
     ({"cutout_size": 40}, "cutout_size"), ({"padding_mode": "wrap"}, "padding_mode"),
     ({"crop_padding": 32}, "crop_padding=32")],
)
def test_datamodule_refuses_bad_values(kwargs, key):
    with pytest.raises(ValueError, match=rf"data\.{key}"):
        CIFAR10DataModule(**kwargs)


def test_a_batch_larger_than_the_training_images_is_named(image_tree, tmp_path):
    datamodule = CIFAR10DataModule(source=str(image_tree), data_dir=str(tmp_path / "cache"), batch_size=64)
    with pytest.raises(ValueError, match=r"data\.batch_size=64 is larger than the 60 training images"):
        datamodule.setup("fit")  # the stage that trains


# --- the DataModule and its batches -------------------------------------------------------------


def test_seed_batch_size_gives_98_steps_per_epoch():
    labels = torch.zeros(50_000, dtype=torch.long)
    batches = Batches(torch.zeros(50_000, 1, dtype=torch.uint8), labels, batch_size=512, shuffle=True)
    assert len(batches) == 98
    sizes = [len(y) for _, y in batches]
    assert len(sizes) == 98 and sum(sizes) == 50_000 and sizes[-1] == 50_000 - 97 * 512


def test_shuffled_order_depends_on_seed_and_epoch_only():
    images = torch.arange(100).view(100, 1)

    def order(seed, epoch=0):
        batches = Batches(images, torch.zeros(100), 16, True, seed)
        batches.sampler.set_epoch(epoch)  # what Lightning calls at each epoch's start
        return torch.cat([x for x, _ in batches]).flatten()

    first = order(1)
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, order(1))
    assert not torch.equal(first, order(2))
    assert not torch.equal(first, order(1, epoch=1))


def test_shards_of_a_global_batch_cover_it_once():
    images = torch.arange(50).view(50, 1)
    shards = [list(Batches(images, torch.zeros(50), 10, True, 0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    for (a, _), (b, _) in zip(*shards):
        assert len(a) == len(b) == 5
    assert sorted(torch.cat([x for s in shards for x, _ in s]).flatten().tolist()) == list(range(50))


def test_datamodule_splits_subsets_and_normalizes(image_tree, tmp_path):
    dm = CIFAR10DataModule(source=str(image_tree), data_dir=str(tmp_path), batch_size=16, subset=40,
                           test_subset=20, seed=3)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["train"][1]) == 40
    assert dm.splits["val"][1] is dm.splits["test"][1] and len(dm.splits["test"][1]) == 20
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32)
    x, y = dm.on_after_batch_transfer((images, labels), 0)  # no trainer: evaluation transform only
    assert x.dtype == torch.float32 and torch.equal(y, labels)
    assert abs(float(x.mean())) < 2 and torch.isfinite(x).all()

    held_out = CIFAR10DataModule(source=str(image_tree), data_dir=str(tmp_path), val_size=10, batch_size=8)
    held_out.setup("fit")
    assert len(held_out.splits["val"][1]) == 10 and len(held_out.splits["train"][1]) == 50
    assert len(held_out.splits["test"][1]) == 30


def test_in_memory_dataset_costs_its_uint8_size(image_tree, tmp_path):
    dm = CIFAR10DataModule(source=str(image_tree), data_dir=str(tmp_path), batch_size=8)
    dm.setup("fit")
    held = {t.data_ptr(): t.numel() * t.element_size() for x, _ in dm.splits.values() for t in [x]}
    assert sum(held.values()) == (60 + 30) * 3 * 32 * 32  # one uint8 byte per pixel value, no float copy
    assert all(x.dtype == torch.uint8 for x, _ in dm.splits.values())


def test_archive_members_outside_train_and_test_are_ignored(image_tree, tmp_path):
    (image_tree / "README.txt").write_text("a copy")
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_tree, arcname="wrapped")
    assert load_source(str(archive), tmp_path)["train"].images.shape[0] == 60


@pytest.mark.parametrize("kwargs, message", [
    ({"subset": 1000}, r"data\.subset=1000 is larger than the 60 images available"),
    ({"test_subset": 31}, r"data\.test_subset=31 is larger than the 30 images available"),
    ({"val_size": 60}, r"data\.val_size=60 leaves no training images out of 60"),
])
def test_splits_larger_than_the_data_are_refused(image_tree, tmp_path, kwargs, message):
    dm = CIFAR10DataModule(source=str(image_tree), data_dir=str(tmp_path), **kwargs)
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


def test_a_missing_source_suggests_a_path_other_than_the_one_that_failed():
    from pathlib import Path

    from resnet_onecycle.data.sources import check_source

    with pytest.raises(DataSourceError, match=r"e\.g\. data\.source=\$HOME/datasets/cifar-10-python\.tar\.gz"):
        check_source("/nowhere/cifar.tar.gz")
    failed = str(Path.home() / "datasets" / "cifar-10-python.tar.gz")
    with pytest.raises(DataSourceError) as error:
        check_source(failed)
    assert "e.g. data.source=/data/cifar-10-python.tar.gz" in str(error.value) and "cs.toronto.edu" in str(error.value)
    with pytest.raises(DataSourceError, match="no such file or folder"):
        check_source("")


class Payload:
    """What a poisoned batch would hold: unpickling it calls `pathlib.Path.touch` on `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("packed", [False, True])
def test_a_poisoned_batch_runs_no_code_and_is_named(tmp_path, packed):
    folder = write_batches(tmp_path / "copy")
    marker = tmp_path / "ran"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)
    source = make_tar(folder, tmp_path / "cifar-10-python.tar.gz") if packed else folder
    with pytest.raises(DataSourceError, match=r"data_batch_3.*names pathlib\.Path\.touch.*never holds") as raised:
        load_source(str(source), tmp_path / "cache")
    assert not marker.exists()  # nothing in it ran
    assert str(source) in str(raised.value)
