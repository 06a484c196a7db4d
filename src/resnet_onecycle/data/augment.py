"""Batched augmentation on whichever device holds the batch: no per-image Python work.

The original's course used: random crop 32 after 4-pixel padding, horizontal flip, cutout 8x8.
`augment` takes the uint8 batch (N, C, H, W) and returns it normalized, every image with its own
crop, flip and cutout. It draws all images' choices in one call, moves the pixels of crop and
flip with one gather on the uint8 batch (padding is an index map, never a padded copy), then
normalizes and zeroes the cutout squares: 18 ops a batch (26 with views), whatever its size. On a
GPU each op is a kernel launch the host pays for, so the count matters more than the arithmetic.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@functools.cache
def mean_and_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a host-to-device copy every step would make the host wait for the GPU.
    mean = torch.tensor(CIFAR10_MEAN, dtype=dtype).view(1, 3, 1, 1).mul(255).to(device)
    std = torch.tensor(CIFAR10_STD, dtype=dtype).view(1, 3, 1, 1).mul(255).to(device)
    return mean, std


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) in [0, 255] -> float, zero mean and unit variance per channel."""
    mean, std = mean_and_std(images.device, dtype)
    return (images.to(dtype) - mean) / std


# Small index tables, made once per size and device (the batch size varies: a full batch, the last),
# on the device itself: a copy from host memory would make the host wait for the GPU.
@functools.cache
def positions(length: int, device: torch.device) -> torch.Tensor:
    return torch.arange(length, device=device)


@functools.cache
def mirrored(length: int, device: torch.device) -> torch.Tensor:
    """How far a left-right flip moves each position: length - 1 - 2x."""
    return (length - 1) - 2 * positions(length, device)


@functools.cache
def window(length: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, table): table[keys - start] says whether each position x lies in [start, start + size).
    keys[x] is x + length - 1 and table[k] is 0 <= k - (length - 1) < size, so that no index is negative."""
    offsets = torch.arange(-(length - 1), length, device=device)
    return positions(length, device) + (length - 1), (offsets >= 0) & (offsets < size)


@functools.cache
def padded_source(length: int, padding: int, mode: str, device: torch.device) -> torch.Tensor:
    """Which image position each position of the padded axis shows; -1 where constant padding shows
    none. Made by `F.pad` itself, so every mode pads exactly as `F.pad` would."""
    value = {"value": -1.0} if mode == "constant" else {}
    axis = torch.arange(length, dtype=torch.float32, device=device).view(1, 1, length)
    return F.pad(axis, (padding, padding), mode=mode, **value).view(-1).long()


@functools.cache
def choice_ranges(ranges: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.full((1, 1), r, device=device) for r in ranges])


def draw(n: int, height: int, width: int, crop_padding: int, flip: bool, cutout_size: int,
         device: torch.device) -> torch.Tensor:
    """Every image's crop offset (dy, dx), flip (0/1) and cutout corner (y0, x0): (5, n, 1) int64.

    One draw for all: uniform over [0, lcm) then modulo each range, which is exactly uniform since
    each range divides the lcm. A choice that is switched off has range 1 and is always 0."""
    ranges = (2 * crop_padding + 1, 2 * crop_padding + 1, 2 if flip else 1,
              height - cutout_size + 1 if cutout_size else 1, width - cutout_size + 1 if cutout_size else 1)
    return torch.randint(0, math.lcm(*ranges), (5, n, 1), device=device) % choice_ranges(ranges, device)


def inside(length: int, start: torch.Tensor, size: int) -> torch.Tensor:
    """(n, length) bool: whether each position lies in [start, start + size) of its image."""
    keys, table = window(length, size, start.device)
    return table[keys - start]


def augment(images: torch.Tensor, crop_padding: int, flip: bool, cutout_size: int, padding_mode: str,
            flipped: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalized float: a random HxW window of the image padded by `crop_padding`
    (`padding_mode`: reflect, replicate, or constant, which pads with zeros after normalizing, the
    mean), mirrored left-right with probability 1/2 if `flip`, or where `flipped` (N,) says so, with
    one `cutout_size` square placed wholly inside the image zeroed (the mean). Output is channels_last.
    The crop is a translation: every pixel moves by the same (dy, dx), each in [-crop_padding, crop_padding]."""
    n, _, height, width = images.shape
    device = images.device
    dy, dx, drawn, y0, x0 = draw(n, height, width, crop_padding, flip and flipped is None, cutout_size, device)
    flipped = drawn if flipped is None else flipped.view(n, 1)
    # Output pixel (y, x) shows padded pixel (y + dy, x' + dx), x' = width - 1 - x if flipped else x.
    rows = padded_source(height, crop_padding, padding_mode, device)[positions(height, device) + dy]
    cols = padded_source(width, crop_padding, padding_mode, device)[
        positions(width, device) + dx + flipped * mirrored(width, device)]
    batch = positions(n, device).view(n, 1, 1)
    # one gather: (n, H, W, C) with the channels last, which is the memory layout the net wants
    out = normalize(images[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2))
    blank = None
    if cutout_size:
        blank = inside(height, y0, cutout_size)[:, :, None] & inside(width, x0, cutout_size)[:, None, :]
    if padding_mode == "constant" and crop_padding:
        padding = (rows < 0)[:, :, None] | (cols < 0)[:, None, :]
        blank = padding if blank is None else blank | padding
    return out if blank is None else out.masked_fill_(blank[:, None], 0)  # in place: `out` is new
