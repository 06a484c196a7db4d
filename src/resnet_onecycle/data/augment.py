"""Batched augmentation on whichever device holds the batch: no per-image Python work.

The seed's course used: random crop 32 after 4-pixel padding, horizontal flip, cutout 8x8.
Every function takes a float batch (N, C, H, W) and draws one random choice per image.
"""

from __future__ import annotations

import functools

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


def random_crop(images: torch.Tensor, padding: int, padding_mode: str = "reflect") -> torch.Tensor:
    """Pad every side by `padding`, then cut a random HxW window per image (one gather)."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode=padding_mode)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=images.device)
    rows = (torch.arange(h, device=images.device).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w, device=images.device).view(1, 1, w) + dx).expand(n, h, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror left-right each image with probability 1/2."""
    flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
    return torch.where(flip, images.flip(3), images)


def cutout(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one size x size square per image, placed uniformly inside the image.

    Zero is the dataset mean once the batch is normalized.
    """
    if size == 0:
        return images
    n, _, h, w = images.shape
    y0 = torch.randint(0, h - size + 1, (n, 1, 1), device=images.device)
    x0 = torch.randint(0, w - size + 1, (n, 1, 1), device=images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    square = (rows >= y0) & (rows < y0 + size) & (cols >= x0) & (cols < x0 + size)
    return images.masked_fill(square.unsqueeze(1), 0)


def augment(images: torch.Tensor, crop_padding: int, flip: bool, cutout_size: int, padding_mode: str) -> torch.Tensor:
    images = random_crop(images, crop_padding, padding_mode)
    if flip:
        images = random_flip(images)
    return cutout(images, cutout_size)
