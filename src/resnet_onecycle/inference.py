"""A trained model, ready to use: what predict.py, app.py and export.py share.

`Classifier.load(ckpt_path)` reads a checkpoint with its run's saved config, strictly, and builds
the net in eval mode on the CPU (or `device`). `load_image` turns any image file into the
model's input, a 3x32x32 uint8 tensor; `Classifier.probabilities` applies exactly the training
normalization (`data.augment.normalize`), and the run's test-time augmentation when it had one.

Any image: EXIF rotation applied; grayscale, palette, CMYK and 16-bit converted to 8-bit RGB;
transparency composited over white; any size cropped to its central square (no stretching) and
resized to 32x32 with Pillow's antialiased bicubic filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from resnet_onecycle.analysis.gradcam import gradcam_maps, overlays
from resnet_onecycle.analysis.predictions import evaluating
from resnet_onecycle.data.augment import normalize
from resnet_onecycle.data.sources import CLASSES
from resnet_onecycle.errors import ConfigError, UserError
from resnet_onecycle.models import FlipAveraged
from resnet_onecycle.resume import run_dir_of, saved_config, unreadable_checkpoint

SIZE = 32
LAYERS = ("prep", "layer1", "layer2", "layer3")  # Grad-CAM targets: maps of 32, 16, 8 and 4 pixels a side


class ImageError(UserError):
    """A file that is not a readable image; the message names it and why."""


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """A Lightning checkpoint of this project, weights only; a ConfigError naming the file otherwise."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        checkpoint["state_dict"]
    except Exception as error:  # noqa: BLE001 - any failure means "not one of our checkpoints"
        raise ConfigError(f"ckpt_path={str(ckpt_path)!r}: {unreadable_checkpoint(Path(ckpt_path), error)}") from error
    return checkpoint


def newest_checkpoint(log_dir: str | Path) -> Path:
    """The newest `last.ckpt` under `log_dir`, for commands given no ckpt_path."""
    found = sorted(Path(log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"ckpt_path: no checkpoint given and no checkpoints/last.ckpt under {log_dir}; train one "
                          "first (python src/train.py experiment=cpu_fast), or give ckpt_path=<run>/checkpoints/last.ckpt.")
    return found[-1]


def load_image(path: str | Path) -> torch.Tensor:
    """Any image file as the model's input: uint8 (3, 32, 32); an ImageError naming the file otherwise."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_input(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error


def to_input(image: Image.Image) -> torch.Tensor:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit integer) grayscale
        values = np.asarray(image, dtype=np.float64)
        top = 65535 if image.mode.startswith("I;16") or values.max() > 255 else 255
        image = Image.fromarray(np.clip(values / top * 255, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    side = min(image.size)
    image = ImageOps.fit(image, (side, side), centering=(0.5, 0.5)) if image.width != image.height else image
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC, reducing_gap=None)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@dataclass
class Classifier:
    """The trained net, eval mode, with what it needs to classify and explain an image."""

    net: nn.Module
    tta: str
    ckpt_path: Path
    config: DictConfig | None
    device: torch.device
    classes: tuple[str, ...] = CLASSES

    @classmethod
    def load(cls, ckpt_path: str | Path, device: str | torch.device = "cpu") -> Classifier:
        ckpt_path = Path(ckpt_path)
        if not ckpt_path.is_file():
            raise ConfigError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file; "
                              "give ckpt_path=<run>/checkpoints/last.ckpt.")
        run = run_dir_of(str(ckpt_path))
        config = saved_config(run) if run is not None else None
        state = {k.removeprefix("net."): v for k, v in read_checkpoint(ckpt_path)["state_dict"].items()
                 if k.startswith("net.")}
        net = build_net(config, state)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ConfigError(f"ckpt_path={str(ckpt_path)!r} holds another model than its run's config builds: "
                              + " ".join(str(error).splitlines()[:2])) from error
        tta = str(config.model.get("tta", "none")) if config is not None else "none"
        device = torch.device(device)
        return cls(net.to(device).eval(), tta, ckpt_path, config, device)

    @property
    def classify_net(self) -> nn.Module:
        """The net as the run's validation and test classified with it (`model.tta`)."""
        return FlipAveraged(self.net) if self.tta == "flip" else self.net

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Softmax over the classes for uint8 (N, 3, 32, 32) images: (N, 10), on the CPU."""
        out = []
        with evaluating(self.classify_net, self.device) as net:
            for start in range(0, len(images), batch_size):
                x = normalize(images[start:start + batch_size].to(self.device))
                out.append(net(x).float().softmax(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def top_k(self, probabilities: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
        k = max(1, min(int(k), len(self.classes)))
        values, index = probabilities.topk(k, dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), index.tolist())]

    def gradcam(self, images: torch.Tensor, targets: list[int], layer: str = "layer2") -> np.ndarray:
        """Grad-CAM maps (N, 32, 32) in [0, 1] for class `targets[i]` of image i, at `layer`."""
        if layer not in LAYERS:
            raise ConfigError(f"layer={layer!r}: choose one of {', '.join(LAYERS)}.")
        return gradcam_maps(self.net, images, targets, layer, self.device)

    @staticmethod
    def overlays(images: torch.Tensor, maps: np.ndarray, opacity: float = 0.5) -> list[np.ndarray]:
        """The maps over the images, RGB uint8 (32, 32, 3); `opacity` is the heat map's weight."""
        return overlays(images, maps, image_weight=1 - float(opacity))

def test_split(classifier: Classifier, source: str | None, data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (uint8) and labels of `source`, by default the checkpoint's run's own data.source."""
    from resnet_onecycle.data.cache import load_cached
    from resnet_onecycle.data.sources import check_source

    if not source:
        source = str(classifier.config.data.source) if classifier.config is not None else "download"
    check_source(source)
    test = load_cached(source, str(data_dir))[0]["test"]
    return torch.from_numpy(test.images), torch.from_numpy(test.labels)


def build_net(config: DictConfig | None, state: dict) -> nn.Module:
    """The run's net from its saved config; without one (a checkpoint moved out of its run), a
    MixedResNet of the width its first layer says."""
    if config is not None:
        return instantiate(config.model.net)
    from resnet_onecycle.models import MixedResNet

    prep = state.get("prep.0.weight")
    if prep is None:
        raise ConfigError("ckpt_path: the checkpoint holds no MixedResNet and no run config is beside it.")
    return MixedResNet(width=prep.shape[0] / 64)
