"""Predictions over a split, in plain full-precision code, leaving the net as it was."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from resnet_onecycle.data.augment import normalize


@contextmanager
def evaluating(net: nn.Module, device: torch.device):
    """Eval mode on `device` for the block; afterwards the net's mode and device are as before."""
    was_training = net.training
    home = next(net.parameters()).device
    net.to(device).eval()
    try:
        yield net
    finally:
        net.to(home).train(was_training)


@dataclass
class Predictions:
    labels: torch.Tensor        # (N,) int64, CPU
    predicted: torch.Tensor     # (N,)
    confidence: torch.Tensor    # (N,) softmax probability of the predicted class


@torch.no_grad()
def probabilities(net: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Softmax over the classes for uint8 (N, 3, 32, 32) images, normalized as in training: (N, classes), on the CPU."""
    out = []
    with evaluating(net, device):
        for start in range(0, len(images), batch_size):
            out.append(net(normalize(images[start:start + batch_size].to(device))).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 10)


def predict(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
            batch_size: int = 500) -> Predictions:
    confidence, predicted = probabilities(net, images, device, batch_size).max(1)
    return Predictions(labels.cpu(), predicted, confidence)
