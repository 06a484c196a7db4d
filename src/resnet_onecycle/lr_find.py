"""The LR range test: Lightning's Tuner runs it, this picks the max LR and draws the curve.

The suggestion follows the curve's shape. Where the smoothed loss climbs well past its lowest
point within the range, training diverges there, and that lowest point is the max LR. Where it is
still falling at the top of the range (small logits, `model.net.logit_scale=0.125`, fall slowly
and never diverge in 100 steps), the suggestion is where it falls fastest against log10(LR),
measured over a window of steps. Both cases land inside the band of max LRs within 0.5 points of
the best in real max-LR sweeps (benchmarks/lr_sweep.py, benchmarks/RESULTS.md), where the lowest
point alone misses the second and the steepest fall alone (this project's earlier rule, and
Lightning's `suggestion()`, recorded beside ours) misses the first.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import hydra
import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, open_dict

from resnet_onecycle.errors import ConfigError, check
from resnet_onecycle.files import save_figure, write_text

log = logging.getLogger(__name__)

SKIP_BEGIN = 10  # the first steps say more about the random start than about the LR
WINDOW = 10      # steps each side of a point for the slope: one step's slope is mostly noise
DIVERGED = 1.1   # the loss climbed past 1.1x its lowest value after it: the range test diverged


def suggest(lrs: list[float], losses: list[float]) -> tuple[float | None, str]:
    """(the max LR to train with, how it was picked) from a range test's smoothed losses;
    (None, reason) when the curve is too short to say."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    keep = np.arange(len(lrs))[SKIP_BEGIN:]
    keep = keep[np.isfinite(losses[keep])]
    if len(keep) < 3:
        return None, "too few steps"
    at = int(np.argmin(losses[keep]))
    after = losses[keep[at:]]
    if after.max() >= DIVERGED * after[0]:
        return float(lrs[keep[at]]), "the lowest loss before it diverged"
    x, y = np.log10(lrs[keep[: at + 1]]), losses[keep[: at + 1]]
    if len(x) <= 2 * WINDOW:
        return float(lrs[keep[at]]), "the lowest loss (too few steps before it for a slope)"
    slopes = (y[2 * WINDOW:] - y[: -2 * WINDOW]) / (x[2 * WINDOW:] - x[: -2 * WINDOW])
    return float(lrs[keep[WINDOW + int(np.argmin(slopes))]]), "the steepest fall (the loss did not diverge in range)"


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
    check("lr_find.min_lr", settings.min_lr, float, above=0)
    check("lr_find.max_lr", settings.max_lr, float, above=settings.min_lr, fix="above lr_find.min_lr")
    check("lr_find.num_training", settings.num_training, low=2, fix="the steps the LR takes from min_lr to max_lr")
    check("lr_find.early_stop_threshold", settings.early_stop_threshold, float, above=1, optional=True,
          fix="null: no early stop")
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
    suggestion, method = suggest(lrs, losses)
    return {
        "lr": lrs,
        "loss": losses,
        "raw_loss": raw,  # each step's own loss, for other smoothings or rules
        "suggested_max_lr": suggestion,
        "method": method,
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
                label=f"{result['method']}: max_lr={suggestion:.3g}")
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


def lr_range_test(cfg: DictConfig, datamodule, output_dir: Path, loggers=()) -> dict:
    """Run the LR range test; write lr_find.png and lr_find.json into `output_dir`."""
    import matplotlib.pyplot as plt

    result = run_lr_find(cfg, datamodule, str(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "lr_find.json", json.dumps(result, indent=2) + "\n", "report")  # resume= reads it
    fig = plot_lr_find(result)
    save_figure(fig, output_dir / "lr_find.png")
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("lr_find", fig, close=False)
    plt.close(fig)
    if result["suggested_max_lr"] is None:
        raise ConfigError(
            f"the LR range test stopped after {len(result['lr'])} steps, too few for a suggestion: "
            "raise lr_find.num_training or lr_find.early_stop_threshold (see lr_find.png)."
        )
    return result


def pick_max_lr(cfg: DictConfig, datamodule, output_dir: Path, loggers) -> dict:
    """For `model.scheduler.max_lr=auto`: the range test's suggestion goes into `cfg`; the record for metrics.json."""
    found = lr_range_test(cfg, datamodule, output_dir, loggers)
    with open_dict(cfg):
        cfg.model.scheduler.max_lr = found["suggested_max_lr"]
    log.info("LR range test: model.scheduler.max_lr=%.4g", cfg.model.scheduler.max_lr)
    L.seed_everything(cfg.seed, workers=True)  # the same initial weights as a run given this max LR
    return {"lr_find": {"suggested_max_lr": found["suggested_max_lr"], "plot": "lr_find.png"}}
