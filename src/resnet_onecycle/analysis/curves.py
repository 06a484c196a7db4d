"""Training curves from the run's own TensorBoard events: loss, accuracy and the LR schedule."""

from __future__ import annotations

import logging
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(tensorboard_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the run's events (a resumed run's too)."""
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its directory-watcher chatter
    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def plot_curves(scalars: dict, val_is_test: bool):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=100)
    val_name = "test" if val_is_test else "validation"
    for ax, metric in zip(axes, ("loss", "acc")):
        for tag, label, style in ((f"train/{metric}", "train", "-o"), (f"val/{metric}", val_name, "-s")):
            values = [v for _, v in scalars.get(tag, [])]
            ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title({"loss": "cross-entropy loss", "acc": "accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    lrs = scalars.get("lr-SGD", [])
    # epoch k's train/loss is logged at its last step, k * steps_per_epoch - 1
    train_steps = [s for s, _ in scalars.get("train/loss", [])]
    steps_per_epoch = train_steps[0] + 1 if train_steps else (lrs[-1][0] + 1 if lrs else 1)
    # the LR of step s is drawn at the end of that step, so epoch k's steps end at x = k
    axes[2].plot([(s + 1) / steps_per_epoch for s, _ in lrs], [v for _, v in lrs], color="tab:red")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate (per step)")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig
