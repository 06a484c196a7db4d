"""predict.py's work: classify image files and write what was found.

In the output dir: predictions.csv (a row per readable file: the top-k labels and probabilities),
predictions.json (the same, plus every unreadable file and why) and, with Grad-CAM, an overlay
PNG per image under gradcam/. The console gets a line per file.
"""

from __future__ import annotations

import csv
import glob
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from resnet_onecycle.errors import ConfigError, UserError, check
from resnet_onecycle.inference import LAYERS, MAX_PIXELS, Classifier, ImageError, load_image


class SomeUnreadable(UserError):
    """Every readable file was classified and written, and some files were not images."""

    status, exit_code = "completed", 1


def input_files(inputs: str) -> list[Path]:
    """An image file, a folder (every file in it, recursively, hidden ones aside) or a glob. What is
    not a folder is listed, so that a link to a device or a socket is named as unreadable, not skipped."""
    path = Path(str(inputs)).expanduser()
    if path.exists() and not path.is_dir():
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if not p.is_dir() and not p.name.startswith(".")]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if not Path(p).is_dir()]
    if not files:
        raise ConfigError(f"inputs={inputs!r}: no such file, or no files in that folder or matching that glob; "
                          "give inputs=<image file | folder | glob>, e.g. inputs='photos/*.jpg'.")
    return files


def read_images(files: list[Path], max_pixels: int) -> tuple[torch.Tensor, list[Path], dict[str, str]]:
    """The readable files as a uint8 batch, those files, and {unreadable file: why}."""
    images, readable, unreadable = [], [], {}
    for file in files:
        try:
            images.append(load_image(file, max_pixels))
            readable.append(file)
        except ImageError as error:
            unreadable[str(file)] = error.reason
    batch = torch.stack(images) if images else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    return batch, readable, unreadable


def classify(classifier: Classifier, files: list[Path], output_dir: Path, top_k: int, batch_size: int,
             gradcam_layer: str | None = None, max_pixels: int = MAX_PIXELS) -> dict:
    """Classify `files` and write the results into `output_dir`, `batch_size` files at a time, so
    that memory holds one batch whatever the number of files: the CSV and the console get each
    batch's rows as it is done, and a folder of more than one batch gets a progress bar.
    The summary for metrics.json."""
    check_settings(len(classifier.classes), top_k, batch_size, gradcam_layer, max_pixels)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, unreadable, width, start = [], {}, max(len(str(f)) for f in files), time.perf_counter()
    with open(output_dir / "predictions.csv", "w", newline="") as table, \
            tqdm(total=len(files), unit="image", leave=False,
                 disable=len(files) <= batch_size or not sys.stderr.isatty()) as bar:  # a bar for a person only
        writer = csv.writer(table)
        writer.writerow(["file", *[f"{kind}_{i + 1}" for i in range(top_k) for kind in ("label", "probability")]])
        for first in range(0, len(files), batch_size):
            batch, readable, bad = read_images(files[first:first + batch_size], max_pixels)
            probabilities = classifier.probabilities(batch, batch_size)
            done = [{"file": str(f), "top_k": [{"label": c, "probability": p} for c, p in t]}
                    for f, t in zip(readable, classifier.top_k(probabilities, top_k))]
            writer.writerows([row["file"], *[v for t in row["top_k"] for v in (t["label"], f"{t['probability']:.6f}")]]
                             for row in done)
            if gradcam_layer and len(batch):
                write_overlays(classifier, batch, probabilities.argmax(1).tolist(), readable, first,
                               output_dir / "gradcam", gradcam_layer)
            for line in table_lines(done, bad, width):
                bar.write(line, file=sys.stdout)
            rows, unreadable = rows + done, {**unreadable, **bad}
            bar.update(len(readable) + len(bad))
    seconds = time.perf_counter() - start
    (output_dir / "predictions.json").write_text(json.dumps(
        {"ckpt_path": str(classifier.ckpt_path), "predictions": rows,
         "unreadable": [{"file": f, "error": e} for f, e in unreadable.items()]}, indent=2) + "\n")
    print(f"{len(rows)} image{'' if len(rows) == 1 else 's'} in {seconds:.2f} s -> {output_dir / 'predictions.csv'}"
          + (f"; {len(unreadable)} unreadable" if unreadable else ""))
    return {"status": "completed", "images": len(rows), "unreadable": len(unreadable),
            "ckpt_path": str(classifier.ckpt_path), "seconds": round(seconds, 3),
            "images_per_s": round(len(rows) / seconds, 1) if seconds else None, "device": str(classifier.device),
            "output": str(output_dir)}


def check_settings(classes: int, top_k, batch_size, gradcam_layer, max_pixels) -> None:
    check("top_k", top_k, low=1, below=classes + 1, fix=f"there are {classes} classes")
    check("batch_size", batch_size, low=1)
    check("gradcam_layer", gradcam_layer, choices=LAYERS, optional=True)
    check("max_pixels", max_pixels, low=1)


def write_overlays(classifier: Classifier, batch: torch.Tensor, targets: list[int], files: list[Path], first: int,
                   folder: Path, layer: str) -> None:
    """A 128x128 Grad-CAM overlay PNG per image, for class `targets[i]` of image i, numbered from `first`."""
    overlays = classifier.overlays(batch, classifier.gradcam(batch, targets, layer))
    folder.mkdir(exist_ok=True)
    for i, (file, overlay) in enumerate(zip(files, overlays), start=first):
        Image.fromarray(overlay).resize((128, 128), Image.Resampling.NEAREST).save(folder / f"{i:05d}_{file.stem}.png")


def table_lines(rows: list[dict], unreadable: dict[str, str], width: int) -> list[str]:
    return ([f"{row['file']:<{width}}  " + "  ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"])
             for row in rows] + [f"{file:<{width}}  unreadable: {reason}" for file, reason in unreadable.items()])
