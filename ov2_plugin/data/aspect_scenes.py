"""Built-in scenes of several aspect ratios, for the anyres experiment: one big shape and one small one.

A scene has an aspect ratio (wide 4:1, 2:1, square, tall 1:2, 1:4; scene ``i`` takes ``ASPECTS[i % 5]``,
so every split is balanced), a dark background, a big shape (radius 0.3 of the short side) and a small
shape (radius 0.17) in another colour, apart. It is drawn with its short side ``side`` pixels, so a scene
is exactly 1, 2 or 4 squares of ``side``: at the tower's size, anyres tiles see it pixel for pixel, while
one tower-sized square squashes the long side 2x or 4x (the small shape of a 4:1 scene: about 3 x 11 px of
a 32 px square). Colours survive that squash; the small shape's outline does not (docs/llava_anyres.md).

Four questions per scene, one-word answers (exact match): ``big_colour``, ``big_shape`` (coarse: one
square answers them), ``small_colour``, ``small_shape`` (detail). Scene ``i`` of seed ``s`` is always the
same picture; training and held-out data are different seeds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .instructions import vocabulary
from .scenes import COLOURS, SHAPES, _draw_shape  # the built-in scenes' shape drawing, reused as is

ASPECTS = {"4:1": (4, 1), "2:1": (2, 1), "1:1": (1, 1), "1:2": (1, 2), "1:4": (1, 4)}  # (width, height) in short sides
BIG_RADIUS, SMALL_RADIUS = 0.3, 0.17  # of the short side
QUESTION_TYPES = ("big_colour", "big_shape", "small_colour", "small_shape")
DETAIL_TYPES = ("small_colour", "small_shape")
QUESTIONS = {
    "big_colour": "what colour is the big shape?",
    "big_shape": "what shape is the big one?",
    "small_colour": "what colour is the small shape?",
    "small_shape": "what shape is the small one?",
}
ANSWERS = {"big_colour": tuple(COLOURS), "big_shape": SHAPES, "small_colour": tuple(COLOURS), "small_shape": SHAPES}


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    x: float  # centre, in short sides from the left
    y: float  # centre, in short sides from the top
    radius: float  # in short sides


@dataclass(frozen=True)
class AspectScene:
    aspect: str  # a key of ASPECTS
    background: tuple[int, int, int]
    big: Thing
    small: Thing

    @property
    def caption(self) -> str:
        return f"a big {self.big.colour} {self.big.shape} and a small {self.small.colour} {self.small.shape}."

    def size(self, side: int) -> tuple[int, int]:
        """(width, height) in pixels for a short side of ``side``."""
        w, h = ASPECTS[self.aspect]
        return w * side, h * side

    def answers(self) -> dict[str, str]:
        return {"big_colour": self.big.colour, "big_shape": self.big.shape,
                "small_colour": self.small.colour, "small_shape": self.small.shape}

    def render(self, side: int = 32) -> Image.Image:
        img = Image.new("RGB", self.size(side), self.background)
        draw = ImageDraw.Draw(img)
        for thing in (self.big, self.small):
            _draw_shape(draw, thing.shape, thing.x * side, thing.y * side, thing.radius * side, COLOURS[thing.colour])
        return img


def _place(rng: random.Random, extent: tuple[int, int], radius: float) -> tuple[float, float]:
    """A centre that keeps a shape of ``radius`` inside a ``extent`` (width, height) canvas."""
    return tuple(rng.uniform(radius, side - radius) for side in extent)


def make_aspect_scene(seed: int, index: int) -> AspectScene:
    rng = random.Random(f"ov2-aspect-scenes/{seed}/{index}")
    aspect = tuple(ASPECTS)[index % len(ASPECTS)]
    extent = ASPECTS[aspect]
    big_colour, small_colour = rng.sample(list(COLOURS), 2)
    while True:  # the small shape clear of the big one (both redrawn: a centred big shape leaves no room in a square)
        (bx, by), (sx, sy) = _place(rng, extent, BIG_RADIUS), _place(rng, extent, SMALL_RADIUS)
        if (sx - bx) ** 2 + (sy - by) ** 2 > (1.2 * (BIG_RADIUS + SMALL_RADIUS)) ** 2:
            break
    background = tuple(rng.randint(0, 50) for _ in range(3))
    return AspectScene(aspect, background, Thing(rng.choice(SHAPES), big_colour, bx, by, BIG_RADIUS),
                       Thing(rng.choice(SHAPES), small_colour, sx, sy, SMALL_RADIUS))


def image_name(seed: int, index: int) -> str:
    return f"aspect_scenes/{seed}_{index}.png"


def question_records(seed: int, num_scenes: int) -> Iterator[dict]:
    """LLaVA conversation records, one question per record, with ``question_type`` and ``aspect``."""
    for index in range(num_scenes):
        scene = make_aspect_scene(seed, index)
        for qtype, answer in scene.answers().items():
            yield {"id": f"{seed}-{index}-{qtype}", "image": image_name(seed, index), "question_type": qtype,
                   "aspect": scene.aspect, "conversations": [
                       {"from": "human", "value": f"<image>\n{QUESTIONS[qtype]}"}, {"from": "gpt", "value": answer}]}


def dialogue_records(seed: int, num_scenes: int) -> Iterator[dict]:
    """One record per scene holding its four questions as turns in a shuffled order (as LLaVA-665k's
    multi-turn records): four answers to learn from per image the model encodes."""
    for index in range(num_scenes):
        scene, rng = make_aspect_scene(seed, index), random.Random(f"ov2-aspect-dialogues/{seed}/{index}")
        turns = list(scene.answers().items())
        rng.shuffle(turns)
        conversations = []
        for n, (qtype, answer) in enumerate(turns):
            conversations += [{"from": "human", "value": ("<image>\n" if n == 0 else "") + QUESTIONS[qtype]},
                              {"from": "gpt", "value": answer}]
        yield {"id": f"{seed}-{index}-dialogue", "image": image_name(seed, index), "aspect": scene.aspect,
               "conversations": conversations}


def caption_records(seed: int, num_scenes: int) -> Iterator[dict]:
    for index in range(num_scenes):
        yield {"id": f"{seed}-{index}-caption", "image": image_name(seed, index), "conversations": [
            {"from": "human", "value": "<image>\n"},
            {"from": "gpt", "value": make_aspect_scene(seed, index).caption}]}


def write_aspect_dataset(out_dir: str | Path, kind: str, seed: int, num_scenes: int, side: int) -> Path:
    """``<kind>_<seed>.json`` (``captions``, ``questions`` or ``dialogues``) and the scene images under ``out_dir``."""
    records = {"captions": caption_records, "questions": question_records, "dialogues": dialogue_records}.get(kind)
    if records is None:
        raise ValueError(f"Unknown aspect-scene data kind {kind!r}; use 'captions', 'questions' or 'dialogues'.")
    out = Path(out_dir)
    (out / "aspect_scenes").mkdir(parents=True, exist_ok=True)
    for index in range(num_scenes):
        path = out / image_name(seed, index)
        if not path.is_file():
            make_aspect_scene(seed, index).render(side).save(path)
    json_path = out / f"{kind}_{seed}.json"
    json_path.write_text(json.dumps(list(records(seed, num_scenes))))
    return json_path


def aspect_vocabulary() -> list[str]:
    """The built-in vocabulary plus the words these captions and questions add."""
    return sorted({*vocabulary(), "big", "small", "one"})
