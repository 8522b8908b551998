"""LLaVA conversation JSON as training examples for Hugging Face LLaVA.

A record is LLaVA's format: ``{"image": "rel/path.png", "conversations": [{"from": "human",
"value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}``; without ``image`` it is a
text-only conversation (LLaVA-1.5's mix665k holds about 40k), trained with no image tokens and
no ``pixel_values``, as LLaVA's own ``train.py`` trains them. LLaVA-OneVision's records may list
several images (``"image": ["a.png", "b.png"]``, one ``<image>`` each). Two templates, as LLaVA-1.5:
``plain`` (stage 1: the image tokens, then the caption; text-only records are skipped) and
``chat`` (stage 2: the turns of the arch's chat format, :mod:`ov2_plugin.llava.chat`). Loss is on the
answers only. Each ``<image>`` becomes exactly as many placeholder ids as the model makes features for that
image (anyres tiles included): the count comes from the processor's own ``replace_image_token``, the
function that expands ``<image>`` at inference.

Broken records never stop a run. Records whose structure is wrong (more than one ``<image>``, an
``<image>`` without an image or the reverse, turns that do not alternate human/gpt) are dropped
when the file is read and counted by reason; an image that is missing or does not decode is found
when its sample is read, counted with pretraining's reasons (``unreadable_file``,
``corrupt_image``) and replaced by the next readable record, so every batch keeps its size.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.bad_samples import CORRUPT_IMAGE, UNREADABLE_FILE, BadSampleLimitExceeded
from ..loading import load_image
from .archs import check_arch
from .build import IMAGE_TOKEN

IGNORE = -100
TEMPLATES = ("plain", "chat")

# Why a record is dropped when the file is read (image faults use pretraining's reasons).
MULTIPLE_IMAGES = "multiple_images"  # more than one image where the arch takes one (all but LLaVA-OneVision)
IMAGE_TOKEN_MISMATCH = "image_token_mismatch"  # an image without <image> in the text, or <image> without an image
BAD_TURNS = "bad_turns"  # no conversation, or turns that are not human, gpt, human, gpt, ...
RECORD_REASONS = (MULTIPLE_IMAGES, IMAGE_TOKEN_MISMATCH, BAD_TURNS, UNREADABLE_FILE)
TEXT_ONLY = "text_only"  # stage 1 only: 'plain' needs an image; skipped and counted, not broken
MAX_CONSECUTIVE_BAD = 50  # this many unreadable images in a row: the image folder is wrong, not a few files


def load_records(path: str | Path) -> list:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Training data {str(path)!r} does not exist; pass a LLaVA conversation JSON file.")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); pass a LLaVA conversation JSON file.") from err
    if not isinstance(records, list):
        raise ValueError(f"{path} is not LLaVA conversation JSON: expected a list of records with 'conversations'.")
    return records


def record_images(record: dict) -> list:
    """The record's image paths (LLaVA's ``image``: a path or a list of them); empty for text-only."""
    image = record.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, list) else [image]


def record_fault(record, template: str, multi_image: bool = False) -> str | None:
    """Why ``record`` cannot train with ``template`` (a reason above), or None when it can."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        return BAD_TURNS
    for n, turn in enumerate(turns):
        role = ("human", "gpt")[n % 2]
        if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
            return BAD_TURNS
    images = record_images(record)
    if any(not isinstance(image, str) for image in images):
        return UNREADABLE_FILE  # not a path at all
    tokens = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    if max(tokens, len(images)) > 1 and not (multi_image and template == "chat"):
        return MULTIPLE_IMAGES
    if tokens != len(images):
        return IMAGE_TOKEN_MISMATCH
    if not images and template == "plain":
        return TEXT_ONLY
    return None


@dataclass
class SkippedRecords:
    """Records dropped when the file was read: counts per reason and up to 5 examples each."""

    total: int
    counts: Counter
    examples: dict[str, list[str]]

    @property
    def bad(self) -> int:
        return sum(self.counts[r] for r in RECORD_REASONS)

    def check(self, max_bad_fraction: float, path: str) -> None:
        if self.total and self.bad / self.total > max_bad_fraction:
            detail = ", ".join(f"{r}: {self.counts[r]}" for r in RECORD_REASONS if self.counts[r])
            raise BadSampleLimitExceeded(
                f"{self.bad} of {self.total} records in {path} are malformed ({detail}; e.g. {self.examples}), "
                f"above --max_bad_fraction {max_bad_fraction}. Records need alternating human/gpt turns and one "
                "'<image>' per image (none without one); or raise --max_bad_fraction."
            )


