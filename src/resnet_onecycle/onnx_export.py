"""A trained model as ONNX: input float32 NCHW RGB in [0, 1] at 32x32, any batch size, the
training normalization (and the run's flip TTA) inside the graph, output logits.

Exported with torch's dynamo exporter (`torch.onnx.export(dynamo=True)`, the default since torch
2.9; it needs onnxscript), from a contiguous copy of the net: channels_last is a speed setting of
training, not part of the model. Checked with onnxruntime against PyTorch on real images.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnet_onecycle.data.augment import CIFAR10_MEAN, CIFAR10_STD
from resnet_onecycle.errors import ConfigError, UserError, check
from resnet_onecycle.files import write_text, written_whole
from resnet_onecycle.inference import SIZE, Classifier

OPSET = 18


class ExportMismatch(UserError):
    """onnxruntime's logits differ from PyTorch's beyond the tolerance."""


class Normalized(nn.Module):
    """[0, 1] RGB in, logits out: the training normalization as the graph's first ops."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def export_onnx(classifier: Classifier, path: Path, opset: int = OPSET) -> None:
    model = Normalized(copy.deepcopy(classifier.classify_net).cpu().to(memory_format=torch.contiguous_format)).eval()
    example = torch.rand(2, 3, SIZE, SIZE)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                 input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},))
    with written_whole(path, "report") as file:  # beside it, then moved into place: never through a link there
        file.write(program.model_proto.SerializeToString())


def onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def compare(classifier: Classifier, session, images: torch.Tensor) -> dict:
    """onnxruntime against PyTorch on uint8 images: the largest logit difference, top-1 agreement."""
    with torch.no_grad():
        from resnet_onecycle.data.augment import normalize

        net = classifier.classify_net.cpu().eval()
        theirs = net(normalize(images)).numpy()
    ours = session.run(["logits"], {"images": images.numpy().astype(np.float32) / 255})[0]
    return {"images": len(images), "max_abs_logit_difference": float(np.abs(ours - theirs).max()),
            "max_abs_logit": float(np.abs(theirs).max()), "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean())}


def agrees(check: dict, tolerance: float) -> bool:
    """Logits within `tolerance` of PyTorch's, relative to their scale (at least 1), and the same top-1."""
    return check["max_abs_logit_difference"] <= tolerance * max(1.0, check["max_abs_logit"]) and check["top1_agreement"] == 1


def images_per_second(run, images: torch.Tensor, batch_size: int, seconds: float = 2.0) -> float:
    """Steady images/s of `run(batch)` over at least `seconds`, after one warm-up call."""
    batch = images[:batch_size]
    run(batch)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count == 0:
        run(batch)
        count += len(batch)
    return count / elapsed


def speeds(classifier: Classifier, session, images: torch.Tensor, batch_sizes=(1, 256)) -> dict:
    """onnxruntime's and PyTorch eager's images/s on this CPU, at each batch size."""
    from resnet_onecycle.data.augment import normalize

    net = classifier.classify_net.cpu().eval()

    def torch_run(batch):
        with torch.no_grad():
            net(normalize(batch))

    def ort_run(batch):
        session.run(["logits"], {"images": batch.numpy().astype(np.float32) / 255})

    out = {}
    for size in batch_sizes:
        pool = images if len(images) >= size else images.repeat((size + len(images) - 1) // len(images), 1, 1, 1)
        out[f"batch_{size}"] = {"onnxruntime_images_per_s": round(images_per_second(ort_run, pool, size), 1),
                                "torch_eager_images_per_s": round(images_per_second(torch_run, pool, size), 1)}
    return out


def export_checked(classifier: Classifier, images: torch.Tensor, output_dir: Path, opset: int, tolerance: float,
                   measure_speed: bool, data_source: str | None, overwrite: bool = False) -> dict:
    """model.onnx and model.export.json in `output_dir`, checked with onnxruntime on `images`
    (batch 1 and all of them); an ExportMismatch, with the record saved, where they disagree.
    An existing model.onnx is replaced only with `overwrite`."""
    path = output_dir / "model.onnx"
    check_settings(opset, tolerance, measure_speed, overwrite)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ConfigError(f"{path} exists: give overwrite=true to replace it, or another output dir (hydra.run.dir=...).")
    export_onnx(classifier, path, opset)
    session = onnx_session(path)
    checks = [compare(classifier, session, images[:1]), compare(classifier, session, images)]
    record = {
        "file": "model.onnx", "ckpt_path": str(classifier.ckpt_path), "opset": opset, "exporter": "torch.onnx dynamo",
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", 3, 32, 32], "layout": "NCHW",
                  "range": [0, 1], "channels": "RGB", "normalization": "inside the graph", "tta": classifier.tta},
        "output": {"name": "logits", "shape": ["batch", len(classifier.classes)]}, "classes": list(classifier.classes),
        "check": {"data_source": data_source or "the run's data.source", "tolerance": tolerance, "batches": checks},
        "torch": torch.__version__,
    }
    bad = [c for c in checks if not agrees(c, tolerance)]
    if not bad and measure_speed:
        record["speed_cpu"] = {"threads": torch.get_num_threads(), **speeds(classifier, session, images)}
    write_text(output_dir / "model.export.json", json.dumps({**record, **({"status": "mismatch"} if bad else {})},
                                                            indent=2) + "\n", "report")
    if bad:
        raise ExportMismatch(f"{path}: onnxruntime disagrees with PyTorch beyond tolerance={tolerance}: {bad}")
    print_checks(path, opset, checks, record.get("speed_cpu", {}))
    return record


def check_settings(opset, tolerance, measure_speed, overwrite) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    check("opset", opset, low=OPSET, below=newest + 1,
          fix=f"{OPSET} is the lowest torch's exporter writes directly, {newest} the newest this onnx knows")
    check("tolerance", tolerance, float, above=0, fix="the largest logit difference accepted, e.g. 1e-5")
    check("measure_speed", measure_speed, choices=(True, False))
    check("overwrite", overwrite, choices=(True, False))


def print_checks(path: Path, opset: int, checks: list[dict], speed: dict) -> None:
    print(f"Exported {path} (opset {opset}); onnxruntime against PyTorch: "
          + ", ".join(f"batch {c['images']}: max |diff| {c['max_abs_logit_difference']:.2e}, top-1 agreement "
                      f"{c['top1_agreement']:.0%}" for c in checks))
    for batch, rates in speed.items():
        if batch.startswith("batch_"):
            print(f"  {batch.replace('_', ' ')}: onnxruntime {rates['onnxruntime_images_per_s']:,.0f} images/s, "
                  f"PyTorch eager {rates['torch_eager_images_per_s']:,.0f} images/s")
