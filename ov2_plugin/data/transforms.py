"""Image transforms for pretraining, as in the release: inception crop + colour jitter for
training, squash-resize for evaluation; ImageNet mean/std for both.

``CropStep.split`` cuts such a transform at its crop, so a stream can draw the crop on the
image's size (from the file's header), decode only what the crop needs (``image_decoding.JpegImage``)
and run the rest of the transform on the result, with the same random draws as the whole transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
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


_PIL_RESAMPLE = {
    v2.InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    v2.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    v2.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    v2.InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class CropStep:
    """A transform's first geometric step (``RandomResizedCrop``, or a squash ``Resize`` to (h, w)) and the
    rest of it. ``params`` draws the step's random numbers for an image of a given size exactly as the
    step itself would on that image; ``full`` applies the step with them (what the transform does);
    ``box`` and ``out_size`` say which region it takes and what size it gives, for a reduced decode."""

    op: v2.Transform
    rest: v2.Compose

    @classmethod
    def split(cls, transform) -> CropStep | None:
        """The step and the rest for a ``v2.Compose`` that starts (after ``RGB``) with one, else None."""
        ops = list(getattr(transform, "transforms", []))
        while ops and isinstance(ops[0], v2.RGB):  # a no-op on the decoders' RGB output
            ops.pop(0)
        op = ops[0] if ops else None
        squash = isinstance(op, v2.Resize) and len(op.size) == 2 and op.max_size is None  # [size] keeps the aspect
        if not (squash or type(op) is v2.RandomResizedCrop) or _resample(op.interpolation) is None:
            return None
        return cls(op, v2.Compose(ops[1:]))

    def params(self, width: int, height: int) -> dict:
        """The step's random draws for a ``width`` x ``height`` image (torch's global generator)."""
        return self.op.make_params([torch.empty(()).expand(3, height, width)])  # a size without pixels

    def full(self, image: Image.Image, params: dict) -> Image.Image:
        return self.op.transform(image, params)

    def box(self, params: dict, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the region the step resizes."""
        if "top" in params:
            return (params["left"], params["top"], params["left"] + params["width"], params["top"] + params["height"])
        return (0, 0, width, height)

    @property
    def out_size(self) -> tuple[int, int]:
        """(width, height) of the step's output."""
        h, w = self.op.size  # both steps keep (height, width)
        return (w, h)

    @property
    def resample(self) -> int:
        return _resample(self.op.interpolation)


def _resample(interpolation) -> int | None:
    """PIL's resampling filter for a torchvision interpolation (an enum, or its name as some transforms keep it)."""
    try:
        return _PIL_RESAMPLE.get(v2.InterpolationMode(interpolation))
    except ValueError:
        return None
