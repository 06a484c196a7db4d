"""What a trained model gets wrong, as pictures and a report, written into a run dir.

`analyze` runs after training (and from eval.py): curves.png, misclassified.png, gradcam.png,
confusion_matrix.png, per_class_accuracy.json and report.md, each picture also logged to
TensorBoard.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from resnet_onecycle.analysis.confusion import confusion, per_class_accuracy, plot_confusion  # noqa: E402
from resnet_onecycle.analysis.curves import plot_curves, read_scalars, schedule_lrs, steps_per_epoch_of  # noqa: E402
from resnet_onecycle.analysis.gradcam import gradcam_maps, overlays  # noqa: E402
from resnet_onecycle.analysis.misclassified import image_grid, most_confident_mistakes, plot_misclassified, title  # noqa: E402
from resnet_onecycle.analysis.predictions import predict  # noqa: E402
from resnet_onecycle.analysis.report import write_report  # noqa: E402


def save(fig, path: Path, tag: str, loggers, step: int) -> str:
    fig.savefig(path)
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(tag, fig, global_step=step, close=False)
    plt.close(fig)
    return path.name


def analyze(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes, out_dir: Path,
            settings: DictConfig, cfg: DictConfig, metrics: dict, device: torch.device,
            loggers=(), step: int = 0, tensorboard_dir: Path | None = None, title_text: str = "Run report",
            classifier: nn.Module | None = None) -> dict:
    """Write the pictures and report.md for `net` on (images, labels), the test split in uint8.
    Predictions come from `classifier` (the net with test-time augmentation, if any), Grad-CAM
    from the plain net: a map explains one forward pass."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predict(classifier or net, images, labels, device)
    pictures = {}
    if tensorboard_dir is not None and Path(tensorboard_dir).exists():
        scalars = read_scalars(Path(tensorboard_dir))
        if scalars.get("train/loss"):
            schedule = None
            scheduler_cfg, epochs = OmegaConf.select(cfg, "model.scheduler"), OmegaConf.select(cfg, "trainer.max_epochs")
            if scheduler_cfg is not None and epochs and isinstance(scheduler_cfg.get("max_lr"), (int, float)):
                schedule = schedule_lrs(scheduler_cfg, epochs, steps_per_epoch_of(scalars))
            fig = plot_curves(scalars, val_is_test=not OmegaConf.select(cfg, "data.val_size"), schedule=schedule)
            pictures["curves"] = save(fig, out_dir / "curves.png", "analysis/curves", loggers, step)

    index = most_confident_mistakes(predictions, settings.misclassified)
    if len(index):
        mistakes = images[index.to(images.device)].cpu()
        fig = plot_misclassified(images, predictions, index, classes)
        pictures["misclassified"] = save(fig, out_dir / "misclassified.png", "analysis/misclassified", loggers, step)
        predicted = predictions.predicted[index].tolist()
        maps = gradcam_maps(net, mistakes, predicted, settings.gradcam_layer, device)
        titles = [title(classes, int(predictions.labels[i]), int(predictions.predicted[i])) for i in index.tolist()]
        fig = image_grid(overlays(mistakes, maps), titles,
                         caption=f"Grad-CAM for the predicted class at {settings.gradcam_layer}: true / predicted")
        pictures["gradcam"] = save(fig, out_dir / "gradcam.png", "analysis/gradcam", loggers, step)

    matrix = confusion(predictions, len(classes))
    pictures["confusion_matrix"] = save(plot_confusion(matrix, classes), out_dir / "confusion_matrix.png",
                                        "analysis/confusion_matrix", loggers, step)
    class_accuracy = per_class_accuracy(matrix)
    (out_dir / "per_class_accuracy.json").write_text(json.dumps(dict(zip(classes, class_accuracy)), indent=2) + "\n")
    parameters = sum(p.numel() for p in net.parameters())
    write_report(out_dir / "report.md", title_text, metrics, cfg, parameters, classes, class_accuracy, pictures,
                 settings.gradcam_layer)
    return {"pictures": pictures, "per_class_accuracy": dict(zip(classes, class_accuracy)),
            "misclassified_index": index.tolist()}
