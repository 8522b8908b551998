"""Real photos (scikit-image's ``skimage.data``) saved in the modes web data comes in, and checks of
what a correct decoder must give for each. Shared by the tests of every path that decodes images.

Each entry of ``write_hard_photos`` is a file plus ``check_decoded(name, rgb)``, which asserts on
the decoded (H, W, 3) uint8 array; a plain ``Image.convert("RGB")`` fails every check but CMYK's.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

skimage_data = __import__("pytest").importorskip("skimage.data")

CORNER = 24  # transparent squares of this many pixels in each corner of the alpha / palette photos
HARD_PHOTOS = ("gray16.png", "rgba.png", "palette.png", "exif6.jpg", "cmyk.jpg", "float32.tif")
EXIF_ORIENTATION = 0x0112


def _corners(mask: np.ndarray) -> np.ndarray:
    mask[:CORNER, :CORNER] = mask[:CORNER, -CORNER:] = mask[-CORNER:, :CORNER] = mask[-CORNER:, -CORNER:] = True
    return mask


def corner_mask(shape: tuple[int, int]) -> np.ndarray:
    return _corners(np.zeros(shape, dtype=bool))


def encode(name: str) -> bytes:
    """The bytes of hard photo ``name`` (one of ``HARD_PHOTOS``)."""
    buf = io.BytesIO()
    if name == "gray16.png":  # the camera man, 8 bit scaled to the full 16-bit range
        Image.fromarray(skimage_data.camera().astype(np.uint16) * 257).save(buf, "PNG")
    elif name == "rgba.png":  # the astronaut, fully transparent corners
        rgba = np.dstack([skimage_data.astronaut(), np.full((512, 512), 255, np.uint8)])
        rgba[corner_mask((512, 512)), 3] = 0
        Image.fromarray(rgba).save(buf, "PNG")
    elif name == "palette.png":  # the cat quantised to 200 colours; index 255 transparent, in the corners
        cat = Image.fromarray(skimage_data.chelsea()).quantize(200)
        indices = np.asarray(cat).copy()
        indices[corner_mask(indices.shape)] = 255
        pal = Image.frombytes("P", cat.size, indices.tobytes())
        palette = cat.getpalette()[: 200 * 3]
        pal.putpalette(palette + [0, 0, 0] * (256 - len(palette) // 3))
        pal.save(buf, "PNG", transparency=255)
    elif name == "exif6.jpg":  # the cat stored sideways with EXIF orientation 6, as phones save it
        stored = Image.fromarray(skimage_data.chelsea()).transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    elif name == "cmyk.jpg":  # the coffee cup in CMYK, as print-ready files are
        Image.fromarray(skimage_data.coffee()).convert("CMYK").save(buf, "JPEG", quality=95)
    elif name == "float32.tif":  # the camera man as 32-bit floats in [0, 1]
        Image.fromarray(skimage_data.camera().astype(np.float32) / 255.0).save(buf, "TIFF")
    else:
        raise KeyError(name)
    return buf.getvalue()


def write_hard_photos(folder: str | Path, names=HARD_PHOTOS) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        paths[name] = folder / name
        paths[name].write_bytes(encode(name))
    return paths


def check_decoded(name: str, rgb: np.ndarray) -> None:
    """Assert that ``rgb`` (H, W, 3) uint8 is what ``name`` shows, upright, on white, in 8 bit."""
    rgb = np.asarray(rgb)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (name, rgb.dtype, rgb.shape)
    if name in ("gray16.png", "float32.tif"):
        source = skimage_data.camera().astype(np.float64)
        assert rgb.shape[:2] == source.shape
        assert abs(rgb[..., 0].mean() - source.mean()) < 1.0, f"{name}: mean {rgb[..., 0].mean():.1f} vs {source.mean():.1f}"
        assert np.abs(rgb[..., 0] - source).max() <= 1
    elif name in ("rgba.png", "palette.png"):
        source = skimage_data.astronaut() if name == "rgba.png" else skimage_data.chelsea()
        corners = corner_mask(source.shape[:2])
        assert rgb.shape == source.shape
        assert (rgb[corners] == 255).all(), f"{name}: transparent corners are not white"
        tolerance = 1 if name == "rgba.png" else 12  # palette: 200-colour quantisation
        assert np.abs(rgb[~corners].astype(int) - source[~corners]).mean() < tolerance
    elif name == "exif6.jpg":
        source = skimage_data.chelsea()
        assert rgb.shape == source.shape, f"{name}: decoded {rgb.shape[:2]}, upright is {source.shape[:2]}"
        assert np.abs(rgb.astype(int) - source).mean() < 4
    elif name == "cmyk.jpg":
        source = skimage_data.coffee()
        assert rgb.shape == source.shape
        assert np.abs(rgb.astype(int) - source).mean() < 6
    else:
        raise KeyError(name)
