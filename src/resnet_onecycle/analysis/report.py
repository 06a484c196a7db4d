"""report.md: the run's final metrics, its recipe in one table, and its pictures (relative links)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def recipe_rows(cfg: DictConfig, parameters: int) -> list[tuple[str, str]]:
    get = lambda key, default=None: OmegaConf.select(cfg, key, default=default)  # noqa: E731
    sched, opt, data = get("model.scheduler", {}), get("model.optimizer", {}), get("data", {})
    start = sched.get("max_lr", 0) / sched.get("div_factor", 10) if isinstance(sched.get("max_lr"), (int, float)) else "?"
    end = sched.get("end_lr") if sched.get("end_lr") is not None else start
    crop = f"random crop after {data.get('crop_padding')}-pixel {data.get('padding_mode')} padding"
    augment = [crop if data.get("crop_padding") else None,
               "horizontal flip" if data.get("flip") else None,
               f"cutout {data.get('cutout_size')}x{data.get('cutout_size')}" if data.get("cutout_size") else None]
    return [
        ("model", f"MixedResNet, width {get('model.net.width')}, {parameters:,} parameters"),
        ("optimizer", f"SGD, momentum {opt.get('momentum')}, nesterov {opt.get('nesterov')}, "
                      f"weight decay {opt.get('weight_decay')}"),
        ("LR schedule", f"one-cycle ({sched.get('anneal_strategy')}): {number(start)} -> {number(sched.get('max_lr'))} "
                        f"at the end of epoch {sched.get('peak_epoch')} -> {number(end)}, "
                        f"momentum cycled: {sched.get('cycle_momentum')}"),
        ("loss", f"cross-entropy on the logits x {number(get('model.net.logit_scale', 1.0))}, "
                 f"label smoothing {number(get('model.label_smoothing', 0.0))}"),
        ("test-time augmentation", {"flip": "flip: each image's logits averaged with its mirror's"}.get(
            get("model.tta", "none"), "none")),
        ("weights", f"exponential moving average, decay {get('callbacks.ema.decay')}" if get("callbacks.ema")
         else "as trained (no averaging)"),
        ("batch size / epochs", f"{data.get('batch_size')} / {get('trainer.max_epochs')}"),
        ("augmentation", ", ".join(a for a in augment if a) or "none"),
        ("precision", str(get("trainer.precision"))),
        ("data", f"{data.get('source')}" + (f" (training subset {data.get('subset')})" if data.get("subset") else "")),
        ("seed", str(get("seed"))),
    ]


def write_report(path, title: str, metrics: dict, cfg: DictConfig, parameters: int, classes,
                 class_accuracy: list[float], pictures: dict[str, str], gradcam_layer: str) -> None:
    lines = [f"# {title}", ""]
    test_subset = OmegaConf.select(cfg, "data.test_subset")
    if test_subset:
        lines += [f"Test metrics on a fixed random subset of {test_subset} test images (`data.test_subset`), "
                  "not the whole test split.", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "## Recipe", "", "| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in recipe_rows(cfg, parameters)]
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
    lines += [f"| {name} | {acc:.4f} |" for name, acc in zip(classes, class_accuracy)]
    path.write_text("\n".join(lines) + "\n")
