"""The built-in reading task: one to three words from a vocabulary of thousands, hard to read.

Each scene writes 1-3 words, one per horizontal band, in upper case, in one colour, at a random
size (font 14-25 % of the image side, shrunk until the word fits), random horizontal place and
small vertical offset, on a random background with 2-5 clutter strokes (lines, outlines, dots)
behind them. The words come from the caption tokenizer's whole-word entries (BERT-base-uncased:
lower-case ASCII words of 3-6 letters, about 9,400, minus the words the caption templates use),
split once by a hash of the word: ``HELD_OUT_SHARE`` of them are never drawn in ``train`` scenes,
only in ``held_out`` ones, so a held-out word never appears in a training caption.

A ``ReadingCurriculum`` makes the task easier without a second generator: a smaller, fixed
vocabulary (a hash-ordered subset of the training words), shorter words, fewer words per scene,
larger letters, less clutter. The held-out words stay the hash split above (of the curriculum's word
lengths), so they are never in a training caption or question whatever the curriculum. The default
curriculum is the task described above, scene for scene and pixel for pixel.

``scene_of(kind, seed, index, split)`` is the one entry point the data code uses; ``SCENE_KINDS``
names every kind: ``shapes`` (the original scenes, ``make_scene``), ``reading`` (these), ``mixed``
(even indices shapes, odd indices reading), and ``reading-<c>`` / ``mixed-<c>`` for each other
curriculum ``c`` of ``CURRICULA``. Scene ``i`` of a kind, seed and split is always the same picture.

Resolution is not a curriculum setting: a batch stacks one pixel tensor and every objective's ViT
takes one grid, so reading scenes cannot get their own resolution inside a mixed batch without
per-sample token counts in all four models. Every scene is drawn at the size it is asked for (the
recipe's ``image_size``; with ``patch_size`` in its ``config_overrides`` the grid can stay the same).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .scenes import COLOURS, COLUMN_NAMES, COUNT_WORDS, SHAPES, WORD_PLACES, WORDS, make_scene

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
class ReadingCurriculum:
    """What reading scenes draw. The defaults are the built-in task (``reading``, ``mixed``) unchanged.

    Args:
        vocab_size: training words drawn from: the first ``vocab_size`` of the training words of
            ``letters`` length in a fixed hash order (None: all of them). Held-out words are not limited.
        letters: shortest and longest word (both splits); fewer letters fit larger on the image.
        words_per_scene: the word counts a scene draws from, uniformly.
        font_share: font size range as a share of the image side (shrunk until the word fits).
        clutter: fewest and most clutter strokes behind the words.
        spell: captions spell each word, letter by letter ('the word "c a t" is ...'), one caption
            token per letter: a letter is then something the caption names (what the word was before
            would give away the letters after it, under teacher forcing).
    """

    vocab_size: int | None = None
    letters: tuple[int, int] = (MIN_LETTERS, MAX_LETTERS)
    words_per_scene: tuple[int, ...] = (1, 2, 3)
    font_share: tuple[float, float] = (0.14, 0.25)
    clutter: tuple[int, int] = (2, 5)
    spell: bool = False


@dataclass(frozen=True)
class SceneKind:
    """A ``scene_of`` kind: shape scenes at even indices (``shapes``), reading scenes of ``curriculum`` (None: none)."""

    shapes: bool
    curriculum: str | None


# Curricula by name (measured in docs/objectives.md, "cpu-reading"). ``cpu``: 256 words of 3-4 letters, 1-2 per
# scene, font 18-29 px at 64 px, 1-3 clutter strokes; too hard for the quickstart-sized tower on 2 cores (no
# objective's tower read beyond a random one's in 2000 caption steps). ``w32``: 32 three-letter words, one per
# scene, font 40-50 % of the side, at most one clutter stroke: what ``ov2 compare --recipe cpu-reading`` trains on.
# ``s32``: ``w32``'s scenes with spelled captions.
DEFAULT_CURRICULUM = ReadingCurriculum()
CURRICULA: dict[str, ReadingCurriculum] = {
    "default": DEFAULT_CURRICULUM,
    "cpu": ReadingCurriculum(vocab_size=256, letters=(3, 4), words_per_scene=(1, 2), font_share=(0.28, 0.45),
                             clutter=(1, 3)),
    "w32": ReadingCurriculum(vocab_size=32, letters=(3, 3), words_per_scene=(1,), font_share=(0.4, 0.5), clutter=(0, 1)),
    "s32": ReadingCurriculum(vocab_size=32, letters=(3, 3), words_per_scene=(1,), font_share=(0.4, 0.5), clutter=(0, 1),
                             spell=True),
}
SCENE_KINDS: dict[str, SceneKind] = {
    "shapes": SceneKind(True, None),
    "reading": SceneKind(False, "default"),
    "mixed": SceneKind(True, "default"),
    **{f"{prefix}-{name}": SceneKind(prefix == "mixed", name) for name in CURRICULA if name != "default"
       for prefix in ("reading", "mixed")},
}


def _scene_kind(kind: str) -> SceneKind:
    if kind not in SCENE_KINDS:
        raise ValueError(f"Unknown scene kind {kind!r}; use one of {', '.join(SCENE_KINDS)}.")
    return SCENE_KINDS[kind]


def reading_kind(kind: str) -> str:
    """The kind of ``kind``'s reading scenes alone (``reading`` for ``shapes``): what reading probes and questions use."""
    name = _scene_kind(kind).curriculum or "default"
    return next(k for k, v in SCENE_KINDS.items() if v == SceneKind(False, name))


