"""Held-out captioning metrics on the built-in scenes.

Two numbers: teacher-forced token accuracy, and the share of scenes whose generated caption
names every object group with the right count, colour and shape and no group that is not
there. A model that only learned the caption template scores near chance on the second.
"""

from __future__ import annotations

import re

import torch
from torch.utils.data import DataLoader

from ..data.captions import CaptionCollator, SceneCaptions
from ..data.scenes import COLOURS, COUNT_WORDS, SHAPES, Scene, make_scene
from ..data.transforms import eval_transform

_GROUP = re.compile(
    rf"\b({'|'.join(COUNT_WORDS)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})s?\b"
)


def caption_groups(text: str) -> set[tuple[str, str, str]]:
    """(count, colour, shape) triples named in a caption."""
    return set(_GROUP.findall(text.lower()))


def scene_groups(scene: Scene) -> set[tuple[str, str, str]]:
    return {(COUNT_WORDS[g.count], g.colour, g.shape) for g in scene.groups}


@torch.no_grad()
def evaluate_captions(model, tokenizer, num_samples: int = 256, seed: int = 1, image_size: int | None = None,
                      batch_size: int = 64) -> dict[str, float]:
    """Token accuracy and all-attributes-right share on ``num_samples`` held-out scenes."""
    model.eval()
    size = image_size or model.config.vision_config.image_size
    data = SceneCaptions(num_samples, size, eval_transform(size), seed=seed)
    loader = DataLoader(data, batch_size=batch_size, collate_fn=CaptionCollator(tokenizer))
    device = next(model.parameters()).device
    correct = total = exact = 0
    index = 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch).logits[:, :-1]
        target = batch["labels"][:, 1:]
        valid = target != -100
        correct += ((logits.argmax(-1) == target) & valid).sum().item()
        total += valid.sum().item()
        generated = model.generate(batch["pixel_values"], max_new_tokens=48)
        for text in tokenizer.batch_decode(generated, skip_special_tokens=True):
            exact += caption_groups(text) == scene_groups(make_scene(seed, index))
            index += 1
    return {"token_accuracy": correct / total, "attributes_all_right": exact / num_samples, "num_scenes": num_samples}
