"""LLaVA conversation JSON as training examples for Hugging Face LLaVA.

A record is LLaVA's format: ``{"image": "rel/path.png", "conversations": [{"from": "human",
"value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}``; without ``image`` it is a
text-only conversation (LLaVA-1.5's mix665k holds about 40k), trained with no image tokens and
no ``pixel_values``, as LLaVA's own ``train.py`` trains them. Two templates, as LLaVA-1.5:
``plain`` (stage 1: the image tokens, then the caption; text-only records are skipped) and
``chat`` (stage 2: the ``USER: ... ASSISTANT: ...</s>`` turns of
:data:`ov2_plugin.llava.build.CHAT_TEMPLATE`). Loss is on the answers only. ``<image>`` becomes
exactly as many placeholder ids as the tower yields features, the same count ``LlavaProcessor``
produces at inference.

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
from .build import IMAGE_TOKEN

IGNORE = -100
TEMPLATES = ("plain", "chat")

# Why a record is dropped when the file is read (image faults use pretraining's reasons).
MULTIPLE_IMAGES = "multiple_images"  # more than one <image> (or a list of several images)
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


def record_image(record: dict) -> str | None:
    """The record's image path (LLaVA's ``image``; a one-element list is accepted), None for text-only."""
    image = record.get("image")
    if isinstance(image, list) and len(image) <= 1:
        image = image[0] if image else None
    return image


def record_fault(record, template: str) -> str | None:
    """Why ``record`` cannot train with ``template`` (a reason above), or None when it can."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        return BAD_TURNS
    for n, turn in enumerate(turns):
        role = ("human", "gpt")[n % 2]
        if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
            return BAD_TURNS
    image = record_image(record)
    if isinstance(image, list):
        return MULTIPLE_IMAGES
    if image is not None and not isinstance(image, str):
        return UNREADABLE_FILE  # not a path at all
    tokens = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    if tokens > 1:
        return MULTIPLE_IMAGES
    if tokens != (image is not None):
        return IMAGE_TOKEN_MISMATCH
    if image is None and template == "plain":
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


def select_records(records: list, template: str) -> tuple[list[dict], SkippedRecords]:
    """The records that can train with ``template``, and what was dropped (by reason)."""
    kept, counts, examples = [], Counter(), {}
    for i, record in enumerate(records):
        reason = record_fault(record, template)
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


def prompt_text(question: str) -> str:
    """The user turn exactly as the processor's chat template renders it with a generation prompt."""
    return f"USER: {question} ASSISTANT:"


