"""CIFAR-10 as uint8 tensors in memory, served in batches by index, augmented on the batch's device."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import lightning as L
import torch

from resnet_onecycle.data.augment import augment, normalize
from resnet_onecycle.data.cache import load_cached
from resnet_onecycle.data.sources import CLASSES, check_source
from resnet_onecycle.errors import ConfigError, check


class Batches:
    """Batches sliced out of in-memory tensors by index: no collate, no worker processes.

    Lightning reads `len()` for the number of steps. With `world_size` > 1 every process takes
    its share of the same global batch, so steps per epoch do not depend on the process count.

    Resumable mid-epoch: `position()` is the epoch and the batches served in it, and with
    `resume_at` set to a saved position the next iteration of that epoch skips what was served
    (the order depends on seed and epoch only). Lightning gives the epoch to `sampler.set_epoch`
    at each epoch's start, as it does for a DistributedSampler. (Lightning's own stateful-loader
    protocol would hand a checkpoint's state only to a loader built after the restore, and the
    first one, built to count the steps, comes before: the DataModule carries the position.)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, alternate_flip: bool = False) -> None:
        self.images, self.labels = images, labels
        # airbench's alternating flip: each image mirrored or not at random in the first epoch, then the
        # other way each epoch after; batches carry the flips as a third tensor
        self.flips = torch.randint(0, 2, (len(labels),), generator=torch.Generator().manual_seed(seed * 100_003 - 1)
                                   ).to(images.device) if alternate_flip else None
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        # Where Lightning looks for `set_epoch`, as on a DataLoader (whose batch_sampler it reads too).
        self.sampler, self.batch_sampler = self, None
        self.epoch, self.served = 0, 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches served) from a checkpoint

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def position(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.served}

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:  # the order depends on (seed, epoch) only, so a resumed run sees the same batches
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        resume_at, self.resume_at = self.resume_at, None
        self.served = resume_at[1] if resume_at is not None and resume_at[0] == self.epoch else 0
        for start in range(self.served * self.batch_size, n, self.batch_size):
            index = order[start:start + self.batch_size][self.rank::self.world_size]
            self.served += 1  # counted before the batch is handed over: a checkpoint after its step includes it
            if self.flips is None:
                yield self.images[index], self.labels[index]
            else:
                yield self.images[index], self.labels[index], self.flips[index] ^ (self.epoch % 2)


