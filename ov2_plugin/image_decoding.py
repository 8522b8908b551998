"""One image decoder for every path (pretraining streams, ``ov2 caption``, LLaVA data, evaluation).

Web data holds images in modes a plain ``Image.convert("RGB")`` gets wrong, silently:

| input                              | ``convert("RGB")`` gives        | ``decode_image`` gives                 |
|------------------------------------|---------------------------------|----------------------------------------|
| JPEG with EXIF orientation 5-8     | the picture on its side         | upright (``ImageOps.exif_transpose``)  |
| RGBA / LA / palette + transparency | transparent pixels black        | composited on white (transformers' ``convert_to_rgb``) |
| 16-bit gray PNG (``I;16*``, ``I``) | clipped to 255: almost white    | scaled to 8 bit (65535 -> 255)         |
| 32-bit float (``F``)               | clipped: mostly white or black  | [0, 1] scaled to 8 bit, else its own min..max |
| CMYK JPEG                          | fine (PIL's conversion)         | the same                               |

Only PIL, numpy and transformers' image utilities are used, so the core stays light.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image

# Modes whose samples exceed 8 bits; PIL's own conversion to "L"/"RGB" clips them instead of scaling.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, not an image at all)."""


def decode_image(source: ImageSource) -> Image.Image:
    """Any image source -> a fully decoded, upright, 8-bit RGB ``PIL.Image`` (H x W x 3).

    ``source`` is a path, the file's bytes, an open binary file, or a ``PIL.Image`` already
    opened (e.g. a ``datasets`` Image column). A missing path raises ``FileNotFoundError``
    (an ``OSError``); anything that cannot be decoded raises ``ImageDecodeError``.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Image {str(path)!r} does not exist; check the path.")
        source = path.read_bytes()
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as img:
            _load_whole(img)
            return _to_rgb(img)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise ImageDecodeError(f"not a decodable image ({err.__class__.__name__}: {err})") from err


def _load_whole(img: Image.Image) -> None:
    """Decode now, so a truncated file fails here and not later in a transform.

    PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` would fill a truncated file's missing
    rows with grey instead of failing, and importing lmms-eval switches it on; we refuse truncated
    files whatever the flag says, so a cut download is counted as broken, not trained on.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image_bytes(data: bytes) -> Image.Image:
    """``decode_image`` for the bytes of an image file (a tar member, a parquet cell)."""
    return decode_image(bytes(data))


def _to_rgb(img: Image.Image) -> Image.Image:
    from transformers.image_transforms import convert_to_rgb

    img = ImageOps.exif_transpose(img)  # PIL's own; returns a copy, so the caller's image is untouched
    if img.mode in _WIDE_INTEGER_MODES or img.mode == "F":
        # Added to transformers' ``convert_to_rgb``: it hands these modes to PIL's ``convert``,
        # which clips every sample above 255 instead of scaling the range down.
        img = _to_8bit_gray(img)
    # Alpha and palette transparency composited on white, everything else PIL's conversion
    # (CMYK, YCbCr, 1-bit, L, P without transparency).
    return Image.fromarray(convert_to_rgb(img, return_numpy=True)) if _has_alpha(img) else img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "a" in img.mode or img.info.get("transparency") is not None


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit or 32-bit single-channel image -> mode ``L``, by its nominal range, not clipping.

    ``I;16*``: 0..65535. ``I`` (32-bit integers; PIL's mode for 16-bit PNG/TIFF in older Pillow
    and for int32 TIFF): 0..65535 when its values fit, else its own min..max. ``F``: 0..1 when
    its values fit (the usual float convention), else its own min..max.
    """
    values = np.asarray(img).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F":
        full = (0.0, 1.0) if low >= 0.0 and high <= 1.0 else (low, high)
    elif img.mode == "I" and (low < 0 or high > 65535):
        full = (low, high)
    else:
        full = (0.0, 65535.0)
    span = full[1] - full[0] or 1.0
    scaled = np.clip((values - full[0]) / span * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled)  # uint8 (H, W) -> mode L


__all__ = ["ImageDecodeError", "ImageSource", "decode_image", "decode_image_bytes"]