def mixed_kind(kind: str) -> str:
    """Shape scenes interleaved with ``kind``'s reading scenes (``mixed`` for ``shapes``): what the evaluations use."""
    name = _scene_kind(kind).curriculum or "default"
    return next(k for k, v in SCENE_KINDS.items() if v == SceneKind(True, name))


def curriculum_of(kind: str) -> ReadingCurriculum:
    """The reading curriculum of ``kind`` (the default one for ``shapes``)."""
    return CURRICULA[_scene_kind(kind).curriculum or "default"]


def _hash_order(word: str) -> bytes:
    return hashlib.sha256(f"ov2-curriculum/{word}".encode()).digest()


@lru_cache(maxsize=16)
def curriculum_words(curriculum: ReadingCurriculum = DEFAULT_CURRICULUM) -> dict[str, tuple[str, ...]]:
    """{'train': words, 'held_out': words} of ``curriculum``, each sorted (a word's index is its class).

    The training subset is fixed: the first ``vocab_size`` words of the right length in the order of a
    hash of the word, so it does not depend on the vocabulary file's order or on the other settings.
    """
    lo, hi = curriculum.letters
    if not MIN_LETTERS <= lo <= hi <= MAX_LETTERS:
        raise ValueError(f"Curriculum letters {curriculum.letters} must lie within {MIN_LETTERS}-{MAX_LETTERS}.")
    words = {split: tuple(w for w in v if lo <= len(w) <= hi) for split, v in reading_words().items()}
    if curriculum.vocab_size is not None:
        if not 0 < curriculum.vocab_size <= len(words["train"]):
            raise ValueError(f"Curriculum vocab_size {curriculum.vocab_size} must be 1-{len(words['train'])} "
                             f"(training words of {lo}-{hi} letters).")
        words["train"] = tuple(sorted(sorted(words["train"], key=_hash_order)[:curriculum.vocab_size]))
    return words


@dataclass(frozen=True)
class ReadingScene:
    words: tuple[str, ...]  # top to bottom
    colour: str  # a TEXT_COLOURS name
    background: tuple[int, int, int]
    layout: tuple[tuple[float, float, float], ...]  # per word: font size / side, x in [0, 1] of the free width, y jitter
    clutter: tuple[tuple, ...]  # (kind, x0, y0, x1, y1, rgb) in fractions of the side
    spelled: bool = False  # the caption spells each word

    @property
    def caption(self) -> str:
        quoted = [f'"{" ".join(w) if self.spelled else w}"' for w in self.words]
        if len(quoted) == 1:
            return f"the word {quoted[0]} is written in {self.colour}."
        listed = ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
        return f"the words {listed} are written in {self.colour}."

    def render(self, size: int = 64) -> Image.Image:
        return render_reading_scene(self, size)


def make_reading_scene(seed: int, index: int, split: str = "train",
                       curriculum: ReadingCurriculum = DEFAULT_CURRICULUM) -> ReadingScene:
    """Reading scene ``index`` of stream ``seed``, words drawn from ``split`` ('train' or 'held_out')
    of ``curriculum``'s vocabulary (the default: the built-in task, as it always was)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown reading split {split!r}; use 'train' or 'held_out'.")
    rng = random.Random(f"ov2-reading/{split}/{seed}/{index}")
    vocab = curriculum_words(curriculum)[split]
    words = tuple(rng.choice(vocab) for _ in range(rng.choice(curriculum.words_per_scene)))
    colour = rng.choice(list(TEXT_COLOURS))
    ink = TEXT_COLOURS[colour]
    while True:  # a background far enough from the ink to be readable
        background = tuple(rng.randint(0, 120) for _ in range(3))
        if sum(abs(a - b) for a, b in zip(background, ink)) > 150:
            break
    layout = tuple((rng.uniform(*curriculum.font_share), rng.random(), rng.uniform(-0.15, 0.15)) for _ in words)
    clutter = []
    for _ in range(rng.randint(*curriculum.clutter)):
        kind = rng.choice(("line", "box", "dot"))
        x0, y0 = rng.random(), rng.random()
        x1, y1 = x0 + rng.uniform(-0.4, 0.4), y0 + rng.uniform(-0.4, 0.4)
        clutter.append((kind, x0, y0, x1, y1, tuple(rng.randint(60, 255) for _ in range(3))))
    return ReadingScene(words, colour, background, layout, tuple(clutter), curriculum.spell)


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
    """Scene ``index`` of ``kind`` (``SCENE_KINDS``: shapes; reading; mixed: even indices shapes, odd reading)."""
    spec = _scene_kind(kind)
    if spec.curriculum is None or (spec.shapes and index % 2 == 0):
        return make_scene(seed, index)
    return make_reading_scene(seed, index, split, CURRICULA[spec.curriculum])