class CIFAR10DataModule(L.LightningDataModule):
    """`source`: `download`, or a folder / .tar.gz (see `resnet_onecycle.data.sources`).

    `val_size` 0 validates on the official test split (as the original reports test accuracy per
    epoch); N > 0 holds out N training images instead. `subset` / `test_subset` keep a fixed
    random sample of N training / test images for quick runs. `on_device` keeps the uint8
    dataset on the accelerator, so no batch crosses PCIe.
    """

    classes = CLASSES

    def __init__(
        self,
        source: str = "download",
        data_dir: str = "data",
        batch_size: int = 512,
        eval_batch_size: int | None = None,
        crop_padding: int = 4,
        padding_mode: str = "reflect",
        flip: bool | str = True,
        cutout_size: int = 8,
        val_size: int = 0,
        subset: int | None = None,
        test_subset: int | None = None,
        on_device: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("crop_padding", crop_padding, 0),
                                ("cutout_size", cutout_size, 0), ("val_size", val_size, 0)):
            check(f"data.{key}", value, low=low)
        for key, value in (("eval_batch_size", eval_batch_size), ("subset", subset), ("test_subset", test_subset)):
            check(f"data.{key}", value, low=1, optional=True)
        check_augmentation(crop_padding, padding_mode, flip, cutout_size)
        check_source(str(source))  # before anything is read: a missing source is a one-line error
        self.save_hyperparameters(logger=False)
        self.source, self.data_dir = str(source), str(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.train_batches: Batches | None = None
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches served) from a checkpoint
        self.cached: dict | None = None
        # The one-off preparation (decode or read the cache, split): metrics.json reports it apart
        # from the fit's time, so that a run on a cold cache compares with one on a warm cache.
        self.prepare_time_s = 0.0

    def prepare_data(self) -> None:
        if self.splits:  # a later stage of the same run (the test after the fit)
            return
        start = time.perf_counter()
        self.cached, _, _ = load_cached(self.source, self.data_dir)  # decodes the source into the cache once
        self.prepare_time_s += time.perf_counter() - start

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            start = time.perf_counter()
            self.split(self.cached or load_cached(self.source, self.data_dir)[0])  # read once: prepare_data's, if it ran here
            self.cached = None
            self.prepare_time_s += time.perf_counter() - start
        images = len(self.splits["train"][1])
        if stage == "fit" and self.batch_size > images:
            raise ConfigError(f"data.batch_size={self.batch_size} is larger than the {images} training images, so an "
                              f"epoch would be one short batch: give data.batch_size={images} or less, or more "
                              "images (data.subset).")

    def split(self, cached: dict) -> None:
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        train_x, train_y = torch.from_numpy(cached["train"].images), torch.from_numpy(cached["train"].labels)
        test_x, test_y = torch.from_numpy(cached["test"].images), torch.from_numpy(cached["test"].labels)
        if hp.val_size:
            if hp.val_size >= len(train_y):
                raise ConfigError(f"data.val_size={hp.val_size} leaves no training images out of {len(train_y)}.")
            order = torch.randperm(len(train_y), generator=generator)
            val_x, val_y = train_x[order[: hp.val_size]], train_y[order[: hp.val_size]]
            train_x, train_y = train_x[order[hp.val_size:]], train_y[order[hp.val_size:]]
        if hp.subset:
            train_x, train_y = sample(train_x, train_y, hp.subset, generator, "subset")
        if hp.test_subset:
            test_x, test_y = sample(test_x, test_y, hp.test_subset, generator, "test_subset")
        if not hp.val_size:
            val_x, val_y = test_x, test_y
        self.splits = {"train": (train_x, train_y), "val": (val_x, val_y), "test": (test_x, test_y)}

    def move_to(self, device: torch.device) -> None:
        """Move every split to `device` once; splits that share tensors (val = test) stay shared."""
        moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, (images, labels) in self.splits.items():
            if id(images) not in moved:
                moved[id(images)] = (images.to(device), labels.to(device))
            self.splits[split] = moved[id(images)]

    def batches(self, split: str) -> Batches:
        trainer = self.trainer
        if trainer is not None and self.hparams.on_device and self.splits[split][0].device != trainer.strategy.root_device:
            self.move_to(trainer.strategy.root_device)
        images, labels = self.splits[split]
        train = split == "train"
        batches = Batches(
            images, labels, self.batch_size if train else self.eval_batch_size, shuffle=train, seed=self.hparams.seed,
            rank=trainer.global_rank if trainer is not None else 0, world_size=trainer.world_size if trainer is not None else 1,
            alternate_flip=train and self.hparams.flip == "alternate",
        )
        if train:
            batches.resume_at, self.resume_at = self.resume_at, None
            self.train_batches = batches
        return batches

    # Resume: saved in every checkpoint and restored by Lightning before training starts.
    def state_dict(self) -> dict:
        """Where the training batches stand: the epoch and the batches served in it."""
        return self.train_batches.position() if self.train_batches is not None else {}

    def load_state_dict(self, state: dict) -> None:
        resume_at = (state["epoch"], state["batches_done"]) if state else None
        if self.train_batches is not None:  # built already, to count the steps
            self.train_batches.resume_at = resume_at
        else:
            self.resume_at = resume_at

    def train_dataloader(self) -> Batches:
        return self.batches("train")

    def val_dataloader(self) -> Batches:
        return self.batches("val")

    def test_dataloader(self) -> Batches:
        return self.batches("test")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not isinstance(batch, (list, tuple)):
            return batch  # the model's example input (summary, graph), not a dataset batch
        images, labels, *flipped = batch
        if self.trainer is not None and self.trainer.training:
            hp = self.hparams
            return augment(images, hp.crop_padding, hp.flip is True, hp.cutout_size, hp.padding_mode, *flipped), labels
        return normalize(images), labels


def check_augmentation(crop_padding: int, padding_mode: str, flip: bool | str, cutout_size: int) -> None:
    check("data.cutout_size", cutout_size, below=33, fix="the image is 32x32; 0 turns it off")
    check("data.padding_mode", padding_mode, choices=("reflect", "constant", "replicate"))
    check("data.flip", flip, choices=(True, False, "alternate"),
          fix="alternate mirrors each image in every other epoch (airbench)")
    if padding_mode == "reflect":
        check("data.crop_padding", crop_padding, below=32,
              fix="wider cannot reflect a 32x32 image; or data.padding_mode=constant or replicate")


def sample(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator, key: str):
    if n > len(labels):
        raise ConfigError(f"data.{key}={n} is larger than the {len(labels)} images available.")
    keep = torch.randperm(len(labels), generator=generator)[:n]
    return images[keep], labels[keep]
