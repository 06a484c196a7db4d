"""The original's "mixed" ResNet: conv + max-pool in every layer, residual pairs in alternate layers.

At width 1.0 it matches the original's torchsummary table layer for layer (6,573,130 parameters):

    prep    conv 3->64, BN, ReLU                                   32x32
    layer1  conv 64->128, max-pool, BN, ReLU, residual pair        16x16
    layer2  conv 128->256, max-pool, BN, ReLU                       8x8
    layer3  conv 256->512, max-pool, BN, ReLU, residual pair        4x4
    head    global max-pool (functional: the table lists no module for it), linear 512->10

The global pool is a max-pool, as in cifar10-fast's version of this network. `logit_scale`
multiplies the logits (cifar10-fast uses 0.125): no parameters, and 1.0 leaves the net as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnet_onecycle.errors import check


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class BasicBlock(nn.Module):
    """One layer: conv, max-pool, BN, ReLU, then, if `residual`, x + (conv-BN-ReLU twice)(x)."""

    def __init__(self, c_in: int, c_out: int, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.residual = nn.Sequential(*conv_bn_relu(c_out, c_out), *conv_bn_relu(c_out, c_out)) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.pool(self.conv(x))))
        if self.residual is not None:
            x = x + self.residual(x)
        return x


class MixedResNet(nn.Module):
    """`width` scales every layer's channels (64, 128, 256, 512 at 1.0) for small, fast runs."""

    def __init__(self, width: float = 1.0, num_classes: int = 10, logit_scale: float = 1.0) -> None:
        super().__init__()
        check("model.net.width", width, float, above=0, fix="1.0 is the original network")
        check("model.net.logit_scale", logit_scale, float, above=0, fix="1.0: off; cifar10-fast uses 0.125")
        self.width, self.logit_scale = width, float(logit_scale)
        c = [max(1, round(n * width)) for n in (64, 128, 256, 512)]
        self.prep = nn.Sequential(*conv_bn_relu(3, c[0]))
        self.layer1 = BasicBlock(c[0], c[1], residual=True)
        self.layer2 = BasicBlock(c[1], c[2], residual=False)
        self.layer3 = BasicBlock(c[2], c[3], residual=True)
        self.fc = nn.Linear(c[3], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(F.adaptive_max_pool2d(self.features(x), 1).flatten(1))
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale
