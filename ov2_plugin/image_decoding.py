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

``JpegImage`` decodes a region of a JPEG at a reduced scale (libjpeg's DCT scaling, PIL's ``draft``):
a 1024 px photo cropped to 84 px needs an eighth of its pixels, and decoding at 1/8 skips most of the
inverse DCT and colour conversion (bench/README.md, input pipeline). The result is what
``decode_image`` + crop + resize gives, from fewer source pixels, never fewer than the output has.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
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


JPEG_MAGIC = b"\xff\xd8\xff"
DCT_SCALES = (8, 4, 2)  # libjpeg decodes at 1/8, 1/4, 1/2 of the stored size (and at full size)
EXIF_ORIENTATION = 0x0112
Box = tuple[float, float, float, float]  # left, top, right, bottom, in pixels

# EXIF orientation -> (the transpose ``ImageOps.exif_transpose`` applies, upright point -> stored point
# for a stored image of width w and height h). Points are continuous coordinates (pixel edges).
_ORIENTATIONS = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, lambda u, v, w, h: (w - u, v)),
    3: (Image.Transpose.ROTATE_180, lambda u, v, w, h: (w - u, h - v)),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, lambda u, v, w, h: (u, h - v)),
    5: (Image.Transpose.TRANSPOSE, lambda u, v, w, h: (v, u)),
    6: (Image.Transpose.ROTATE_270, lambda u, v, w, h: (v, h - u)),
    7: (Image.Transpose.TRANSVERSE, lambda u, v, w, h: (w - v, h - u)),
    8: (Image.Transpose.ROTATE_90, lambda u, v, w, h: (w - v, u)),
}


def is_jpeg(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


class JpegImage:
    """A JPEG file's bytes, opened lazily: ``size`` (upright, EXIF applied) comes from the header alone;
    ``decode`` gives the whole image as ``decode_image`` does; ``decode_region`` a region of it, resized,
    decoded at the coarsest DCT scale that keeps at least the output's pixels across the region.

    Raises ``ImageDecodeError`` for bytes that are not a readable JPEG header (at construction) or data
    (when decoding), exactly where ``decode_image`` would.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        try:
            img = Image.open(io.BytesIO(data))
            self.orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        except Exception as err:
            raise ImageDecodeError(f"not a decodable image ({err.__class__.__name__}: {err})") from err
        self._img, self.stored_size = img, img.size
        # MPO: a phone's JPEG with a second picture appended; PIL decodes the first, as a JPEG
        self.reducible = img.format in ("JPEG", "MPO") and len(img.tile) == 1
        self.size = self.stored_size[::-1] if self.orientation in (5, 6, 7, 8) else self.stored_size

    def decode(self) -> Image.Image:
        """The whole image, as ``decode_image`` gives it."""
        self._img.close()
        return decode_image(self.data)

    def dct_scale(self, box: Box, size: Sequence[int]) -> int:
        """The largest DCT scale (8, 4, 2, else 1) at which ``box`` still spans ``size`` = (width, height) pixels."""
        if not self.reducible:
            return 1
        width, height = box[2] - box[0], box[3] - box[1]
        return next((s for s in DCT_SCALES if width / s >= size[0] and height / s >= size[1]), 1)

    def decode_region(self, box: Box, size: Sequence[int], resample: int = Image.Resampling.BILINEAR) -> Image.Image:
        """``box`` (upright full-size pixels) resized to ``size`` = (width, height), upright RGB, decoded at
        ``dct_scale``.

        The box is mapped into the stored orientation and onto the reduced grid (stored pixel x lands at
        x / scale), resized there with PIL's sub-pixel ``box``, then turned upright: the crop and the
        output are the full decode's, only the source pixels are fewer.
        """
        scale = self.dct_scale(box, size)
        w, h = self.stored_size
        stored = upright_box_to_stored(box, self.orientation, self.stored_size)
        turned = self.orientation in (5, 6, 7, 8)
        img = self._img
        try:
            with img:
                if scale > 1:
                    # PIL takes the largest scale <= min(w // request_w, h // request_h): exactly ``scale`` here
                    drafted = img.draft(img.mode, (w // scale, h // scale))
                    scale = w / drafted[1][2] if drafted else 1
                _load_whole(img)
                rgb = img.convert("RGB")
        except Exception as err:
            raise ImageDecodeError(f"not a decodable image ({err.__class__.__name__}: {err})") from err
        out = rgb.resize((int(size[1]), int(size[0])) if turned else (int(size[0]), int(size[1])), resample,
                         box=tuple(c / scale for c in stored))
        method = _ORIENTATIONS.get(self.orientation, (None,))[0]
        return out.transpose(method) if method is not None else out


def upright_box_to_stored(box: Box, orientation: int, stored_size: tuple[int, int]) -> Box:
    """A box in the upright image -> the same pixels' box in the stored (un-rotated) one."""
    _, to_stored = _ORIENTATIONS.get(orientation, (None, None))
    if to_stored is None:
        return box
    (x0, y0), (x1, y1) = (to_stored(box[0], box[1], *stored_size), to_stored(box[2], box[3], *stored_size))
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


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


__all__ = ["ImageDecodeError", "ImageSource", "JpegImage", "decode_image", "decode_image_bytes", "is_jpeg",
           "upright_box_to_stored"]
