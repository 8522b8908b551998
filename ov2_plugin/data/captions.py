"""Image-caption datasets for pretraining and the collator that turns captions into labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from .reading import scene_of


class SceneCaptions(Dataset):
    """``num_samples`` built-in scenes of stream ``seed``, rendered at ``image_size``.

    Held-out sets use another seed, so they share no scene with training. ``kind``: ``shapes``
    (the original scenes), ``reading`` (words from a large vocabulary, ``data/reading.py``) or
    ``mixed`` (half each); reading scenes draw their words from ``split`` (training: 'train').
    """

    def __init__(self, num_samples: int, image_size: int, transform: Callable, seed: int = 0,
                 kind: str = "shapes", split: str = "train") -> None:
        self.num_samples, self.image_size, self.transform, self.seed = num_samples, image_size, transform, seed
        self.kind, self.split = kind, split
        scene_of(kind, seed, 0, split)  # an unknown kind or split stops here, not in a loader worker

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        scene = scene_of(self.kind, self.seed, index, self.split)
        return {"pixel_values": self.transform(scene.render(self.image_size)), "caption": scene.caption}


@dataclass
class CaptionCollator:
    """Stacks images and tokenizes captions: ``[bos] caption [eos]``, right-padded with 0.

    Pads to the longest caption in the batch (never beyond the tokenizer's 128), so short
    captions do not pay for 128 positions; labels are the ids with -100 on padding. A streamed
    batch also carries ``stream_state``, which ``Ov2Trainer`` takes out before the forward.
    """

    tokenizer: PreTrainedTokenizerFast

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [b["caption"] for b in batch], padding=True, truncation=True, return_tensors="pt"
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        out = {
            "pixel_values": torch.stack([b["pixel_values"] for b in batch]),
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "labels": labels,
        }
        if "stream_state" in batch[-1]:  # the stream's position after this batch (see data.stream_state)
            out["stream_state"] = batch[-1]["stream_state"]
        return out
