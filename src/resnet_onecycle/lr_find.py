"""The LR range test: Lightning's Tuner runs it, this picks the max LR and draws the curve.

The suggestion is the LR at which the smoothed loss is lowest: past it the LR is too high for the
net to keep learning. Checked against real max-LR sweeps of two recipes (benchmarks/lr_sweep.py,
benchmarks/RESULTS.md), it falls inside the band of max LRs within 0.5 points of each sweep's
best, where the steepest fall of the loss (this project's earlier rule) and Lightning's own
`suggestion()` (the steepest fall against the LR itself, recorded beside ours) fall below it.
"""

from __future__ import annotations

import copy
import math

import hydra
import lightning as L
import numpy as np
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, open_dict


def lowest_loss(lrs: list[float], losses: list[float], skip_begin: int = 10) -> tuple[float | None, bool]:
    """(the LR of the lowest smoothed loss, whether the loss rose after it), ignoring the first
    `skip_begin` steps and non-finite losses; (None, False) when too few steps are left."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    keep = np.arange(len(lrs))[skip_begin:]
    keep = keep[np.isfinite(losses[keep])]
    if len(keep) < 3:
        return None, False
    at = int(np.argmin(losses[keep]))
    return float(lrs[keep[at]]), at < len(keep) - 1


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The max LR to train with: the LR of the lowest smoothed loss."""
    return lowest_loss(lrs, losses)[0]


def smoothed(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction, the usual range-test smoothing.

    (Lightning's own smoothed losses, in `results["loss"]`, correct the bias one step late, which
    pulls the first few dozen values down; so the raw losses are smoothed here.)
    """
    average, out = 0.0, []
    for step, loss in enumerate(losses):
        if not math.isfinite(loss):
            out.append(float("nan"))
            continue
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (step + 1)))
    return out


def range_test_module(cfg: DictConfig) -> L.LightningModule:
    """The configured model, for a range test: `model.scheduler.max_lr` may be `auto`, since the
    test sets the LR itself at every step (the optimizer gets a placeholder)."""
    model_cfg = copy.deepcopy(cfg.model)
    with open_dict(model_cfg):
        model_cfg.scheduler.max_lr = float(cfg.lr_find.min_lr)
        model_cfg.optimizer.lr = float(cfg.lr_find.min_lr)
    return hydra.utils.instantiate(model_cfg)


def run_lr_find(cfg: DictConfig, datamodule: L.LightningDataModule, root_dir: str,
                module: L.LightningModule | None = None) -> dict:
    """Run the range test on `module` (by default the configured model, built for it and dropped).
    Lightning restores the module's weights afterwards."""
    settings = cfg.lr_find
    module = module if module is not None else range_test_module(cfg)
    module.range_test = True  # configure_optimizers: the optimizer alone, Lightning adds its scheduler
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, default_root_dir=root_dir, logger=False, callbacks=[], enable_checkpointing=False,
        enable_model_summary=False, max_epochs=settings.num_training,  # the test stops at num_training steps
    )
    finder = Tuner(trainer).lr_find(
        module, datamodule=datamodule, min_lr=settings.min_lr, max_lr=settings.max_lr,
        num_training=settings.num_training, mode="exponential",
        early_stop_threshold=settings.early_stop_threshold, update_attr=False,
    )
    module.range_test = False
    lrs = list(map(float, finder.results["lr"]))
    raw = [float(loss) for loss in module.range_test_losses[: len(lrs)]]
    module.range_test_losses = []
    losses = smoothed(raw)
    suggestion, rose = lowest_loss(lrs, losses)
    return {
        "lr": lrs,
        "loss": losses,
        "suggested_max_lr": suggestion,
        "loss_rose_after_it": rose,  # false: the loss still fell at lr_find.max_lr, which may be too low
        "method": "the lowest smoothed loss",
        "lightning_suggestion": finder.suggestion(),
        "range": [settings.min_lr, settings.max_lr],
        "num_training": settings.num_training,
    }


def plot_lr_find(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(result["lr"], result["loss"], color="tab:blue", label="smoothed training loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    suggestion = result["suggested_max_lr"]
    if suggestion is not None:
        at = int(np.argmin(np.abs(np.asarray(result["lr"]) - suggestion)))
        ax.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1)
        ax.plot([suggestion], [result["loss"][at]], "o", color="tab:red",
                label=f"lowest loss: max_lr={suggestion:.3g}")
    finite = [v for v in result["loss"] if math.isfinite(v)]
    if finite:  # frame the useful part: from the lowest loss to a little above the early plateau
        low, start = min(finite), max(finite[5:15] or finite)
        span = max(start - low, 1e-3)
        ax.set_ylim(low - 0.1 * span, start + 0.4 * span)
    ax.set_title("LR range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
