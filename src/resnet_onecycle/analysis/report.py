"""report.md: the run's final metrics, its recipe in one table, and its pictures (relative links).

The recipe is read from the objects that ran it (the trainer, the module and its partials, the
DataModule), not from config key paths, so it cannot drift from what ran.
"""

from __future__ import annotations

import inspect

from lightning.pytorch.callbacks import WeightAveraging

from resnet_onecycle.callbacks import Lookahead
from resnet_onecycle.files import write_text
from resnet_onecycle.models import TTA_DESCRIPTIONS


def number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def arguments(factory) -> dict:
    """A partial's arguments, its callable's defaults filled in."""
    bound = inspect.signature(factory.func).bind_partial(**factory.keywords)
    bound.apply_defaults()
    return {**bound.arguments, **bound.arguments.get("kwargs", {})}


def averaged_weights(trainer) -> str | None:
    averaging = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
    lookahead = next((c for c in trainer.callbacks if isinstance(c, Lookahead)), None)
    decay = getattr(averaging, "decay", None)
    kinds = [None if averaging is None else "exponential moving average" + (f", decay {decay}" if decay else ""),
             None if lookahead is None else f"lookahead every {lookahead.every_n_steps} steps, decay {lookahead.decay}"]
    return "; ".join(k for k in kinds if k) or None


def batch_norm(hp) -> str:
    frozen = "; BN scales frozen at 1" if hp.get("freeze_bn_weights") else ""
    scale = hp.get("bn_bias_lr_scale", 1)
    return frozen + (f"; BN biases at {number(scale)}x the LR, weight decay / {number(scale)}" if scale != 1 else "")


def recipe_rows(trainer, module, weights: str | None = None) -> list[tuple[str, str]]:
    data, net = trainer.datamodule.hparams, module.net
    opt, sched = arguments(module.optimizer_factory), arguments(module.scheduler_factory)
    start = sched["max_lr"] / sched["div_factor"]
    end = sched["end_lr"] if sched["end_lr"] is not None else start
    parameters = sum(p.numel() for p in net.parameters())
    crop = f"random crop after {data.crop_padding}-pixel {data.padding_mode} padding"
    flip = {True: "horizontal flip", "alternate": "horizontal flip, alternating by epoch"}.get(data.flip)
    augment = [crop if data.crop_padding else None, flip,
               f"cutout {data.cutout_size}x{data.cutout_size}" if data.cutout_size else None]
    every = trainer.check_val_every_n_epoch or 1
    when = ("every epoch" if every == 1 else "after the last epoch only" if every >= trainer.max_epochs
            else f"every {every} epochs")
    return [
        ("model", f"{type(net).__name__}, width {getattr(net, 'width', '?')}, {parameters:,} parameters"),
        ("optimizer", f"SGD, momentum {opt.get('momentum')}, nesterov {opt.get('nesterov')}, "
                      f"weight decay {opt.get('weight_decay')}{batch_norm(module.hparams)}"),
        ("LR schedule", f"one-cycle ({sched['anneal_strategy']}): {number(start)} -> {number(sched['max_lr'])} "
                        f"at the end of epoch {sched['peak_epoch']} -> {number(end)}, "
                        f"momentum cycled: {sched['cycle_momentum']}"),
        ("loss", f"cross-entropy on the logits x {number(getattr(net, 'logit_scale', 1.0))}, "
                 f"label smoothing {number(module.hparams.label_smoothing)}"),
        ("test-time augmentation", TTA_DESCRIPTIONS[module.hparams.tta]),
        ("weights", weights or averaged_weights(trainer) or "as trained (no averaging)"),
        ("batch size / epochs", f"{data.batch_size} / {trainer.max_epochs}"),
        ("augmentation", ", ".join(a for a in augment if a) or "none"),
        ("validation", f"{f'{data.val_size:,} held-out training images' if data.val_size else 'the test split'}, {when}"),
        ("precision", str(trainer.precision)),
        ("data", f"{data.source}" + (f" (training subset {data.subset})" if data.subset else "")),
        ("seed", str(data.seed)),
    ]


def write_report(path, title: str, metrics: dict, trainer, module, class_accuracy: dict[str, float],
                 pictures: dict[str, str], gradcam_layer: str, weights: str | None = None) -> None:
    lines = [f"# {title}", ""]
    test_subset = trainer.datamodule.hparams.test_subset
    if test_subset:
        lines += [f"Test metrics on a fixed random subset of {test_subset} test images (`data.test_subset`), "
                  "not the whole test split.", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "## Recipe", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in recipe_rows(trainer, module, weights)]
    sections = {
        "curves": ("Training curves", "Loss and accuracy per epoch; the learning rate of every step, from the "
                                      "run's one-cycle schedule."),
        "misclassified": ("Misclassified test images", "Titled true / predicted; the most confident mistakes first."),
        "gradcam": ("Grad-CAM", f"The same images; heat maps for the predicted class at layer `{gradcam_layer}`."),
        "confusion_matrix": ("Confusion matrix", "Rows are the true classes, columns the predicted ones."),
    }
    for key, file in pictures.items():
        heading, text = sections[key]
        lines += ["", f"## {heading}", "", text, "", f"![{heading}]({file})"]
    lines += ["", "## Per-class accuracy", "", "| class | accuracy |", "| --- | --- |"]
    lines += [f"| {name} | {acc:.4f} |" for name, acc in class_accuracy.items()]
    write_text(path, "\n".join(lines) + "\n", "report")
