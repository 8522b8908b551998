"""The common part of every streamed image-caption source: split, shuffle, decode, count, transform.

A source only says what its units are (tar shards, JSON records) and how to turn its share of
them into raw samples; this class does the rest the same way for all of them, so the
exactly-once split, the deterministic order and the bad-sample accounting are written once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset

from ..image_decoding import ImageDecodeError, decode_image
from .bad_samples import CORRUPT_IMAGE, MISSING_CAPTION, UNREADABLE_FILE, BadSampleCounter
from .sharding import epoch_permutation, split_for, worker_id_and_count


@dataclass
class RawSample:
    """One undecoded sample: image bytes or a file path, and the caption if there is one."""

    key: str
    caption: str | None
    data: bytes | None = None
    path: Path | None = None


def open_rgb(sample: RawSample) -> Image.Image | str:
    """The decoded RGB image (``image_decoding.decode_image``), or the bad-sample reason when it cannot be had."""
    data = sample.data
    if data is None:
        try:
            data = Path(sample.path).read_bytes()
        except OSError:
            return UNREADABLE_FILE
    try:
        return decode_image(data)
    except ImageDecodeError:
        return CORRUPT_IMAGE


class StreamingCaptions(IterableDataset):
    """Base of the streamed sources; yields ``{"pixel_values", "caption", "key"}``.

    Args:
        transform: PIL image -> tensor (see ``data.transforms``).
        rank, world_size: this process's place in the job (the split is by shard/record).
        seed: fixes the order; the epoch (``set_epoch``, called by the Trainer) varies it.
        shuffle: permute units each epoch (sources may also mix samples, see ``shuffle_buffer``).
        report_dir: where per-stream bad-sample counts are written (``bad_samples/*.json``).
        max_bad_fraction: stop with ``BadSampleLimitExceeded`` above this share of broken samples.
    """

    def __init__(self, transform: Callable, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 0, report_dir: str | None = None,
                 max_bad_fraction: float = 0.25) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes.")
        self.transform, self.rank, self.world_size, self.seed = transform, rank, world_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.report_dir, self.max_bad_fraction = report_dir, max_bad_fraction
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # What a source provides ------------------------------------------------------------
    def units(self) -> Sequence[Any]:
        """The items split across ranks and workers (shards, records)."""
        raise NotImplementedError

    def read(self, units: Sequence[Any], counter: BadSampleCounter) -> Iterator[RawSample]:
        """Raw samples of ``units``, in order; unreadable units are counted, not raised."""
        raise NotImplementedError

    # The shared part ---------------------------------------------------------------------
    def stream_rng(self) -> random.Random:
        """A generator seeded by (seed, epoch, rank, worker), for per-stream shuffling."""
        worker, _ = worker_id_and_count()
        return random.Random(f"ov2-stream/{self.seed}/{self.epoch}/{self.rank}/{worker}")

    def my_units(self) -> list[Any]:
        worker, num_workers = worker_id_and_count()
        units = epoch_permutation(self.units(), self.seed, self.epoch) if self.shuffle else list(self.units())
        return split_for(units, self.rank, self.world_size, worker, num_workers)

    def __iter__(self) -> Iterator[dict]:
        worker, _ = worker_id_and_count()
        counter = BadSampleCounter(
            self.report_dir, f"epoch{self.epoch}-rank{self.rank}-worker{worker}", self.max_bad_fraction
        )
        for sample in self.read(self.my_units(), counter):
            if sample.caption is None or not sample.caption.strip():
                counter.add_bad(MISSING_CAPTION, sample.key)
                continue
            image = open_rgb(sample)
            if isinstance(image, str):
                counter.add_bad(image, sample.key)
                continue
            counter.add_good()
            yield {"pixel_values": self.transform(image), "caption": sample.caption.strip(), "key": sample.key}
        counter.finish()

