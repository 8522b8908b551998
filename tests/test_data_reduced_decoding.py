"""Reduced-scale JPEG decoding in the streams: the crop and the random draws of the full decode, nearly
its pixels, bitwise its output where no reduction applies, and PNG / WebP untouched."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ov2_plugin.data.folder_source import FolderCaptions
from ov2_plugin.data.transforms import CropStep, center_crop_transform, eval_transform, train_transform
from ov2_plugin.image_decoding import _ORIENTATIONS, EXIF_ORIENTATION, JpegImage, decode_image, upright_box_to_stored

skimage_data = pytest.importorskip("skimage.data")
_INVERSE = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90}


def photo_jpeg(size: tuple[int, int], orientation: int = 1, photo: str = "astronaut", fmt: str = "JPEG") -> bytes:
    """A real photo resized to ``size`` (upright width, height), stored so that EXIF ``orientation`` turns it upright."""
    upright = Image.fromarray(getattr(skimage_data, photo)()).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    stored = upright
    if orientation != 1:
        method = _ORIENTATIONS[orientation][0]
        stored = upright.transpose(_INVERSE.get(method, method))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    stored.save(buf, fmt, quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_upright_box_maps_onto_the_same_pixels_of_the_stored_image(orientation):
    stored = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    method = _ORIENTATIONS.get(orientation, (None,))[0]
    upright = stored.transpose(method) if method is not None else stored
    box = (5, 7, 30, 19)
    stored_box = tuple(int(c) for c in upright_box_to_stored(box, orientation, stored.size))
    expected = np.asarray(upright.crop(box))
    cut = stored.crop(stored_box)
    assert np.array_equal(np.asarray(cut.transpose(method) if method is not None else cut), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(512, 512), (1024, 768), (333, 517)], ids=str)
def test_reduced_decode_takes_the_full_decodes_crop_box_with_nearly_its_pixels(size, orientation):
    data = photo_jpeg(size, orientation)
    step = CropStep.split(train_transform(84))
    full_image = decode_image(data)
    assert JpegImage(data).size == full_image.size == size  # the header's upright size: the draws see the same image
    scales = set()
    for seed in range(4):
        torch.manual_seed(seed)
        jpeg = JpegImage(data)
        params = step.params(*jpeg.size)
        torch.manual_seed(seed)
        assert params == step.op.make_params([full_image]), "the crop's draws differ from the full decode's"
        box = step.box(params, *jpeg.size)
        scales.add(jpeg.dct_scale(box, step.out_size))
        full = np.asarray(step.full(full_image, params), dtype=np.float64)
        reduced = np.asarray(jpeg.decode_region(box, step.out_size, step.resample), dtype=np.float64)
        assert reduced.shape == full.shape == (84, 84, 3)
        assert np.abs(full - reduced).mean() / 255 < 0.01
    assert scales - {1}, f"no reduced scale was used for {size}"


def test_the_scale_never_leaves_the_crop_fewer_pixels_than_the_output():
    jpeg = JpegImage(photo_jpeg((1024, 768)))
    assert jpeg.dct_scale((0, 0, 1024, 768), (84, 84)) == 8  # 128 x 96 >= 84 x 84
    assert jpeg.dct_scale((0, 0, 671, 768), (84, 84)) == 4  # 671 / 8 < 84
    assert jpeg.dct_scale((0, 0, 300, 300), (224, 224)) == 1
    assert jpeg.dct_scale((0, 0, 448, 448), (224, 224)) == 2


def folder(tmp_path, files: dict[str, bytes]):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "caption": "a photo."}) + "\n"
                                                     for n in files))
    return tmp_path


def stream(path, transform, reduced: bool) -> dict[str, torch.Tensor]:
    return {s["key"]: s["pixel_values"] for s in FolderCaptions(path, None, transform, seed=3, shuffle=False,
                                                                 reduced_decoding=reduced)}


def test_streams_with_and_without_reduced_decoding_agree_and_other_formats_are_untouched(tmp_path):
    files = {f"o{o}-{w}.jpg": photo_jpeg((w, h), o, "coffee") for o in (1, 6, 3) for w, h in ((1024, 683), (600, 400))}
    files |= {"small.jpg": photo_jpeg((100, 90)), "big.png": photo_jpeg((800, 600), fmt="PNG"),
              "big.webp": photo_jpeg((800, 600), fmt="WEBP")}
    path = folder(tmp_path, files)
    for transform in (train_transform(84), eval_transform(84)):
        full, reduced = stream(path, transform, False), stream(path, transform, True)
        assert full.keys() == reduced.keys() == files.keys()
        for key in files:
            if key.endswith((".png", ".webp")) or key == "small.jpg":  # full path, or no scale below 1 fits
                assert torch.equal(full[key], reduced[key]), key
            else:  # same draws (colour jitter, grayscale included): nearly the same normalised pixels
                diff = ((full[key] - reduced[key]) * torch.tensor([0.229, 0.224, 0.225])[:, None, None]).abs().mean()
                assert 0 < diff < 0.01, (key, diff)
    plain = center_crop_transform(84)  # not split at a crop: always the full path
    assert CropStep.split(plain) is None
    assert all(torch.equal(a, b) for a, b in zip(stream(path, plain, False).values(), stream(path, plain, True).values()))


def test_a_truncated_jpeg_is_counted_as_corrupt_on_the_reduced_path_too(tmp_path):
    good = photo_jpeg((1024, 768))
    path = folder(tmp_path, {"good.jpg": good, "cut.jpg": good[: len(good) // 2], "junk.jpg": b"\xff\xd8\xff junk"})
    ds = FolderCaptions(path, None, train_transform(84), seed=0, report_dir=str(tmp_path / "report"),
                        max_bad_fraction=1.0)
    assert [s["key"] for s in ds] == ["good.jpg"]
    counts = json.loads(next((tmp_path / "report" / "bad_samples").glob("*.json")).read_text())
    assert counts["good"] == 1 and counts["counts"] == {"corrupt_image": 2}
