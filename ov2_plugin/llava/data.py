"""LLaVA conversation JSON as training examples for Hugging Face LLaVA.

A record is LLaVA's format: ``{"image": "rel/path.png", "conversations": [{"from": "human",
"value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}``. Two templates, as LLaVA-1.5:
``plain`` (stage 1: the image tokens, then the caption) and ``chat`` (stage 2: the
``USER: ... ASSISTANT: ...</s>`` turns of :data:`ov2_plugin.llava.build.CHAT_TEMPLATE`).
Loss is on the answers only. ``<image>`` becomes exactly as many placeholder ids as the tower
yields features, the same count ``LlavaProcessor`` produces at inference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..loading import load_image
from .build import IMAGE_TOKEN

IGNORE = -100
TEMPLATES = ("plain", "chat")


def load_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Training data {str(path)!r} does not exist; pass a LLaVA conversation JSON file.")
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not all("conversations" in r for r in records):
        raise ValueError(f"{path} is not LLaVA conversation JSON: expected a list of records with 'conversations'.")
    return records


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
    """Tokenised LLaVA records: ``input_ids``, ``labels`` (answers only) and ``pixel_values``."""

    def __init__(
        self,
        records: list[dict] | str | Path,
        image_folder: str | Path,
        processor,
        num_image_tokens: int,
        template: str = "chat",
        max_length: int = 2048,
        pad_square: bool = False,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"Unknown template {template!r}; use 'plain' (stage 1) or 'chat' (stage 2).")
        self.records = load_records(records) if isinstance(records, (str, Path)) else records
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

    def image(self, record: dict) -> torch.Tensor:
        img = load_image(self.image_folder / record["image"])
        if self.pad_square:
            img = pad_to_square(img, tuple(int(255 * m) for m in self.image_processor.image_mean))
        return self.image_processor(img, return_tensors="pt")["pixel_values"][0]

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        input_ids, labels = self.tokenize(record["conversations"])
        if input_ids.count(self.image_id) != self.num_image_tokens:
            raise ValueError(
                f"Record {record.get('id', i)} has {input_ids.count(self.image_id) // self.num_image_tokens} images after "
                f"truncation to {self.max_length} tokens; each record needs exactly one '<image>' and room for "
                f"{self.num_image_tokens} image tokens (raise --model_max_length)."
            )
        return {"input_ids": input_ids, "labels": labels, "pixel_values": self.image(record)}


@dataclass
class ConversationCollator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (-100) and stacks the images."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        pixels = torch.stack([b["pixel_values"] for b in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}
