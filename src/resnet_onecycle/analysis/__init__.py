"""What a trained model gets wrong, as pictures and a report, written into a run dir.

`Analysis` is a Lightning callback: at the end of testing, with the trainer and the module in
hand, it writes curves.png, misclassified.png, gradcam.png, confusion_matrix.png,
per_class_accuracy.json and report.md, and logs each picture to TensorBoard. Training and
eval.py both add it to their trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from resnet_onecycle.analysis.confusion import confusion, per_class_accuracy, plot_confusion  # noqa: E402
from resnet_onecycle.analysis.curves import plot_curves, read_scalars, schedule_lrs, steps_per_epoch_of  # noqa: E402
from resnet_onecycle.analysis.gradcam import gradcam_maps, overlays  # noqa: E402
from resnet_onecycle.analysis.misclassified import image_grid, most_confident_mistakes, plot_misclassified, title  # noqa: E402
from resnet_onecycle.analysis.predictions import predict  # noqa: E402
from resnet_onecycle.analysis.report import write_report  # noqa: E402
from resnet_onecycle.files import save_figure, write_text  # noqa: E402
from resnet_onecycle.summary import final_metrics  # noqa: E402


class Analysis(L.Callback):
    """After `trainer.test`: the pictures and report.md for the tested module into `out_dir`.

    Predictions come from the module's `classifier` (the net with test-time augmentation, if
    any), Grad-CAM from the plain net: a map explains one forward pass. The curves come from the
    TensorBoard events in `events_dir` (the training run's), when there are any. `weights` says
    in the report what the weights are, where the trainer's callbacks do not (eval.py).
    """

    @classmethod
    def of(cls, cfg, title: str, events_dir: Path, weights: str | None = None, enabled: bool = True) -> Analysis:
        """As a run's config (`analysis.*`) asks, into its run dir."""
        settings = cfg.analysis
        return cls(cfg.paths.output_dir, misclassified=settings.misclassified, gradcam_layer=settings.gradcam_layer,
                   title=title, events_dir=events_dir, weights=weights, enabled=bool(settings.enabled and enabled))

    def __init__(self, out_dir: str | Path, misclassified: int = 20, gradcam_layer: str = "layer2",
                 title: str = "Run report", events_dir: str | Path | None = None, weights: str | None = None,
                 enabled: bool = True) -> None:
        self.out_dir, self.events_dir = Path(out_dir), Path(events_dir) if events_dir else None
        self.misclassified, self.gradcam_layer, self.title, self.weights = misclassified, gradcam_layer, title, weights
        self.enabled = enabled
        self.fit_metrics: dict[str, float] = {}
        self.per_class_accuracy: dict[str, float] | None = None  # once written

    def on_fit_end(self, trainer, module) -> None:
        self.fit_metrics = final_metrics(trainer)  # testing replaces the trainer's metrics with its own

    def on_test_end(self, trainer, module) -> None:
        if self.enabled and trainer.is_global_zero:
            self.analyze(trainer, module)

    def analyze(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        datamodule, net, out = trainer.datamodule, module.net, self.out_dir
        images, labels = datamodule.splits["test"]
        classes, device, step = datamodule.classes, trainer.strategy.root_device, trainer.global_step
        out.mkdir(parents=True, exist_ok=True)
        predictions = predict(module.classifier, images, labels, device)
        pictures = {}

        def save(fig, name: str) -> None:
            save_figure(fig, out / f"{name}.png")
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_figure"):
                    experiment.add_figure(f"analysis/{name}", fig, global_step=step, close=False)
            plt.close(fig)
            pictures[name] = f"{name}.png"

        scalars = read_scalars(self.events_dir) if self.events_dir and self.events_dir.exists() else {}
        if scalars.get("train/loss"):
            schedule = schedule_lrs(module.scheduler_factory, trainer.max_epochs, steps_per_epoch_of(scalars))
            save(plot_curves(scalars, val_is_test=not datamodule.hparams.val_size, schedule=schedule), "curves")

        index = most_confident_mistakes(predictions, self.misclassified)
        if len(index):
            mistakes = images[index.to(images.device)].cpu()
            save(plot_misclassified(images, predictions, index, classes), "misclassified")
            maps = gradcam_maps(net, mistakes, predictions.predicted[index].tolist(), self.gradcam_layer, device)
            titles = [title(classes, int(predictions.labels[i]), int(predictions.predicted[i])) for i in index.tolist()]
            save(image_grid(overlays(mistakes, maps), titles,
                            caption=f"Grad-CAM for the predicted class at {self.gradcam_layer}: true / predicted"), "gradcam")

        matrix = confusion(predictions, len(classes))
        save(plot_confusion(matrix, classes), "confusion_matrix")
        self.per_class_accuracy = dict(zip(classes, per_class_accuracy(matrix)))
        write_text(out / "per_class_accuracy.json", json.dumps(self.per_class_accuracy, indent=2) + "\n", "report")
        metrics = {**self.fit_metrics, **final_metrics(trainer)}
        write_report(out / "report.md", self.title, metrics, trainer, module, self.per_class_accuracy, pictures,
                     self.gradcam_layer, self.weights)
