"""Image transforms for pretraining, as in the release: inception crop + colour jitter for
training, squash-resize for evaluation; ImageNet mean/std for both."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Resize to a square (the release's ``resize_mode: squash``), bilinear, then normalise."""
    return v2.Compose(
        [v2.RGB(), v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
        + _to_normalized_tensor(mean, std)
    )


def train_transform(
    image_size: int,
    min_area: float = 0.4,
    color_jitter: float = 0.4,
    grayscale_p: float = 0.2,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> v2.Compose:
    """Inception-style random resized crop with a minimum area, colour jitter, random grayscale.

    Setting ``min_area=1.0`` and the two probabilities to 0 gives the evaluation transform, which
    is what the built-in scenes use: their captions name colours and positions.
    """
    ops = [v2.RGB()]
    if min_area < 1.0:
        ops.append(v2.RandomResizedCrop(image_size, scale=(min_area, 1.0), antialias=True))
    else:
        ops.append(v2.Resize((image_size, image_size), antialias=True))
    if color_jitter > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(color_jitter, color_jitter, color_jitter, 0.1)], p=0.8))
    if grayscale_p > 0:
        ops.append(v2.RandomGrayscale(grayscale_p))
    return v2.Compose(ops + _to_normalized_tensor(mean, std))


def center_crop_transform(image_size: int, resize_ratio: float = 1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Resize the shorter side to ``image_size / resize_ratio`` and take the centre square.

    The classic evaluation transform (ImageNet linear probes, zero-shot): keeps the aspect
    ratio, unlike ``eval_transform``'s squash, at the cost of the image's borders.
    """
    return v2.Compose(
        [v2.RGB(), v2.Resize(round(image_size / resize_ratio), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
         v2.CenterCrop(image_size)]
        + _to_normalized_tensor(mean, std)
    )
