"""WebDataset tar shards as img2dataset writes them: ``{key}.jpg|png|webp``, ``{key}.txt``, ``{key}.json``.

Reading the tars, grouping files into samples and the shuffle buffer are webdataset's; this
module picks the caption field, splits shards across ranks and workers (``sharding``) and
turns webdataset's exceptions into counted skips instead of crashes.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .bad_samples import TRUNCATED_TAR, UNREADABLE_FILE, BadSampleCounter
from .sharding import expand_shards
from .streaming import RawSample, StreamingCaptions

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def parse_caption_field(field: str) -> tuple[str, str | None]:
    """``txt`` -> the ``.txt`` file; ``json:KEY`` -> ``KEY`` of the ``.json`` file (e.g. Recap-DataComp's ``re_caption``)."""
    if field == "txt":
        return "txt", None
    if field.startswith("json:") and len(field) > 5:
        return "json", field[5:]
    raise ValueError(f"Unknown caption field {field!r}; use 'txt' (the .txt file) or 'json:KEY' (a key of the .json file).")


def caption_of(sample: dict, field: str) -> str | None:
    """The caption of a grouped webdataset sample, or None when that field is missing or not text."""
    kind, key = parse_caption_field(field)
    if kind == "txt":
        data = sample.get("txt")
        return data.decode("utf-8", errors="replace") if data is not None else None
    data = sample.get("json")
    if data is None:
        return None
    try:
        value = json.loads(data).get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class WebDatasetCaptions(StreamingCaptions):
    """Captioned images from tar shards; ``shards`` is a brace pattern, ``::``-joined patterns or a list.

    The split is by shard, so give at least ``world_size * num_workers`` shards (img2dataset
    writes 10k samples a shard; a billion-sample set has ~100k shards).
    """

    def __init__(self, shards: str | Sequence[str], transform, *, caption_field: str = "txt",
                 shuffle_buffer: int = 1000, **kwargs) -> None:
        super().__init__(transform, **kwargs)
        parse_caption_field(caption_field)  # fail at construction, not in a worker
        self.shards, self.caption_field, self.shuffle_buffer = expand_shards(shards), caption_field, shuffle_buffer

    def units(self) -> list[str]:
        return self.shards

    def describe(self) -> str:
        return f"{len(self.shards)} shards ({self.shards[0]} ...)"

    def read(self, units: Sequence[str], first_offset: int, counter: BadSampleCounter) -> Iterator[tuple[int, int, RawSample]]:
        """Grouped samples of ``units`` in order; the first ``first_offset`` samples of the first shard are
        skipped as raw tar members (no image decoding), the shards before it are never opened."""
        import webdataset as wds
        from webdataset.tariterators import group_by_keys, tar_file_expander

        def on_error(exn: Exception) -> bool:
            """webdataset's handler: count the damaged shard and go on with the next one."""
            if not isinstance(exn, tarfile.TarError | EOFError | OSError | ValueError):
                raise exn
            reason = UNREADABLE_FILE if isinstance(exn, FileNotFoundError | PermissionError) else TRUNCATED_TAR
            counter.add_bad(reason, str(current["url"]))
            return True

        current = {"url": None}

        def open_shards(_=None):
            """webdataset's url_opener plus an end-of-archive check (see ``_TailWatch``)."""
            for url in units:
                current["url"] = url  # the expander reads shards one at a time, in this order
                try:
                    stream = _TailWatch(wds.gopen(url))
                except Exception as exn:
                    on_error(exn)
                    continue
                yield {"url": url, "stream": stream}
                # Resumed here only once the expander has finished this shard.
                if not stream.ended_cleanly():
                    counter.add_bad(TRUNCATED_TAR, url)
                stream.close()

        stages = [
            open_shards,
            lambda src: tar_file_expander(src, handler=on_error),
            lambda src: group_by_keys(src, handler=on_error),
        ]
        position = {url: i for i, url in enumerate(units)}
        seen: dict[str, int] = {}
        for sample in wds.DataPipeline(*stages):
            url = sample["__url__"]
            unit, offset = position[url], seen.get(url, 0)  # the shard is read from its start
            seen[url] = offset + 1
            if unit == 0 and offset < first_offset:
                continue  # before the saved position: dropped undecoded
            ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            key, where = f"{Path(url).name}/{sample['__key__']}", f"{url}/{sample['__key__']}"
            if ext is None:  # no image member in this sample
                yield unit, offset, RawSample(key=key, caption=None, reason=UNREADABLE_FILE, where=where)
                continue
            yield unit, offset, RawSample(key=key, caption=caption_of(sample, self.caption_field), data=sample[ext],
                                          where=where)


class _TailWatch:
    """A read-only stream that remembers the last block it returned.

    Python's ``tarfile`` in stream mode treats a file cut exactly at a member boundary as a
    complete archive (it reads no header and stops quietly), so such a truncated download
    would pass unnoticed. A complete tar ends with zero blocks, which tarfile reads before
    stopping; a cut one ends inside member data. Checking the last block read tells them apart.
    """

    BLOCK = 512

    def __init__(self, raw) -> None:
        self.raw, self.tail = raw, b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.tail = (self.tail + data)[-self.BLOCK :]
        return data

    def ended_cleanly(self) -> bool:
        return len(self.tail) == self.BLOCK and not any(self.tail)

    def close(self) -> None:
        self.raw.close()