def select_records(records: list, template: str, multi_image: bool = False) -> tuple[list[dict], SkippedRecords]:
    """The records that can train with ``template``, and what was dropped (by reason)."""
    kept, counts, examples = [], Counter(), {}
    for i, record in enumerate(records):
        reason = record_fault(record, template, multi_image)
        if reason is None:
            kept.append(record)
            continue
        counts[reason] += 1
        name = record.get("id", i) if isinstance(record, dict) else i
        if len(examples.setdefault(reason, [])) < 5:
            examples[reason].append(f"record {i} (id {name})")
    return kept, SkippedRecords(len(records), counts, examples)


def read_image(path: Path) -> Image.Image | str:
    """The decoded RGB image, or the reason it cannot be had, named as pretraining names it."""
    try:
        return load_image(path)
    except FileNotFoundError:
        return UNREADABLE_FILE
    except Exception:  # PIL raises many types for broken files (OSError, SyntaxError, DecompressionBombError...)
        return CORRUPT_IMAGE


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's ``image_aspect_ratio=pad``: centre the image on a square of the mean colour."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


class LlavaConversations(Dataset):
    """Tokenised LLaVA records: ``input_ids``, ``labels`` (answers only), the processor's image inputs for
    image records (``pixel_values``: ``[n_images, 3, H, W]``, or ``[n_images, tiles, 3, H, W]`` with
    ``image_sizes`` for the anyres archs) and ``skipped`` (``(reason, where)`` of unreadable images passed
    over to reach it).

    ``skipped`` records what was dropped when the file was read; ``max_bad_fraction`` bounds it.
    """

    def __init__(
        self,
        records: list[dict] | str | Path,
        image_folder: str | Path,
        processor,
        template: str = "chat",
        max_length: int = 2048,
        pad_square: bool = False,
        max_bad_fraction: float = 1.0,
        arch: str = "llava",
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"Unknown template {template!r}; use 'plain' (stage 1) or 'chat' (stage 2).")
        self.arch = check_arch(arch)
        source = str(records) if isinstance(records, (str, Path)) else "the records"
        records = load_records(records) if isinstance(records, (str, Path)) else records
        self.records, self.skipped = select_records(records, template, self.arch.multi_image)
        self.skipped.check(max_bad_fraction, source)
        if not self.records:
            raise ValueError(
                f"No record of {source} can train with the {template!r} template (skipped: {dict(self.skipped.counts)}); "
                + ("stage 1 ('plain') needs image records." if template == "plain" else "check the data.")
            )
        self.image_folder = Path(image_folder)
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.template = template
        self.max_length = max_length
        self.pad_square = pad_square

    def __len__(self) -> int:
        return len(self.records)

    def _ids(self, text: str, first: bool, counts: list[int]) -> list[int]:
        """Token ids of ``text``; each ``<image>`` becomes the next image's count of placeholders (``counts`` is consumed)."""
        ids = self.tokenizer(text, add_special_tokens=first).input_ids
        out = []
        for i in ids:
            out.extend([i] * counts.pop(0) if i == self.image_id else [i])
        return out

    def _segments(self, turns: list[dict]) -> list[tuple[str, bool]]:
        """(text, is_answer) pieces of the conversation in order."""
        eos = self.tokenizer.eos_token
        if self.template == "plain":  # LLaVA's plain: image then caption, the human text is dropped
            return [(IMAGE_TOKEN, False), (turns[1]["value"] + eos, True)]
        chat, pieces = self.arch.chat, []
        for n, (human, gpt) in enumerate(zip(turns[::2], turns[1::2])):
            pieces += [(chat.prompt(human["value"], first=n == 0), False), (chat.answer(gpt["value"], eos), True)]
        return pieces

    def tokenize(self, turns: list[dict], counts: list[int] = ()) -> tuple[list[int], list[int]]:
        """``counts``: placeholders of each image, in the order of the ``<image>`` tokens."""
        input_ids, labels, counts = [], [], list(counts)
        for n, (text, is_answer) in enumerate(self._segments(turns)):
            ids = self._ids(text, n == 0, counts)
            input_ids += ids
            labels += ids if is_answer else [IGNORE] * len(ids)
        return input_ids[: self.max_length], labels[: self.max_length]

    def encode_images(self, images: list[Image.Image]) -> tuple[dict, list[int]]:
        """The image processor's tensors for one record's images and the placeholders each image needs."""
        if self.pad_square:
            fill = tuple(int(255 * m) for m in self.image_processor.image_mean)
            images = [pad_to_square(image, fill) for image in images]
        # OneVision treats the images of one prompt together (several: one square each), so it gets them nested
        batch = self.image_processor([images] if self.arch.multi_image else images, return_tensors="pt")
        counts = [self.processor.replace_image_token(batch, i).count(IMAGE_TOKEN) for i in range(len(images))]
        return {k: batch[k] for k in ("pixel_values", "image_sizes") if k in batch}, counts

    def example(self, i: int, images: list[Image.Image]) -> dict:
        record = self.records[i]
        encoded, counts = self.encode_images(images) if images else ({}, [])
        input_ids, labels = self.tokenize(record["conversations"], counts)
        if input_ids.count(self.image_id) != sum(counts):
            raise ValueError(
                f"Record {record.get('id', i)} keeps {input_ids.count(self.image_id)} of its {sum(counts)} image tokens "
                f"after truncation to {self.max_length} tokens; raise --model_max_length (its images need "
                f"{' + '.join(map(str, counts))})."
            )
        return {"input_ids": input_ids, "labels": labels, **encoded}

    def __getitem__(self, i: int) -> dict:
        skipped = []
        for step in range(min(len(self), MAX_CONSECUTIVE_BAD)):
            index = (i + step) % len(self)
            paths = [self.image_folder / name for name in record_images(self.records[index])]
            images = [read_image(path) for path in paths]
            bad = [(image, str(path)) for image, path in zip(images, paths) if isinstance(image, str)]
            if bad:
                skipped.append(bad[0])  # one record, one count: its first unreadable image names it
                continue
            return {**self.example(index, images), "skipped": skipped}
        raise BadSampleLimitExceeded(
            f"{len(skipped)} records in a row from record {i} have no readable image ({skipped[:3]}...); "
            f"check --image_folder ({self.image_folder})."
        )


