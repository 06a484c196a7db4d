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


def schedule_lrs(scheduler_factory, epochs: int, steps_per_epoch: int) -> list[float]:
    """The LR of every training step, from the run's own scheduler (the module's partial): the
    schedule itself, not the logged samples (TensorBoard has the LR every `trainer.log_every_n_steps`
    steps)."""
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = scheduler_factory(optimizer, total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def plot_curves(scalars: dict, val_is_test: bool, schedule: list[float] | None = None):
    """Loss and accuracy per epoch, and the LR: `schedule` (every step's) when given, else the
    logged samples."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=100)
    val_name = "test" if val_is_test else "validation"
    steps_per_epoch = steps_per_epoch_of(scalars)
    for ax, metric in zip(axes, ("loss", "acc")):
        for tag, label, style in ((f"train/{metric}", "train", "-o"), (f"val/{metric}", val_name, "-s")):
            # at the epoch each was logged in: a run that validates less often has fewer val points
            points = scalars.get(tag, [])
            ax.plot([(s + 1) / steps_per_epoch for s, _ in points], [v for _, v in points], style, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title({"loss": "cross-entropy loss", "acc": "accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    lrs = list(enumerate(schedule)) if schedule else learning_rates(scalars)
    # the LR of step s is drawn at the end of that step, so epoch k's steps end at x = k
    axes[2].plot([(s + 1) / steps_per_epoch for s, _ in lrs], [v for _, v in lrs], color="tab:red")
    axes[2].set_xlabel("epoch")
    gap = lrs[1][0] - lrs[0][0] if len(lrs) > 1 else 1
    axes[2].set_title("learning rate (every step)" if gap == 1 else f"learning rate (every {gap} steps)")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def learning_rates(scalars: dict) -> list:
    """The weights' LR: `lr-SGD`, or `lr-SGD/weights` where BN's biases have a group of their own."""
    return scalars.get("lr-SGD") or scalars.get("lr-SGD/weights", [])


def steps_per_epoch_of(scalars: dict) -> int:
    """Epoch k's train/loss is logged at its last step, k * steps_per_epoch - 1."""
    train_steps = [s for s, _ in scalars.get("train/loss", [])]
    lrs = learning_rates(scalars)
    return train_steps[0] + 1 if train_steps else (lrs[-1][0] + 1 if lrs else 1)
