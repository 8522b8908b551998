"""The common part of every streamed image-caption source: split, shuffle, decode, count, transform.

A source only says what its units are (tar shards, JSON records, dataset rows or files) and how
to turn its share of them into raw samples; this class does the rest the same way for all of
them, so the exactly-once split, the deterministic order, the augmentation's randomness, the
bad-sample accounting and the resumable position are written once.

Order within a worker: its units in the epoch's order, read into blocks of ``shuffle_buffer``
raw samples, each block permuted by its own seed. Why not webdataset's rolling shuffle buffer:
its content depends on the whole history of the stream, so a position inside it cannot be
saved in a few numbers. A block's can: (block number, the unit and offset where the block
starts, how many of its samples were used). Resuming re-reads that one block's raw bytes
(no image decoding), never the units before it.

Augmentation: each sample's transform runs under a torch seed derived from (seed, epoch,
sample key), so a sample is augmented the same way whatever the number of ranks and workers
and whether or not the run was interrupted; the process's own generator is left untouched.

Reduced JPEG decoding (``reduced_decoding``, on by default): when the transform starts with a crop
(``transforms.CropStep``), a JPEG's crop is drawn on its size read from the header, with the
same random numbers the transform would draw, and only that region is decoded, at the coarsest DCT
scale that still gives the crop at least the output's pixels (``image_decoding.JpegImage``); the rest
of the transform follows. Where no scale below 1 qualifies, the full decode and the transform's own
crop run, so the output is bitwise the full path's. Other formats always take the full path.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from ..image_decoding import ImageDecodeError, JpegImage, decode_image, is_jpeg
from .bad_samples import CORRUPT_IMAGE, MISSING_CAPTION, UNREADABLE_FILE, BadSampleCounter
from .sharding import epoch_permutation, split_for, worker_id_and_count
from .transforms import CropStep


@dataclass
class RawSample:
    """One undecoded sample: image bytes, a file path or an image, and the caption if there is one.

    ``key`` names the sample uniquely and stably (it seeds the augmentation); ``where`` says where
    it is for reports (default: ``key``); ``reason`` marks a sample already known to be bad.
    """

    key: str
    caption: str | None
    data: bytes | None = None
    path: Path | None = None
    image: Image.Image | None = None
    reason: str | None = None
    where: str | None = None


def _source(sample: RawSample) -> Image.Image | bytes | str:
    """The sample's image or file bytes, or the bad-sample reason when the file cannot be read."""
    source = sample.image if sample.image is not None else sample.data
    if source is None:
        try:
            source = Path(sample.path).read_bytes()
        except (OSError, TypeError, ValueError):
            return UNREADABLE_FILE
    return source


def _decoded(source: Image.Image | bytes | str) -> Image.Image | str:
    if isinstance(source, str):
        return source
    try:
        return decode_image(source)
    except ImageDecodeError:
        return CORRUPT_IMAGE


def open_rgb(sample: RawSample) -> Image.Image | str:
    """The decoded RGB image (``image_decoding.decode_image``), or the bad-sample reason when it cannot be had."""
    return _decoded(_source(sample))


def open_cropped(data: bytes, step: CropStep) -> Image.Image | str:
    """A JPEG's crop, as ``step`` would take it from the full decode, decoded at a reduced scale where one
    keeps enough pixels; draws ``step``'s random numbers. The bad-sample reason when it cannot be decoded."""
    try:
        jpeg = JpegImage(data)
        params = step.params(*jpeg.size)
        box = step.box(params, *jpeg.size)
        if jpeg.dct_scale(box, step.out_size) > 1:
            return jpeg.decode_region(box, step.out_size, step.resample)
        return step.full(jpeg.decode(), params)
    except ImageDecodeError:
        return CORRUPT_IMAGE


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """A 63-bit seed from (seed, epoch, key): the augmentation's draws for this one sample."""
    return int.from_bytes(hashlib.sha256(f"ov2-augment/{seed}/{epoch}/{key}".encode()).digest()[:8], "little") >> 1


