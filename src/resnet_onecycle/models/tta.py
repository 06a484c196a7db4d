"""Test-time augmentation: each image's logits averaged over views of it.

`flip`: the image and its mirror. `multi` (airbench's `tta_level=2`): half the flip average of the
image, half that of two copies shifted by one pixel (up-left and down-right, edges reflected):
six forward passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TTA_MODES = ("none", "flip", "multi")
DESCRIPTIONS = {"none": "none", "flip": "flip: each image's logits averaged with its mirror's",
                "multi": "multi: the flip average of the image (1/2) and of its 1-pixel shifts up-left and "
                         "down-right (1/4 each), 6 views"}


def flip_averaged(net, images: torch.Tensor) -> torch.Tensor:
    """The logits of `net` (a module or a compiled function) averaged over each image and its mirror."""
    return (net(images) + net(images.flip(-1))) / 2


def multi_view(net, images: torch.Tensor) -> torch.Tensor:
    """airbench's mirror-and-translate views: the flip average, weighted 1/2, and those of the image
    shifted one pixel up-left and one down-right, 1/4 each."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = (padded[..., :height, :width], padded[..., 2:, 2:])
    return flip_averaged(net, images) / 2 + sum(flip_averaged(net, view) for view in shifted) / 4


def views_averaged(net, images: torch.Tensor, tta: str) -> torch.Tensor:
    """`net`'s logits as `model.tta=tta` classifies with them."""
    if tta == "flip":
        return flip_averaged(net, images)
    return multi_view(net, images) if tta == "multi" else net(images)


class Averaged(nn.Module):
    """`net`'s logits averaged over `tta`'s views of each image. It holds no weights of its own, so
    it evaluates whatever `net` holds at the time (raw or averaged)."""

    def __init__(self, net: nn.Module, tta: str) -> None:
        super().__init__()
        self.net, self.tta = net, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return views_averaged(self.net, images, self.tta)


def with_tta(net: nn.Module, tta: str) -> nn.Module:
    """The net as a run with `model.tta=tta` classifies with it: the one place the switch is read."""
    return net if tta == "none" else Averaged(net, tta)
