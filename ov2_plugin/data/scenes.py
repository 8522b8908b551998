"""The built-in data: seeded, procedurally drawn scenes with exact captions.

A scene holds one or two groups of identical shapes (shape, colour, count) placed in the
cells of a 3x3 grid, and sometimes a rendered word, so that captions exercise colour, shape,
count, position and text reading. Scene ``i`` of seed ``s`` is always the same picture, drawn
at whatever resolution is asked for, so any number of samples can be made on the fly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
COUNT_WORDS = ("zero", "one", "two", "three", "four")
COLUMN_NAMES = ("left", "middle", "right")
WORDS = ("cat", "dog", "sun", "car", "tree", "fish", "bird", "moon", "star", "box", "cup", "hat")
WORD_PLACES = ("top", "bottom")
MAX_COUNT = 3


@dataclass(frozen=True)
class ObjectGroup:
    shape: str
    colour: str
    cells: tuple[int, ...]  # grid cells 0..8, row-major; one per object

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def column(self) -> str:
        """Where a single object sits horizontally (used only when count == 1)."""
        return COLUMN_NAMES[self.cells[0] % 3]

    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        text = f"{COUNT_WORDS[self.count]} {self.colour} {noun}"
        if self.count == 1:
            text += " in the middle" if self.column == "middle" else f" on the {self.column}"
        return text


@dataclass(frozen=True)
class Scene:
    groups: tuple[ObjectGroup, ...]
    word: str | None = None
    word_place: str | None = None
    background: tuple[int, int, int] = (20, 20, 20)
    jitter: tuple[float, ...] = field(default=(), repr=False)  # per-object offsets, for variety

    @property
    def caption(self) -> str:
        text = " and ".join(g.phrase() for g in self.groups) + "."
        if self.word:
            text += f' the word "{self.word}" is written at the {self.word_place}.'
        return text

    def render(self, size: int = 64) -> Image.Image:
        return render_scene(self, size)


def make_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the stream ``seed``: independent of any other index, so streams shard freely."""
    rng = random.Random(f"ov2-scenes/{seed}/{index}")
    with_word = rng.random() < 0.5
    # A word occupies the top or bottom row; shapes then use the two other rows.
    word_place = rng.choice(WORD_PLACES) if with_word else None
    rows = [r for r in range(3) if not (word_place == "top" and r == 0) and not (word_place == "bottom" and r == 2)]
    free = [r * 3 + c for r in rows for c in range(3)]
    rng.shuffle(free)
    shapes = rng.sample(SHAPES, rng.choice((1, 2)))
    groups = []
    for shape in shapes:
        count = rng.randint(1, MAX_COUNT)
        cells = tuple(sorted(free[:count]))
        free = free[count:]
        groups.append(ObjectGroup(shape, rng.choice(list(COLOURS)), cells))
    # Groups are named in reading order of their first object, so the caption is a function of
    # the picture alone; a random order would make the first group's words a coin toss.
    groups.sort(key=lambda g: g.cells[0])
    jitter = tuple(rng.uniform(-0.08, 0.08) for _ in range(2 * 9))
    background = tuple(rng.randint(0, 50) for _ in range(3))
    return Scene(tuple(groups), rng.choice(WORDS) if with_word else None, word_place, background, jitter)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image of ``size`` x ``size`` pixels."""
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for group in scene.groups:
        for c in group.cells:
            row, col = divmod(c, 3)
            dx, dy = scene.jitter[2 * c : 2 * c + 2] or (0.0, 0.0)
            cx, cy = (col + 0.5 + dx) * cell, (row + 0.5 + dy) * cell
            _draw_shape(draw, group.shape, cx, cy, cell * 0.32, COLOURS[group.colour])
    if scene.word:
        font = ImageFont.load_default(size=max(8, int(cell * 0.7)))
        cy = cell * 0.5 if scene.word_place == "top" else cell * 2.5
        draw.text((size / 2, cy), scene.word.upper(), fill=(255, 255, 255), font=font, anchor="mm")
    return img