class LlavaConversations(Dataset):
    """Tokenised LLaVA records: ``input_ids``, ``labels`` (answers only), ``pixel_values`` (image records
    only, ``[3, H, W]``) and ``skipped`` (``(reason, where)`` of unreadable images passed over to reach it).

    ``skipped`` records what was dropped when the file was read; ``max_bad_fraction`` bounds it.
    """

    def __init__(
        self,
        records: list[dict] | str | Path,
        image_folder: str | Path,
        processor,
        num_image_tokens: int,
        template: str = "chat",
        max_length: int = 2048,
        pad_square: bool = False,
        max_bad_fraction: float = 1.0,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"Unknown template {template!r}; use 'plain' (stage 1) or 'chat' (stage 2).")
        source = str(records) if isinstance(records, (str, Path)) else "the records"
        records = load_records(records) if isinstance(records, (str, Path)) else records
        self.records, self.skipped = select_records(records, template)
        self.skipped.check(max_bad_fraction, source)
        if not self.records:
            raise ValueError(
                f"No record of {source} can train with the {template!r} template (skipped: {dict(self.skipped.counts)}); "
                + ("stage 1 ('plain') needs image records." if template == "plain" else "check the data.")
            )
        self.image_folder = Path(image_folder)
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.num_image_tokens = num_image_tokens
        self.template = template
        self.max_length = max_length
        self.pad_square = pad_square

    def __len__(self) -> int:
        return len(self.records)

    def _ids(self, text: str, first: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=first).input_ids
        out = []
        for i in ids:  # one <image> -> one placeholder per visual feature
            out.extend([i] * self.num_image_tokens if i == self.image_id else [i])
        return out

    def _segments(self, turns: list[dict]) -> list[tuple[str, bool]]:
        """(text, is_answer) pieces of the conversation in order."""
        eos = self.tokenizer.eos_token
        if self.template == "plain":  # LLaVA's plain: image then caption, the human text is dropped
            return [(IMAGE_TOKEN, False), (turns[1]["value"] + eos, True)]
        pieces = []
        for human, gpt in zip(turns[::2], turns[1::2]):
            pieces += [(prompt_text(human["value"]), False), (" " + gpt["value"] + eos, True)]
        return pieces

    def tokenize(self, turns: list[dict]) -> tuple[list[int], list[int]]:
        input_ids, labels = [], []
        for n, (text, is_answer) in enumerate(self._segments(turns)):
            ids = self._ids(text, first=n == 0)
            input_ids += ids
            labels += ids if is_answer else [IGNORE] * len(ids)
        return input_ids[: self.max_length], labels[: self.max_length]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        if self.pad_square:
            image = pad_to_square(image, tuple(int(255 * m) for m in self.image_processor.image_mean))
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]

    def example(self, i: int, image: Image.Image | None) -> dict:
        record = self.records[i]
        input_ids, labels = self.tokenize(record["conversations"])
        expected = self.num_image_tokens if image is not None else 0
        if input_ids.count(self.image_id) != expected:
            raise ValueError(
                f"Record {record.get('id', i)} keeps {input_ids.count(self.image_id)} of its {expected} image tokens "
                f"after truncation to {self.max_length} tokens; raise --model_max_length (each image needs "
                f"{self.num_image_tokens})."
            )
        sample = {"input_ids": input_ids, "labels": labels}
        if image is not None:
            sample["pixel_values"] = self.pixels(image)
        return sample

    def __getitem__(self, i: int) -> dict:
        skipped = []
        for step in range(min(len(self), MAX_CONSECUTIVE_BAD)):
            index = (i + step) % len(self)
            name = record_image(self.records[index])
            image = None if name is None else read_image(self.image_folder / name)
            if isinstance(image, str):
                skipped.append((image, str(self.image_folder / name)))
                continue
            return {**self.example(index, image), "skipped": skipped}
        raise BadSampleLimitExceeded(
            f"{len(skipped)} records in a row from record {i} have no readable image ({skipped[:3]}...); "
            f"check --image_folder ({self.image_folder})."
        )


@dataclass
class ConversationCollator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (-100); stacks the images of the samples that
    have one (``pixel_values [n_images, 3, H, W]``, absent when none has) in batch order, which is how
    HF LLaVA matches image features to ``<image>`` placeholders. ``bad_samples`` lists the
    ``(reason, where)`` of images skipped to fill the batch (the trainer counts and removes it).

    ``dummy_image``: a batch without images carries one zero image whose placeholders sit after
    every row's end (attention mask 0, labels -100): the tower and projector then run on every
    rank, as LLaVA's zero image for text-only samples makes them, so distributed runs (DDP without
    unused-parameter search, ZeRO-3) stay in step; the other tokens and the loss are unchanged.
    """

    pad_token_id: int
    image_token_id: int | None = None
    num_image_tokens: int = 0
    image_shape: tuple[int, int, int] | None = None
    dummy_image: bool = False

    def __call__(self, batch: list[dict]) -> dict:
        images = [b["pixel_values"] for b in batch if "pixel_values" in b]
        dummy = self.dummy_image and not images
        width = max(len(b["input_ids"]) for b in batch) + (self.num_image_tokens if dummy else 0)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if dummy:
            ids[0, width - self.num_image_tokens :] = self.image_token_id
            images = [torch.zeros(self.image_shape)]
        if images:
            out["pixel_values"] = torch.stack(images)
        out["bad_samples"] = [s for b in batch for s in b.get("skipped", ())]
        return out