class StreamingCaptions(IterableDataset):
    """Base of the streamed sources; yields ``{"pixel_values", "caption", "key", "stream_state"}``.

    Args:
        transform: PIL image -> tensor (see ``data.transforms``).
        rank, world_size: this process's place in the job (the split is by shard/record).
        seed: fixes the order and the augmentation; the epoch (``set_epoch``, called by the Trainer) varies them.
        shuffle: permute units each epoch and samples within blocks of ``shuffle_buffer``.
        report_dir: where per-stream bad-sample counts are written (``bad_samples/*.json``).
        max_bad_fraction: stop with ``BadSampleLimitExceeded`` above this share of broken samples.
        reduced_decoding: decode JPEGs at a reduced DCT scale where the transform's crop allows it.

    ``stream_state`` is the worker's position after this sample (see ``data.stream_state``).
    """

    def __init__(self, transform: Callable, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 0, report_dir: str | None = None,
                 max_bad_fraction: float = 0.25, reduced_decoding: bool = True) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes.")
        self.transform, self.rank, self.world_size, self.seed = transform, rank, world_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.report_dir, self.max_bad_fraction = report_dir, max_bad_fraction
        self.crop_step = CropStep.split(transform) if reduced_decoding else None
        self.epoch = 0
        self._resume: dict | None = None  # a rank's saved stream position (``load_stream_state``)
        self._epoch_offset: int | None = None

    def set_epoch(self, epoch: int) -> None:
        if self._resume is not None and self._epoch_offset is None:
            # The Trainer counts epochs of a stream without length from 0 again after a resume.
            self._epoch_offset = self._resume["epoch"] - epoch
        self.epoch = epoch + (self._epoch_offset or 0)

    def load_stream_state(self, state: dict) -> None:
        """Continue from a rank's saved position (``data.stream_state.read_stream_state``)."""
        self._resume, self._epoch_offset = state, None
        self.set_epoch(0)

    # What a source provides ------------------------------------------------------------
    def units(self) -> Sequence[Any]:
        """The items split across ranks and workers (shards, records)."""
        raise NotImplementedError

    def read(self, units: Sequence[Any], first_offset: int, counter: BadSampleCounter) -> Iterator[tuple[int, int, RawSample]]:
        """``(unit position, offset in unit, raw sample)`` for ``units`` in order, starting ``first_offset``
        samples into the first one (skipped without decoding); unreadable units are counted, not raised."""
        raise NotImplementedError

    def describe(self) -> str:
        """The data's name in messages (a file, a shard pattern)."""
        return type(self).__name__

    # The shared part ---------------------------------------------------------------------
    def block_size(self) -> int:
        return self.shuffle_buffer if self.shuffle and self.shuffle_buffer > 1 else 1

    def my_units(self, worker: int, num_workers: int) -> Sequence[Any]:
        units = epoch_permutation(self.units(), self.seed, self.epoch) if self.shuffle else self.units()
        return split_for(units, self.rank, self.world_size, worker, num_workers)

    def _worker_and_position(self) -> tuple[int, int, dict | None]:
        """(logical worker, worker count, saved position or None). After a resume the loader's worker
        ``i`` plays worker ``(i + next_worker) % n``, so batches keep coming in the uninterrupted order."""
        physical, num_workers = worker_id_and_count()
        plan = self._resume
        if plan is None or plan["epoch"] != self.epoch:
            return physical, num_workers, None
        if plan["num_workers"] != num_workers:
            raise ValueError(f"the checkpoint's data position is for {plan['num_workers']} loader workers, "
                             f"this run has {num_workers}; resume with the same --dataloader_num_workers.")
        worker = (physical + plan["next_worker"]) % num_workers
        return worker, num_workers, plan["workers"].get(str(worker))

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers, position = self._worker_and_position()
        counter = BadSampleCounter(self.report_dir, f"epoch{self.epoch}-rank{self.rank}-worker{worker}",
                                   self.max_bad_fraction, source=self.describe())
        units = self.my_units(worker, num_workers)
        block, unit, offset, skip = 0, 0, 0, 0
        if position is not None:
            counter.load_state(position["counter"])
            block, unit, offset, skip = position["block"], position["unit"], position["offset"], position["in_block"]
            counter.muted = True  # the block is re-read; its read-time events are in the restored counts
        raw = self.read(units[unit:], offset, counter)
        size = self.block_size()
        while items := list(islice(raw, size)):
            counter.muted = False
            start_unit, start_offset = unit + items[0][0], items[0][1]
            order = list(range(len(items)))
            if size > 1:
                random.Random(f"ov2-block/{self.seed}/{self.epoch}/{self.rank}/{worker}/{block}").shuffle(order)
            for j in range(skip, len(items)):
                out = self._process(items[order[j]][2], counter)
                if out is not None:
                    out["stream_state"] = {"epoch": self.epoch, "worker": worker, "block": block, "unit": start_unit,
                                           "offset": start_offset, "in_block": j + 1, "counter": counter.state()}
                    yield out
            block, skip = block + 1, 0
        counter.finish()

    def _process(self, sample: RawSample, counter: BadSampleCounter) -> dict | None:
        """Decode and transform one raw sample, or count why it is skipped (None)."""
        where = sample.where or sample.key
        if sample.reason is not None:
            counter.add_bad(sample.reason, where)
            return None
        if sample.caption is None or not sample.caption.strip():
            counter.add_bad(MISSING_CAPTION, where)
            return None
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: ``torch.manual_seed`` would also queue a lazy CUDA seeding (with a
            # recorded stack trace) on every call, several times the cost of a small image's decode.
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, sample.key))
            source, finish = _source(sample), self.transform
            if self.crop_step is not None and isinstance(source, bytes | bytearray) and is_jpeg(source):
                image, finish = open_cropped(source, self.crop_step), self.crop_step.rest  # the crop's draws, first
            else:
                image = _decoded(source)
            if isinstance(image, str):
                counter.add_bad(image, where)
                return None
            counter.add_good()
            pixel_values = finish(image)
        return {"pixel_values": pixel_values, "caption": sample.caption.strip(), "key": sample.key}
