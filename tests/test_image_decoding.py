"""Real photos in the modes web data comes in decode upright, on white and in 8 bit, through every path."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from photo_fixtures import HARD_PHOTOS, check_decoded, encode, write_hard_photos
from PIL import Image

from ov2_plugin.data.bad_samples import collect_bad_samples
from ov2_plugin.data.folder_source import FolderCaptions
from ov2_plugin.data.json_source import JsonCaptions
from ov2_plugin.image_decoding import ImageDecodeError, decode_image, decode_image_bytes
from ov2_plugin.loading import load_image


def as_array(img) -> torch.Tensor:
    """A 'transform' that keeps the decoded pixels, so the streams' output can be checked exactly."""
    return torch.from_numpy(np.array(img))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_hard_photos(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize("name", HARD_PHOTOS)
def test_decode_image_from_a_path_bytes_a_file_and_an_open_image(photos, name):
    data = photos[name].read_bytes()
    for source in (photos[name], str(photos[name]), data, io.BytesIO(data), Image.open(io.BytesIO(data))):
        check_decoded(name, np.asarray(decode_image(source)))
    check_decoded(name, np.asarray(decode_image_bytes(data)))
    check_decoded(name, np.asarray(load_image(photos[name])))


def test_plain_convert_gets_the_hard_modes_wrong_so_the_checks_can_fail():
    for name in ("gray16.png", "rgba.png", "palette.png", "exif6.jpg", "float32.tif"):
        with pytest.raises(AssertionError):
            check_decoded(name, np.asarray(Image.open(io.BytesIO(encode(name))).convert("RGB")))


def test_broken_and_missing_images_raise_clear_errors(tmp_path, photos):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photos["exif6.jpg"].read_bytes()[:4000])
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_image(cut)
    with pytest.raises(ImageDecodeError):
        decode_image(b"<html>not an image</html>")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="corrupt or not an image"):
        load_image(cut)


def test_truncated_files_are_refused_even_when_pil_is_told_to_accept_them(tmp_path, photos, monkeypatch):
    """Importing lmms-eval sets PIL's process-wide LOAD_TRUNCATED_IMAGES; a cut file must still fail."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photos["exif6.jpg"].read_bytes()[:4000])
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was


def test_json_and_folder_streams_decode_the_hard_photos(photos, tmp_path):
    folder = next(iter(photos.values())).parent
    records = [{"image": name, "caption": name} for name in HARD_PHOTOS]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": n, "caption": n}) for n in HARD_PHOTOS))
    for ds in (JsonCaptions(tmp_path / "c.jsonl", folder, as_array, shuffle=False, report_dir=str(tmp_path / "j")),
               FolderCaptions(folder, None, as_array, shuffle=False, report_dir=str(tmp_path / "f"))):
        seen = {s["caption"]: s["pixel_values"].numpy() for s in ds}
        assert sorted(seen) == sorted(HARD_PHOTOS)
        for name, rgb in seen.items():
            check_decoded(name, rgb)
    assert collect_bad_samples(tmp_path / "j")["bad_samples"] == collect_bad_samples(tmp_path / "f")["bad_samples"] == 0


def test_webdataset_stream_decodes_the_hard_photos(photos, tmp_path):
    wds = pytest.importorskip("webdataset")
    from ov2_plugin.data.webdataset_source import WebDatasetCaptions

    names = [n for n in HARD_PHOTOS if not n.endswith(".tif")]  # img2dataset writes jpg/png/webp
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i, name in enumerate(names):
            sink.write({"__key__": f"{i:05d}", name.rsplit(".", 1)[1]: photos[name].read_bytes(), "txt": name})
    ds = WebDatasetCaptions(str(tmp_path / "00000.tar"), as_array, shuffle=False)
    seen = {s["caption"]: s["pixel_values"].numpy() for s in ds}
    assert sorted(seen) == sorted(names)
    for name, rgb in seen.items():
        check_decoded(name, rgb)
