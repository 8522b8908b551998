"""An image folder with a captions file (JSONL or CSV) naming each image.

The captions file follows the Hugging Face ``imagefolder`` convention: one row per image
with ``file_name`` (path relative to the folder) and ``caption`` (or ``text``). Images in the
folder that the file does not caption are counted as missing captions, not silently dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from .bad_samples import BadSampleCounter
from .json_records import RecordFile
from .streaming import RawSample, StreamingCaptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
NAME_COLUMNS = ("file_name", "filename", "image")
CAPTION_COLUMNS = ("caption", "text")


def read_caption_table(path: Path) -> dict[str, str]:
    """``relative file name -> caption`` from a JSONL or CSV captions file (a folder's table: held in memory)."""
    if not path.is_file():
        raise FileNotFoundError(f"Captions file {path} not found; pass --captions_file (JSONL or CSV with file_name, caption).")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(f"{path}:{i + 2}", row) for i, row in enumerate(csv.DictReader(f))]
    else:
        records = RecordFile(path)
        rows = []
        for i in range(len(records)):
            try:
                row = records.get(i)
            except ValueError as err:
                raise ValueError(f"{records.where(i)} is not JSON ({err}); fix or delete that line.") from err
            if row is not None:
                rows.append((records.where(i), row))
    table = {}
    for where, row in rows:
        name = next((row[c] for c in NAME_COLUMNS if row.get(c)), None) if isinstance(row, dict) else None
        if name is None:
            raise ValueError(f"{where}: a row has none of the columns {NAME_COLUMNS}: {row}")
        table[name] = next((row[c] for c in CAPTION_COLUMNS if row.get(c) is not None), None)
    return table


class FolderCaptions(StreamingCaptions):
    """Every image under ``folder`` plus every row of ``captions_file``, sorted by name."""

    def __init__(self, folder: str | Path, captions_file: str | Path | None, transform, **kwargs) -> None:
        super().__init__(transform, **kwargs)
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"Image folder {folder} not found; pass --image_folder.")
        self.table = read_caption_table(Path(captions_file) if captions_file else folder / "metadata.jsonl")
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        self.names, self.folder = sorted(names | set(self.table)), folder

    def describe(self) -> str:
        return str(self.folder)

    def units(self) -> range:
        return range(len(self.names))

    def read(self, units: Sequence[int], first_offset: int, counter: BadSampleCounter) -> Iterator[tuple[int, int, RawSample]]:
        for pos, i in enumerate(units):
            name = self.names[int(i)]
            yield pos, 0, RawSample(key=name, caption=self.table.get(name), path=self.folder / name)
