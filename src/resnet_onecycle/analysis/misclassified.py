"""The test images the model gets wrong, most confident mistakes first, titled true / predicted."""

from __future__ import annotations

import math

import torch

from resnet_onecycle.analysis.predictions import Predictions


def most_confident_mistakes(predictions: Predictions, count: int) -> torch.Tensor:
    """Indices of up to `count` misclassified images, the most confident first."""
    wrong = (predictions.predicted != predictions.labels).nonzero().flatten()
    order = predictions.confidence[wrong].argsort(descending=True)
    return wrong[order[:count]]


def title(classes, true: int, predicted: int) -> str:
    return f"{classes[true]} / {classes[predicted]}"


def image_grid(images: list, titles: list[str], columns: int = 5, caption: str | None = None):
    """A grid of HWC images, each titled."""
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.05 * rows + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(text, fontsize=9)
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return fig


def plot_misclassified(images_uint8: torch.Tensor, predictions: Predictions, index: torch.Tensor, classes):
    pictures = [images_uint8[i].permute(1, 2, 0).cpu().numpy() for i in index.tolist()]
    titles = [title(classes, int(predictions.labels[i]), int(predictions.predicted[i])) for i in index.tolist()]
    return image_grid(pictures, titles, caption="misclassified test images: true / predicted, most confident first")
