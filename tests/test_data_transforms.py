"""The release's training augmentation and the two evaluation transforms."""

from __future__ import annotations

import torch
from PIL import Image

from ov2_plugin.data.transforms import IMAGENET_MEAN, center_crop_transform, eval_transform, train_transform


def test_inception_augmentation_is_random_and_normalised():
    img = Image.new("RGB", (96, 64), (200, 30, 30))
    img.paste((30, 30, 200), (48, 0, 96, 64))
    t = train_transform(32, min_area=0.2, color_jitter=0.4, grayscale_p=0.5)
    torch.manual_seed(0)
    outs = [t(img) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # crops and colours vary


def test_center_crop_keeps_the_middle_and_squash_keeps_everything():
    img = Image.new("RGB", (96, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))  # blue middle third
    crop, squash = center_crop_transform(32)(img), eval_transform(32)(img)
    blue = (1.0 - IMAGENET_MEAN[2]) / 0.225
    assert torch.allclose(crop[2], torch.full((32, 32), blue), atol=0.05)  # only the blue square remains
    assert squash[0, :, 0].mean() > 1.5 and squash[2, :, 16].mean() > 1.5  # red left edge, blue middle
