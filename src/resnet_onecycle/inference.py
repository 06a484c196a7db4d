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
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from resnet_onecycle.analysis.gradcam import gradcam_maps, overlays
from resnet_onecycle.analysis.predictions import probabilities
from resnet_onecycle.checkpoints import checkpoint_file, read_checkpoint
from resnet_onecycle.data.sources import CLASSES
from resnet_onecycle.errors import ConfigError, UserError
from resnet_onecycle.models import MixedResNet, with_tta
from resnet_onecycle.rundir import run_dir_of, saved_config

SIZE = 32
LAYERS = ("prep", "layer1", "layer2", "layer3")  # Grad-CAM targets: maps of 32, 16, 8 and 4 pixels a side


MAX_PIXELS = 64_000_000  # 8000 x 8000: past any phone's photo, and refused before it is decoded
DRAFT_SIDE = 8 * SIZE     # a large JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still this wide


class ImageError(UserError):
    """A file that is not a readable image: `reason` says why in a few words, without a path."""

    def __init__(self, file: str | Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = str(file), reason


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Any image file as the model's input: uint8 (3, 32, 32); an ImageError naming the file
    otherwise, each failure its own (a decompression bomb included), so one bad file spoils no other.
    Memory stays bounded: past `max_pixels` an image is refused from its header, and a large JPEG
    is decoded at a reduced scale (PIL's `draft`)."""
    if not Path(path).is_file():
        raise ImageError(path, "not a regular file")  # a device or a socket would block the read
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ImageError(path, f"{image.width}x{image.height} pixels, past the cap of {max_pixels:,} (max_pixels)")
            image.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
            image.load()
            return to_input(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = str(error).replace(str(path), Path(path).name)  # PIL's messages repeat the full path
        raise ImageError(path, f"not a readable image ({type(error).__name__}: {reason})") from error


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
    epochs: int = 0             # the epochs the checkpoint completed
    global_step: int | None = None
    averaged: bool = False      # the weights are an average's (callbacks=ema)
    classes: tuple[str, ...] = CLASSES

    @classmethod
    def load(cls, ckpt_path: str | Path | None, device: str | torch.device = "cpu",
             config: DictConfig | None = None) -> Classifier:
        """The one way from a checkpoint to a model: with `config` (eval.py's, overrides applied) or
        else its run's saved config, else (a checkpoint moved out of its run) a MixedResNet of the
        width its first layer says."""
        ckpt_path = checkpoint_file(ckpt_path)
        run = run_dir_of(str(ckpt_path))
        config = config if config is not None else saved_config(run) if run is not None else None
        checkpoint = read_checkpoint(ckpt_path)
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        net = instantiate(config.model.net) if config is not None else MixedResNet(width=width_of(state, ckpt_path))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ConfigError(another_model(ckpt_path, state, config, error)) from error
        tta = str(config.model.get("tta", "none")) if config is not None else "none"
        device = device_of(device)
        # Lightning's weight averaging keeps the raw weights beside the average's
        return cls(net.to(device).eval(), tta, ckpt_path, config, device,
                   checkpoint.get("epoch", -1) + 1, checkpoint.get("global_step"), "current_model_state" in checkpoint)

    @property
    def classify_net(self) -> nn.Module:
        """The net as the run's validation and test classified with it (`model.tta`)."""
        return with_tta(self.net, self.tta)

    def probabilities(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Softmax over the classes for uint8 (N, 3, 32, 32) images: (N, 10), on the CPU."""
        return probabilities(self.classify_net, images, self.device, batch_size)

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


def device_of(device) -> torch.device:
    """`device` (predict.py's key) as a torch device that this machine has; a ConfigError naming it otherwise."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device={device!r}: not a device; use cpu, or cuda (cuda:N for the N-th GPU).") from error
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: no CUDA GPU is visible here; use device=cpu.")
    return found


def another_model(ckpt_path: Path, state: dict, config: DictConfig | None, error: RuntimeError) -> str:
    """Why a checkpoint's weights do not fit the net its config builds, and the fix."""
    width = OmegaConf.select(config, "model.net.width") if config is not None else None
    prep = state.get("prep.0.weight")  # the first conv: 64 x width output channels
    if width is not None and prep is not None and prep.ndim == 4 and prep.shape[0] != max(1, round(64 * width)):
        return (f"ckpt_path={str(ckpt_path)!r} holds a MixedResNet of width {prep.shape[0] / 64:g} ({prep.shape[0]} "
                f"channels in its first layer), and this config builds width {width}: give "
                f"model.net.width={prep.shape[0] / 64:g}.")
    return (f"ckpt_path={str(ckpt_path)!r} holds another model than its config builds: "
            + " ".join(str(error).strip().splitlines()[:2]))


def width_of(state: dict, ckpt_path: Path) -> float:
    """A MixedResNet's width, from its first conv's output channels (64 at width 1.0)."""
    prep = state.get("prep.0.weight")
    if prep is None or prep.ndim != 4:
        raise ConfigError(f"ckpt_path={str(ckpt_path)!r}: the checkpoint holds no MixedResNet and no run config is beside it.")
    return prep.shape[0] / 64
