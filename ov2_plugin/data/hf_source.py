"""Hugging Face ``datasets`` as a pretraining source: a saved dataset folder or local data files.

- A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` opens with
  ``load_from_disk`` (memory-mapped Arrow: nothing is read into memory until a row is used).
- Parquet, Arrow, JSON/JSONL or CSV files (a file, a folder of them, or a glob) open with
  ``load_dataset(<format>, data_files=...)``; by default that builds the memory-mapped Arrow cache
  once, and with ``streaming`` it reads the files as they are (for data too big to copy).

Rows are the unit split across ranks and loader workers (map-style, so a resume jumps to a row
index); in streaming mode the dataset's shards (its files) are. The image column may hold a
``datasets.Image`` (read undecoded, ``decode=False``, so ``decode_image`` decodes and a broken
image is counted rather than raised), raw bytes, or a path relative to the data folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from .bad_samples import MISSING_IMAGE, BadSampleCounter
from .streaming import RawSample, StreamingCaptions

FILE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
CAPTION_COLUMNS = ("caption", "text")


def open_hf_dataset(path: str, split: str = "train", streaming: bool = False):
    """``load_from_disk`` for a saved dataset folder, ``load_dataset`` for data files; a clear error otherwise."""
    import datasets

    p = Path(path)
    if p.is_dir() and any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path} has the splits {sorted(ds)}, not {split!r}; pass --hf_split.")
            ds = ds[split]
        return ds.to_iterable_dataset(num_shards=max(1, min(len(ds), 64))) if streaming else ds
    files = sorted(str(f) for f in p.rglob("*") if f.suffix in FILE_FORMATS) if p.is_dir() else [str(path)]
    if p.is_dir() and not files:
        raise FileNotFoundError(f"{path} is neither a saved dataset (load_from_disk) nor a folder of "
                                f"{', '.join(FILE_FORMATS)} files; pass --hf_path.")
    formats = {FILE_FORMATS.get(Path(f).suffix) for f in files}
    if len(formats) != 1 or None in formats:
        raise ValueError(f"--hf_path {path}: use files of one format ({', '.join(FILE_FORMATS)}), found {sorted(map(str, formats))}.")
    return datasets.load_dataset(formats.pop(), data_files=files, split="train", streaming=streaming)


class HfCaptions(StreamingCaptions):
    """Captioned images from a Hugging Face dataset; ``image_column`` and ``caption_column`` name the columns."""

    def __init__(self, path: str | Path, transform, *, image_column: str = "image", caption_column: str | None = None,
                 split: str = "train", streaming: bool = False, **kwargs) -> None:
        super().__init__(transform, **kwargs)
        import datasets

        self.path, self.streaming = str(path), streaming
        ds = open_hf_dataset(self.path, split, streaming)
        columns = list(ds.column_names or [])
        caption_column = caption_column or next((c for c in CAPTION_COLUMNS if c in columns), None)
        for flag, column in (("--image_column", image_column), ("--caption_column", caption_column)):
            if column not in columns:
                raise ValueError(f"{path} has no column {column!r} (columns: {columns}); pass {flag}.")
        ds = ds.select_columns([image_column, caption_column])
        if isinstance((ds.features or {}).get(image_column), datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.dataset, self.image_column, self.caption_column = ds, image_column, caption_column
        self.root = Path(path) if Path(path).is_dir() else Path(path).parent

    def describe(self) -> str:
        return self.path

    def units(self) -> range:
        return range(self.dataset.n_shards) if self.streaming else range(len(self.dataset))

    def read(self, units: Sequence[int], first_offset: int, counter: BadSampleCounter) -> Iterator[tuple[int, int, RawSample]]:
        name = Path(self.path).name
        if not self.streaming:
            for pos, i in enumerate(units):
                yield pos, 0, self._sample(self.dataset[int(i)], f"{name}:{int(i)}")
            return
        for pos, shard in enumerate(units):
            rows = self.dataset.shard(num_shards=self.dataset.n_shards, index=int(shard))
            j = start = first_offset if pos == 0 else 0
            # ``iter`` rather than ``for row in rows``: inside a loader worker the latter splits the shards
            # across workers a second time (datasets does it for torch). Skipped rows are not decoded.
            for batch in (rows.skip(start) if start else rows).iter(batch_size=64):
                for image, caption in zip(batch[self.image_column], batch[self.caption_column]):
                    yield pos, j, self._sample({self.image_column: image, self.caption_column: caption},
                                               f"{name}:shard{int(shard)}:{j}")
                    j += 1

    def _sample(self, row: dict, key: str) -> RawSample:
        value, caption = row[self.image_column], row[self.caption_column]
        caption = caption if isinstance(caption, str) else None
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return RawSample(key=key, caption=caption, data=value["bytes"])
            value = value.get("path")
        if isinstance(value, bytes | bytearray):
            return RawSample(key=key, caption=caption, data=bytes(value))
        if isinstance(value, str) and value:
            return RawSample(key=key, caption=caption, path=self.root / value, where=f"{key} ({value})")
        if value is not None and hasattr(value, "convert"):  # a PIL image (a column decoded by the dataset)
            return RawSample(key=key, caption=caption, image=value)
        return RawSample(key=key, caption=None, reason=MISSING_IMAGE)