@dataclass
class ConversationCollator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (-100); concatenates the images of the samples that
    have them in batch order (``pixel_values [n_images, 3, H, W]``, or ``[n_images, max_tiles, 3, H, W]``
    with zero tiles behind an image's own and ``image_sizes [n_images, 2]`` for the anyres archs; absent
    when no sample has an image), which is how HF LLaVA matches image features to ``<image>`` placeholders.
    ``batch_num_images`` (LLaVA-OneVision) gives each image sample's image count. ``bad_samples`` lists the
    ``(reason, where)`` of images skipped to fill the batch (the trainer counts and removes it).

    ``dummy``: the image inputs of one blank image and its placeholder count (``dummy_image_inputs``). A batch
    without images then carries that image, its placeholders after every row's end (attention mask 0,
    labels -100): the tower and projector run on every rank, as LLaVA's zero image for text-only samples
    makes them, so distributed runs (DDP without unused-parameter search, ZeRO-3) stay in step; the other
    tokens and the loss are unchanged.
    """

    pad_token_id: int
    image_token_id: int | None = None
    dummy: tuple[dict, int] | None = None
    batch_num_images: bool = False

    def __call__(self, batch: list[dict]) -> dict:
        with_images = [b for b in batch if "pixel_values" in b]
        dummy_inputs, dummy_tokens = self.dummy if self.dummy and not with_images else ({}, 0)
        width = max(len(b["input_ids"]) for b in batch) + dummy_tokens
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if dummy_tokens:
            ids[0, width - dummy_tokens :] = self.image_token_id
            with_images = [dummy_inputs]
        if with_images:
            pixels = [b["pixel_values"] for b in with_images]
            if pixels[0].dim() == 5:  # anyres: [n_images, tiles, 3, H, W]; pad the tiles to the batch's most
                most = max(p.shape[1] for p in pixels)
                pixels = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixels]
            out["pixel_values"] = torch.cat(pixels)
            if "image_sizes" in with_images[0]:
                out["image_sizes"] = torch.cat([b["image_sizes"] for b in with_images])
            if self.batch_num_images:
                out["batch_num_images"] = torch.tensor([len(b["pixel_values"]) for b in with_images])
        out["bad_samples"] = [s for b in batch for s in b.get("skipped", ())]
        return out


def dummy_image_inputs(dataset: LlavaConversations) -> tuple[dict, int]:
    """One black image of the tower's size as the dataset encodes it, and its placeholder count."""
    size = dataset.image_processor.size
    side = size.get("height", size.get("shortest_edge"))
    encoded, counts = dataset.encode_images([Image.new("RGB", (side, side))])
    return {k: torch.zeros_like(v) if k == "pixel_values" else v for k, v in encoded.items()}, counts[0]
