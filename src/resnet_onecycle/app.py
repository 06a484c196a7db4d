"""The web app: a Gradio `Blocks` app over one trained model (`python src/app.py`).

Classify: upload images or pick an example, top-k probabilities, Grad-CAM at a chosen layer,
opacity and class. Mistakes: the most confident misclassified test images with their Grad-CAM,
filtered by true and predicted class. Model: the run's report (recipe, metrics, pictures).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet_onecycle.errors import ConfigError, check
from resnet_onecycle.inference import LAYERS, Classifier, ImageError, load_image

PREDICTED = "the predicted class"
MAP_SIZES = {"prep": 32, "layer1": 16, "layer2": 8, "layer3": 4}


def layer_choices() -> list[tuple[str, str]]:
    return [(f"{name} ({MAP_SIZES[name]}x{MAP_SIZES[name]} map)", name) for name in LAYERS]


def check_port(host: str, port: int) -> None:
    """A port already taken is a clear error before launch, not a stack trace from the server."""
    check("app.port", port, low=1, below=65536, fix="e.g. app.port=7860")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            raise ConfigError(f"app.port={port}: {host}:{port} is not free ({error.strerror or error}); "
                              "give another, e.g. app.port=7861.") from error


def enlarged(image: np.ndarray, size: int = 160) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST))


def square_side(path: str, cap: int = 512) -> int:
    """The side of the central square the model sees of an uploaded image, at most `cap` pixels."""
    with Image.open(path) as image:
        return min(min(image.size), cap)


class Handlers:
    """What the app's handlers work on: the classifier, and the test split when there is one."""

    def __init__(self, classifier: Classifier, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.classifier, self.test = classifier, test
        self._mistakes: list[tuple[int, int, int, float]] | None = None

    @property
    def mistakes(self) -> list[tuple[int, int, int, float]]:
        """(index, true, predicted, confidence) of every misclassified test image, most confident
        first; classified once, on the first call, so that the app starts at once."""
        if self._mistakes is None:
            images, labels = self.test
            confidence, predicted = self.classifier.probabilities(images).max(1)
            wrong = (predicted != labels).nonzero().flatten().tolist()
            self._mistakes = sorted(((i, int(labels[i]), int(predicted[i]), float(confidence[i])) for i in wrong),
                                    key=lambda m: -m[3])
        return self._mistakes

    def classify(self, files, top_k: int, gradcam: bool, layer: str, opacity: float, target: str):
        """(the first image's top-k, a table for every image, Grad-CAM overlays, a message)."""
        classes = self.classifier.classes
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        images, names, sides, problems = [], [], [], []
        for path in paths:
            try:
                images.append(load_image(path))
                names.append(Path(path).name)
                sides.append(square_side(path))
            except ImageError as error:
                problems.append(f"{Path(path).name}: {error.reason}")  # the upload's name, never the server's path
        if not images:
            return {}, [], [], "\n\n".join(problems) or "Upload an image, or pick an example."
        batch = torch.stack(images)
        probabilities = self.classifier.probabilities(batch)
        top = self.classifier.top_k(probabilities, top_k)
        table = [[name, ", ".join(f"{c} {p:.3f}" for c, p in t)] for name, t in zip(names, top)]
        gallery = []
        if gradcam:
            targets = (probabilities.argmax(1).tolist() if target == PREDICTED else [classes.index(target)] * len(batch))
            maps = self.classifier.gradcam(batch, targets, layer)
            for name, side, overlay, t in zip(names, sides, self.classifier.overlays(batch, maps, opacity), targets):
                gallery.append((enlarged(overlay, side), f"{name}: Grad-CAM for {classes[t]} at {layer}"))
        return {c: p for c, p in top[0]}, table, gallery, "\n\n".join(problems)

    def show_mistakes(self, count: int, true_class: str, predicted_class: str, layer: str = "layer2"):
        """(misclassified test images captioned true / predicted, their Grad-CAM, a message)."""
        if self.test is None:
            return [], [], "No test data reachable: give data_source=<CIFAR-10 copy> to see the mistakes."
        classes = self.classifier.classes
        chosen = [m for m in self.mistakes if true_class in ("any", classes[m[1]])
                  and predicted_class in ("any", classes[m[2]])][: int(count)]
        if not chosen:
            return [], [], "No misclassified test image matches these filters."
        images = self.test[0][[m[0] for m in chosen]]
        captions = [f"{classes[t]} / {classes[p]} ({c:.2f})" for _, t, p, c in chosen]
        maps = self.classifier.gradcam(images, [m[2] for m in chosen], layer)
        pictures = [(enlarged(img.permute(1, 2, 0).numpy()), cap) for img, cap in zip(images, captions)]
        heat = [(enlarged(o), cap) for o, cap in zip(self.classifier.overlays(images, maps), captions)]
        return pictures, heat, f"{len(chosen)} of {len(self.mistakes)} misclassified test images, most confident first."


def build(model: Handlers, examples: list[str], report_dir: Path | None, misclassified: int = 20,
          analytics: bool = False, delete_after_s: int = 3600):
    """The app: the Classify, Mistakes and Model tabs. Gradio's telemetry only with `analytics`."""
    import gradio as gr

    os.environ["GRADIO_ANALYTICS_ENABLED"] = str(bool(analytics))  # also what Gradio reads at launch
    with gr.Blocks(title="resnet-onecycle", analytics_enabled=bool(analytics),
                   delete_cache=(min(delete_after_s, 600), delete_after_s)) as app:
        gr.Markdown(f"# resnet-onecycle\nModel: `{model.classifier.ckpt_path}`")
        with gr.Tab("Classify"):
            classify_tab(gr, model, examples)
        with gr.Tab("Mistakes"):
            mistakes_tab(gr, model, misclassified)
        with gr.Tab("Model"):
            model_tab(gr, report_dir)
    return app


def classify_tab(gr, model: Handlers, examples: list[str]) -> None:
    classes = list(model.classifier.classes)
    with gr.Row():
        with gr.Column():
            # any file reaches the loader, which says why one is not an image
            files = gr.File(label="Images", file_count="multiple", type="filepath")
            top_k = gr.Slider(1, 10, value=3, step=1, label="Top-k classes")
            gradcam = gr.Checkbox(value=True, label="Grad-CAM")
            layer = gr.Dropdown(layer_choices(), value="layer2", label="Grad-CAM layer")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Grad-CAM opacity")
            target = gr.Dropdown([PREDICTED, *classes], value=PREDICTED, label="Class to explain")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Column():
            label = gr.Label(label="Top-k (first image)", elem_id="prediction")
            table = gr.Dataframe(headers=["image", "top-k"], label="Every image")
            overlays = gr.Gallery(label="Grad-CAM", columns=4)
            message = gr.Markdown(elem_id="message")
    inputs, outputs = [files, top_k, gradcam, layer, opacity, target], [label, table, overlays, message]
    button.click(model.classify, inputs, outputs, api_name="classify")
    if examples:
        gr.Examples([[[path]] for path in examples], inputs=[files], label="Examples: a test image of each class")


def mistakes_tab(gr, model: Handlers, misclassified: int) -> None:
    classes = list(model.classifier.classes)
    with gr.Row():
        count = gr.Slider(1, 50, value=misclassified, step=1, label="Images")
        true_class = gr.Dropdown(["any", *classes], value="any", label="True class")
        predicted_class = gr.Dropdown(["any", *classes], value="any", label="Predicted class")
    show = gr.Button("Show")
    note = gr.Markdown()
    mistakes = gr.Gallery(label="Misclassified: true / predicted (confidence)", columns=5)
    heat = gr.Gallery(label="Grad-CAM for the predicted class", columns=5)
    show.click(model.show_mistakes, [count, true_class, predicted_class], [mistakes, heat, note], api_name="mistakes")


def model_tab(gr, report_dir: Path | None) -> None:
    report = report_dir / "report.md" if report_dir is not None else None
    if report is None or not report.is_file():
        gr.Markdown("This checkpoint's run has no report.md.")
        return
    gr.Markdown("\n".join(line for line in report.read_text().splitlines() if not line.startswith("![")))
    pictures = [str(report_dir / f"{n}.png") for n in ("curves", "confusion_matrix") if (report_dir / f"{n}.png").is_file()]
    if pictures:
        gr.Gallery(pictures, label="Curves and confusion matrix", columns=2)


def example_files(test: tuple[torch.Tensor, torch.Tensor], classes, folder: Path) -> list[str]:
    """One test image per class, as PNG files in `folder` that the app can offer as examples."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for label, name in enumerate(classes):
        index = (test[1] == label).nonzero().flatten()
        if len(index):
            path = folder / f"{name}.png"
            Image.fromarray(test[0][int(index[0])].permute(1, 2, 0).numpy()).save(path)
            examples.append(str(path))
    return examples


def serve(classifier: Classifier, test, output_dir: Path, report_dir: Path | None, settings) -> None:
    """The app on `settings.host`:`settings.port` until stopped (Ctrl-C or SIGTERM).

    It serves only `output_dir/served/`: the examples, and copies of the two pictures its Model
    tab shows; never the training run's dir, whose checkpoints, config and log stay private.
    Uploads are capped at `settings.max_file_size` and removed `settings.delete_uploads_after_s`
    after they came, and all of them when the app stops."""
    check("app.misclassified", settings.misclassified, low=1, below=51, fix="the Mistakes tab shows up to 50")
    check("app.delete_uploads_after_s", settings.delete_uploads_after_s, low=1)
    for key in ("share", "analytics"):
        check(f"app.{key}", settings.get(key), choices=(True, False))
    served = output_dir / "served"
    examples = example_files(test, classifier.classes, served / "examples") if test is not None else []
    report = copy_report(report_dir, served / "report") if report_dir is not None else None
    demo = build(Handlers(classifier, test), examples, report, settings.misclassified, settings.analytics,
                 delete_after_s=settings.delete_uploads_after_s)
    print(f"Serving {classifier.ckpt_path} on http://{settings.host}:{settings.port} (Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: a clean one, as Ctrl-C
    demo.launch(server_name=settings.host, server_port=int(settings.port), share=bool(settings.share),
                allowed_paths=[str(served)], max_file_size=settings.max_file_size, quiet=True)


def copy_report(report_dir: Path, folder: Path) -> Path:
    """report.md and the pictures the Model tab shows, copied out of the run dir into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "curves.png", "confusion_matrix.png"):
        if (report_dir / name).is_file():
            shutil.copyfile(report_dir / name, folder / name)
    return folder
