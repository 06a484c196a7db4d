"""Test-time augmentation: the logits of each image and its mirror image, averaged."""

from __future__ import annotations

import torch
from torch import nn

TTA_MODES = ("none", "flip")


def flip_averaged(net, images: torch.Tensor) -> torch.Tensor:
    """The logits of `net` (a module or a compiled function) averaged over each image and its mirror."""
    return (net(images) + net(images.flip(-1))) / 2


class FlipAveraged(nn.Module):
    """`net`'s logits averaged over each image and its left-right mirror. It holds no weights of
    its own, so it evaluates whatever `net` holds at the time (raw or averaged)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return flip_averaged(self.net, images)


def with_tta(net: nn.Module, tta: str) -> nn.Module:
    """The net as a run with `model.tta=tta` classifies with it: the one place the switch is read."""
    return FlipAveraged(net) if tta == "flip" else net
