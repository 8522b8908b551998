"""Write built-in scenes in the img2dataset layouts: tar shards, LLaVA JSON, image folder + captions.

Used by the tests and the input-pipeline benchmark (no downloads allowed), and handy to try
``ov2 pretrain --data webdataset`` before pointing it at real shards. The tar layout is
img2dataset's: ``{key}.jpg``, ``{key}.txt`` (the caption) and ``{key}.json`` (metadata; here
also a second caption under ``alt_caption``, as Recap-DataComp stores several per image).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from .scenes import make_scene


def jpeg_bytes(image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def alt_caption(index: int) -> str:
    """The second caption stored in each sample's ``.json``: different text, so tests can tell which was used."""
    return f"alternative caption number {index}."


def write_scene_shards(out_dir: str | Path, num_shards: int, samples_per_shard: int, image_size: int = 64,
                       seed: int = 0, corrupt_every: int = 0) -> list[Path]:
    """Shards ``out_dir/{00000..}.tar``; every ``corrupt_every``-th image is garbage bytes (0: none)."""
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        path = out / f"{shard:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for j in range(samples_per_shard):
                index = shard * samples_per_shard + j
                scene = make_scene(seed, index)
                corrupt = corrupt_every and index % corrupt_every == corrupt_every - 1
                image = b"this is not a jpeg" if corrupt else jpeg_bytes(scene.render(image_size))
                meta = {"key": f"{index:09d}", "alt_caption": alt_caption(index), "width": image_size}
                sink.write({"__key__": f"{index:09d}", "jpg": image, "txt": scene.caption, "json": json.dumps(meta)})
        paths.append(path)
    return paths


def truncate_file(path: str | Path, keep_fraction: float = 0.5) -> None:
    """Cut a file short, as an interrupted download leaves it."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def write_scene_json(out_dir: str | Path, num_samples: int, image_size: int = 64, seed: int = 0,
                     conversations: bool = True) -> Path:
    """``out_dir/images/*.jpg`` and ``out_dir/captions.json`` in LLaVA's pretraining format."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(num_samples):
        scene = make_scene(seed, i)
        name = f"images/{i:06d}.jpg"
        (out / name).write_bytes(jpeg_bytes(scene.render(image_size)))
        if conversations:
            turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": scene.caption}]
            records.append({"id": str(i), "image": name, "conversations": turns})
        else:
            records.append({"id": str(i), "image": name, "caption": scene.caption})
    path = out / "captions.json"
    path.write_text(json.dumps(records))
    return path
