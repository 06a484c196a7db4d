"""Batched augmentation: each image gets its own crop, flip and cutout; each can be switched off."""

import torch
import torch.nn.functional as F

from resnet_onecycle.data.augment import augment, cutout, normalize, random_crop, random_flip


def batch(n=64):
    return torch.randn(n, 3, 32, 32)


def test_crop_is_a_window_of_the_padded_image_and_varies_per_image():
    torch.manual_seed(0)
    images = batch()
    out = random_crop(images, 4, "reflect")
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 20  # 81 possible offsets, 64 images


def test_flip_mirrors_about_half_the_images():
    torch.manual_seed(0)
    images = batch(400)
    out = random_flip(images)
    same = [torch.equal(o, i) for o, i in zip(out, images)]
    mirrored = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    assert all(s != m for s, m in zip(same, mirrored))
    assert 150 < sum(mirrored) < 250


def test_cutout_zeroes_one_square_inside_each_image():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 32, 32) + 1  # no zeros of its own
    out = cutout(images, 8)
    corners = set()
    for o in out:
        zero = (o == 0).all(0)
        assert zero.sum() == 64 and (o[:, ~zero] > 0).all()
        rows, cols = zero.nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 30


def test_each_augmentation_switches_off():
    images = batch()
    assert torch.equal(augment(images, crop_padding=0, flip=False, cutout_size=0, padding_mode="reflect"), images)


def test_full_augmentation_keeps_shape_dtype_and_device():
    images = batch()
    out = augment(images, crop_padding=4, flip=True, cutout_size=8, padding_mode="constant")
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert not torch.equal(out, images)


def test_normalize_maps_uint8_to_standardised_floats():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images)
    assert x.dtype == torch.float32
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(x, (images / 255 - mean) / std, atol=1e-5)
