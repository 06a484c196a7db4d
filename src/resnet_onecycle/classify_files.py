"""predict.py's work: classify image files and write what was found.

In the output dir: predictions.csv (a row per readable file: the top-k labels and probabilities),
predictions.json (the same, plus every unreadable file and why) and, with Grad-CAM, an overlay
PNG per image under gradcam/. The console gets a line per file.
"""

from __future__ import annotations

import csv
import glob
import json
import time
from pathlib import Path

import torch
from PIL import Image

from resnet_onecycle.errors import ConfigError, UserError, check
from resnet_onecycle.inference import LAYERS, Classifier, ImageError, load_image


class SomeUnreadable(UserError):
    """Every readable file was classified and written, and some files were not images."""

    status, exit_code = "completed", 1


def input_files(inputs: str) -> list[Path]:
    """An image file, a folder (every file in it, recursively, hidden ones aside) or a glob."""
    path = Path(str(inputs)).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    if not files:
        raise ConfigError(f"inputs={inputs!r}: no such file, or no files in that folder or matching that glob; "
                          "give inputs=<image file | folder | glob>, e.g. inputs='photos/*.jpg'.")
    return files


def read_images(files: list[Path]) -> tuple[torch.Tensor, list[Path], dict[str, str]]:
    """The readable files as a uint8 batch, those files, and {unreadable file: why}."""
    images, readable, unreadable = [], [], {}
    for file in files:
        try:
            images.append(load_image(file))
            readable.append(file)
        except ImageError as error:
            unreadable[str(file)] = str(error)
    batch = torch.stack(images) if images else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    return batch, readable, unreadable


def classify(classifier: Classifier, files: list[Path], output_dir: Path, top_k: int, batch_size: int,
             gradcam_layer: str | None = None) -> dict:
    """Classify `files` and write the results into `output_dir`; the summary for metrics.json."""
    check("top_k", top_k, low=1, below=len(classifier.classes) + 1, fix=f"there are {len(classifier.classes)} classes")
    check("batch_size", batch_size, low=1)
    check("gradcam_layer", gradcam_layer, choices=LAYERS, optional=True)
    start = time.perf_counter()
    batch, readable, unreadable = read_images(files)
    probabilities = classifier.probabilities(batch, batch_size)
    top = classifier.top_k(probabilities, top_k)
    seconds = time.perf_counter() - start
    rows = [{"file": str(f), "top_k": [{"label": c, "probability": p} for c, p in t]} for f, t in zip(readable, top)]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(output_dir / "predictions.csv", rows, top_k)
    (output_dir / "predictions.json").write_text(json.dumps(
        {"ckpt_path": str(classifier.ckpt_path), "predictions": rows,
         "unreadable": [{"file": f, "error": e} for f, e in unreadable.items()]}, indent=2) + "\n")
    if gradcam_layer and len(batch):
        write_overlays(classifier, batch, probabilities.argmax(1).tolist(), readable, output_dir / "gradcam", gradcam_layer)
    print_table(rows, unreadable, max(len(str(f)) for f in files))
    print(f"{len(rows)} image{'' if len(rows) == 1 else 's'} in {seconds:.2f} s -> {output_dir / 'predictions.csv'}"
          + (f"; {len(unreadable)} unreadable" if unreadable else ""))
    return {"status": "completed", "images": len(rows), "unreadable": len(unreadable),
            "ckpt_path": str(classifier.ckpt_path), "seconds": round(seconds, 3),
            "images_per_s": round(len(rows) / seconds, 1) if seconds else None, "device": str(classifier.device),
            "output": str(output_dir)}


def write_csv(path: Path, rows: list[dict], top_k: int) -> None:
    k = len(rows[0]["top_k"]) if rows else top_k
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *[f"{kind}_{i + 1}" for i in range(k) for kind in ("label", "probability")]])
        for row in rows:
            writer.writerow([row["file"], *[v for t in row["top_k"] for v in (t["label"], f"{t['probability']:.6f}")]])


def write_overlays(classifier: Classifier, batch: torch.Tensor, targets: list[int], files: list[Path], folder: Path,
                   layer: str) -> None:
    """A 128x128 Grad-CAM overlay PNG per image, for class `targets[i]` of image i."""
    overlays = classifier.overlays(batch, classifier.gradcam(batch, targets, layer))
    folder.mkdir(exist_ok=True)
    for i, (file, overlay) in enumerate(zip(files, overlays)):
        Image.fromarray(overlay).resize((128, 128), Image.Resampling.NEAREST).save(folder / f"{i:05d}_{file.stem}.png")


def print_table(rows: list[dict], unreadable: dict[str, str], width: int) -> None:
    for row in rows:
        print(f"{row['file']:<{width}}  " + "  ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"]))
    for file, error in unreadable.items():
        print(f"{file:<{width}}  unreadable: {error.split(': ', 1)[-1]}")
