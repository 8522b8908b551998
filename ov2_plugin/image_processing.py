"""Image preprocessing that matches the release: squash-resize to a square, bilinear, ImageNet mean/std.

We configure transformers' own ``CLIPImageProcessor`` rather than writing a processor, so that
``LlavaProcessor``, lmms-eval and ``AutoImageProcessor`` handle it with no extra code.
"""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPImageProcessor

from .configuration import Ov2VisionConfig

BILINEAR = 2  # PIL.Image.Resampling.BILINEAR


def make_image_processor(config: Ov2VisionConfig, image_size: int | None = None) -> CLIPImageProcessor:
    size = image_size or config.image_size
    return CLIPImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=BILINEAR,
        do_center_crop=False,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        do_convert_rgb=True,
    )


def saved_image_processor(folder: str | Path, config: Ov2VisionConfig):
    """The processor saved with a checkpoint (its resolution; a converted release's own preprocessing),
    else ``make_image_processor(config)``."""
    if (Path(folder) / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor  # only when there is one: keeps the package import light

        return AutoImageProcessor.from_pretrained(folder)
    return make_image_processor(config)
