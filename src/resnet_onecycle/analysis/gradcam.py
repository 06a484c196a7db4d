"""Grad-CAM (the grad-cam package) for the predicted class, in plain fp32, one small batch at a time."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from resnet_onecycle.analysis.predictions import evaluating
from resnet_onecycle.data.augment import normalize
from resnet_onecycle.errors import ConfigError


def find_layer(net: nn.Module, name: str) -> nn.Module:
    try:
        return net.get_submodule(name)
    except AttributeError as error:
        names = [n for n, _ in net.named_children()]
        raise ConfigError(f"analysis.gradcam_layer={name!r} is not a layer of the net; top-level layers: {names}.") from error


def gradcam_maps(net: nn.Module, images_uint8: torch.Tensor, targets: list[int], layer: str,
                 device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Maps (N, H, W) in [0, 1], for class `targets[i]` of image i. The net's mode, weights,
    gradients and device are as before; no GPU tensor outlives its batch."""
    grads_before = [p.grad for p in net.parameters()]
    maps = []
    # grad-cam needs gradients: no inference_mode and no autocast here
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        with evaluating(net, device):
            with GradCAM(model=net, target_layers=[find_layer(net, layer)]) as cam:
                for start in range(0, len(targets), batch_size):
                    x = normalize(images_uint8[start:start + batch_size].to(device)).requires_grad_(True)
                    batch_targets = [ClassifierOutputTarget(int(t)) for t in targets[start:start + batch_size]]
                    maps.append(cam(input_tensor=x, targets=batch_targets))  # numpy, on the host
    for parameter, grad in zip(net.parameters(), grads_before):
        parameter.grad = grad  # grad-cam leaves .grad filled
    return np.concatenate(maps) if maps else np.zeros((0, *images_uint8.shape[2:]), np.float32)


def overlays(images_uint8: torch.Tensor, maps: np.ndarray, image_weight: float = 0.5) -> list[np.ndarray]:
    rgb = images_uint8.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32) / 255
    return [show_cam_on_image(image, cam, use_rgb=True, image_weight=image_weight) for image, cam in zip(rgb, maps)]
