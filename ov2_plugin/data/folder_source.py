"""An image folder with a captions file (JSONL or CSV) naming each image.

The captions file follows the Hugging Face ``imagefolder`` convention: one row per image
with ``file_name`` (path relative to the folder) and ``caption`` (or ``text``). Images in the
folder that the file does not caption are counted as missing captions, not silently dropped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .json_source import JsonCaptions
from .streaming import StreamingCaptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
NAME_COLUMNS = ("file_name", "filename", "image")
CAPTION_COLUMNS = ("caption", "text")


def read_caption_table(path: Path) -> dict[str, str]:
    """``relative file name -> caption`` from a JSONL or CSV captions file."""
    if not path.is_file():
        raise FileNotFoundError(f"Captions file {path} not found; pass --captions_file (JSONL or CSV with file_name, caption).")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    table = {}
    for row in rows:
        name = next((row[c] for c in NAME_COLUMNS if row.get(c)), None)
        if name is None:
            raise ValueError(f"{path}: a row has none of the columns {NAME_COLUMNS}: {row}")
        table[name] = next((row[c] for c in CAPTION_COLUMNS if row.get(c) is not None), None)
    return table


class FolderCaptions(JsonCaptions):
    """Every image under ``folder`` plus every row of ``captions_file``, as records (read as ``JsonCaptions`` reads its own)."""

    def __init__(self, folder: str | Path, captions_file: str | Path | None, transform, **kwargs) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"Image folder {folder} not found; pass --image_folder.")
        table = read_caption_table(Path(captions_file) if captions_file else folder / "metadata.jsonl")
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        names |= set(table)
        StreamingCaptions.__init__(self, transform, **kwargs)
        self.records = [{"image": n, "caption": table.get(n)} for n in sorted(names)]
        self.image_root, self.caption_key = folder, None
