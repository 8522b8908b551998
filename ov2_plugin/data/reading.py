"""The built-in reading task: one to three words from a vocabulary of thousands, hard to read.

Each scene writes 1-3 words, one per horizontal band, in upper case, in one colour, at a random
size (font 14-25 % of the image side, shrunk until the word fits), random horizontal place and
small vertical offset, on a random background with 2-5 clutter strokes (lines, outlines, dots)
behind them. The words come from the caption tokenizer's whole-word entries (BERT-base-uncased:
lower-case ASCII words of 3-6 letters, about 9,400, minus the words the caption templates use),
split once by a hash of the word: ``HELD_OUT_SHARE`` of them are never drawn in ``train`` scenes,
only in ``held_out`` ones, so a held-out word never appears in a training caption.

``scene_of(kind, seed, index, split)`` is the one entry point the data code uses:
``shapes`` (the original scenes, ``make_scene``), ``reading`` (these), ``mixed`` (even indices
shapes, odd indices reading). Scene ``i`` of a seed and split is always the same picture.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .scenes import COLOURS, COLUMN_NAMES, COUNT_WORDS, SHAPES, WORD_PLACES, WORDS, make_scene

SCENE_KINDS = ("shapes", "reading", "mixed")
SPLITS = ("train", "held_out")
HELD_OUT_SHARE = 0.1
MIN_LETTERS, MAX_LETTERS = 3, 6
TEXT_COLOURS = {**COLOURS, "white": (240, 240, 240)}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Words of the caption and question templates: never reading words, so that "never in a training
# caption" holds for every held-out word, template words included.
TEMPLATE_WORDS = frozenset(
    {*SHAPES, *(s + "s" for s in SHAPES), *TEXT_COLOURS, *COUNT_WORDS, *WORDS, *COLUMN_NAMES, *WORD_PLACES}
    | set("the a and on in is are at word words written letter does first start with what which how many where "
          "there colour shape image answer yes no".split())
)


def _held_out(word: str) -> bool:
    """A fixed split, independent of the vocabulary's order or size: the word's hash decides."""
    return hashlib.sha256(word.encode()).digest()[0] < HELD_OUT_SHARE * 256


@lru_cache(maxsize=1)
def reading_words() -> dict[str, tuple[str, ...]]:
    """{'train': words, 'held_out': words}: the tokenizer's whole lower-case ASCII words of 3-6 letters."""
    from ..tokenization import bert_vocab_path

    words = sorted({t for t in bert_vocab_path().read_text(encoding="utf-8").splitlines()
                    if t.isascii() and t.isalpha() and t.islower() and MIN_LETTERS <= len(t) <= MAX_LETTERS}
                   - TEMPLATE_WORDS)
    return {"train": tuple(w for w in words if not _held_out(w)), "held_out": tuple(w for w in words if _held_out(w))}


@dataclass(frozen=True)
class ReadingScene:
    words: tuple[str, ...]  # top to bottom
    colour: str  # a TEXT_COLOURS name
    background: tuple[int, int, int]
    layout: tuple[tuple[float, float, float], ...]  # per word: font size / side, x in [0, 1] of the free width, y jitter
    clutter: tuple[tuple, ...]  # (kind, x0, y0, x1, y1, rgb) in fractions of the side

    @property
    def caption(self) -> str:
        quoted = [f'"{w}"' for w in self.words]
        if len(quoted) == 1:
            return f"the word {quoted[0]} is written in {self.colour}."
        listed = ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
        return f"the words {listed} are written in {self.colour}."

    def render(self, size: int = 64) -> Image.Image:
        return render_reading_scene(self, size)


def make_reading_scene(seed: int, index: int, split: str = "train") -> ReadingScene:
    """Reading scene ``index`` of stream ``seed``, words drawn from ``split`` ('train' or 'held_out')."""
    if split not in SPLITS:
        raise ValueError(f"Unknown reading split {split!r}; use 'train' or 'held_out'.")
    rng = random.Random(f"ov2-reading/{split}/{seed}/{index}")
    vocab = reading_words()[split]
    words = tuple(rng.choice(vocab) for _ in range(rng.choice((1, 2, 3))))
    colour = rng.choice(list(TEXT_COLOURS))
    ink = TEXT_COLOURS[colour]
    while True:  # a background far enough from the ink to be readable
        background = tuple(rng.randint(0, 120) for _ in range(3))
        if sum(abs(a - b) for a, b in zip(background, ink)) > 150:
            break
    layout = tuple((rng.uniform(0.14, 0.25), rng.random(), rng.uniform(-0.15, 0.15)) for _ in words)
    clutter = []
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(("line", "box", "dot"))
        x0, y0 = rng.random(), rng.random()
        x1, y1 = x0 + rng.uniform(-0.4, 0.4), y0 + rng.uniform(-0.4, 0.4)
        clutter.append((kind, x0, y0, x1, y1, tuple(rng.randint(60, 255) for _ in range(3))))
    return ReadingScene(words, colour, background, layout, tuple(clutter))


def render_reading_scene(scene: ReadingScene, size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image of ``size`` x ``size`` pixels (clutter first, words on top)."""
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    for kind, x0, y0, x1, y1, rgb in scene.clutter:
        box = [min(x0, x1) * size, min(y0, y1) * size, max(x0, x1) * size, max(y0, y1) * size]
        if kind == "line":
            draw.line([x0 * size, y0 * size, x1 * size, y1 * size], fill=rgb, width=max(1, size // 64))
        elif kind == "box":
            draw.rectangle(box, outline=rgb, width=max(1, size // 64))
        else:
            r = size * 0.03
            draw.ellipse([x0 * size - r, y0 * size - r, x0 * size + r, y0 * size + r], fill=rgb)
    band = size / len(scene.words)
    for i, (word, (font_share, x_share, y_jitter)) in enumerate(zip(scene.words, scene.layout)):
        font_size = max(6, int(font_share * size))
        while True:  # shrink until the word fits the width and its band
            font = ImageFont.load_default(size=font_size)
            left, top, right, bottom = font.getbbox(word.upper())
            if (right - left <= size * 0.96 and bottom - top <= band * 0.9) or font_size <= 6:
                break
            font_size -= 1
        width = right - left
        x = size * 0.02 + x_share * max(0.0, size * 0.96 - width) - left
        cy = (i + 0.5 + y_jitter * 0.5) * band
        draw.text((x, cy), word.upper(), fill=TEXT_COLOURS[scene.colour], font=font, anchor="lm")
    return img


def scene_of(kind: str, seed: int, index: int, split: str = "train"):
    """Scene ``index`` of ``kind`` (shapes, reading, mixed: even indices shapes, odd reading)."""
    if kind == "shapes" or (kind == "mixed" and index % 2 == 0):
        return make_scene(seed, index)
    if kind in ("reading", "mixed"):
        return make_reading_scene(seed, index, split)
    raise ValueError(f"Unknown scene kind {kind!r}; use one of {', '.join(SCENE_KINDS)}.")
