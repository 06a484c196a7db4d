"""Confusion matrix (torchmetrics) and per-class accuracy."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from resnet_onecycle.analysis.predictions import Predictions


def confusion(predictions: Predictions, num_classes: int) -> torch.Tensor:
    """(true, predicted) counts."""
    return multiclass_confusion_matrix(predictions.predicted, predictions.labels, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> list[float]:
    return (matrix.diag() / matrix.sum(1).clamp(min=1)).tolist()


def plot_confusion(matrix: torch.Tensor, classes):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=100)
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max().item() / 2
    for i in range(len(classes)):
        for j in range(len(classes)):
            value = int(matrix[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    return fig
