"""Batched augmentation: each image gets its own crop, flip and cutout; each can be switched off."""

import pytest
import torch
import torch.nn.functional as F

from resnet_onecycle.data.augment import augment, draw, normalize


def batch(n=64):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


def reference(images, choices, padding, cutout_size, mode):
    """The same augmentation written plainly, one image at a time: normalize, pad, crop, flip, cutout."""
    x = normalize(images)
    padded = F.pad(x, (padding,) * 4, mode=mode) if padding else x  # constant pads with 0: the mean
    out = []
    for i, (dy, dx, flipped, y0, x0) in enumerate(choices[:, :, 0].T.tolist()):
        image = padded[i, :, dy:dy + 32, dx:dx + 32]
        image = (image.flip(2) if flipped else image).clone()
        image[:, y0:y0 + cutout_size, x0:x0 + cutout_size] = 0
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("padding, flip, cutout_size", [(4, True, 8), (2, False, 5), (0, True, 0)])
def test_augment_equals_pad_crop_flip_cutout_done_image_by_image(mode, padding, flip, cutout_size):
    images = batch(32)
    torch.manual_seed(1)
    choices = draw(32, 32, 32, padding, flip, cutout_size, images.device)
    torch.manual_seed(1)  # augment draws the same choices
    out = augment(images, padding, flip, cutout_size, mode)
    assert torch.equal(out, reference(images, choices, padding, cutout_size, mode))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


def test_each_choice_is_uniform_over_its_range_and_off_means_zero():
    torch.manual_seed(0)
    n = 45_000
    dy, dx, flipped, y0, x0 = draw(n, 32, 32, 4, True, 8, torch.device("cpu"))[:, :, 0]
    for values, size in ((dy, 9), (dx, 9), (flipped, 2), (y0, 25), (x0, 25)):
        counts = torch.bincount(values, minlength=size)
        assert len(counts) == size  # nothing outside [0, size)
        expected = n / size
        assert ((counts - expected).abs() < 5 * expected ** 0.5).all(), counts  # within 5 standard deviations
    off = draw(1000, 32, 32, 0, False, 0, torch.device("cpu"))
    assert not off.any()
    assert (dy != dx).float().mean() > 0.8  # the two offsets are drawn independently


def test_crop_is_a_window_of_the_padded_image_and_varies_per_image():
    torch.manual_seed(0)
    images = batch()
    out = augment(images, 4, False, 0, "reflect")
    padded = F.pad(normalize(images), (4, 4, 4, 4), mode="reflect")
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
    out, plain = augment(images, 0, True, 0, "reflect"), normalize(images)
    same = [torch.equal(o, i) for o, i in zip(out, plain)]
    mirrored = [torch.equal(o, i.flip(2)) for o, i in zip(out, plain)]
    assert all(s != m for s, m in zip(same, mirrored))
    assert 150 < sum(mirrored) < 250


def test_cutout_zeroes_one_square_inside_each_image():
    torch.manual_seed(0)
    images = batch()
    plain = normalize(images)
    assert (plain != 0).all()  # no pixel of its own equals the mean exactly
    out = augment(images, 0, False, 8, "reflect")
    corners = set()
    for o, p in zip(out, plain):
        zero = (o == 0).all(0)
        assert zero.sum() == 64 and torch.equal(o[:, ~zero], p[:, ~zero])
        rows, cols = zero.nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 30


def test_constant_padding_shows_the_mean():
    torch.manual_seed(0)
    out = augment(batch(), 4, False, 0, "constant")
    zero_rows = (out == 0).all(1).all(2).sum(1)  # rows of padding per image: 0..4 at top or bottom
    assert zero_rows.max() > 0 and zero_rows.max() <= 4 and (zero_rows == 0).any()


def test_each_augmentation_switches_off():
    images = batch()
    assert torch.equal(augment(images, crop_padding=0, flip=False, cutout_size=0, padding_mode="reflect"), normalize(images))


def test_full_augmentation_keeps_shape_and_device():
    images = batch()
    out = augment(images, crop_padding=4, flip=True, cutout_size=8, padding_mode="constant")
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert not torch.equal(out, normalize(images))


def test_normalize_maps_uint8_to_standardised_floats():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images)
    assert x.dtype == torch.float32
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(x, (images / 255 - mean) / std, atol=1e-5)
