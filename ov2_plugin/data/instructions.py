"""Built-in visual questions over the built-in scenes, in LLaVA's conversation JSON.

Six question types, each with a one-word answer so a small language model learns the format
in minutes and accuracy is exact match: read the word, count, colour, position, yes/no
presence and multiple choice. Scene ``i`` of seed ``s`` always gets the same questions;
training and held-out splits are different seeds, so no test picture is ever seen in training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from .reading import LETTERS as LOWER_LETTERS
from .reading import ReadingScene, scene_of
from .scenes import COLOURS, COUNT_WORDS, SHAPES, WORDS, Scene

QUESTION_TYPES = ("word", "count", "colour", "position", "presence", "choice")
# Reading scenes (data/reading.py): the first letter of the first word, so that a word-level
# language model can answer words it has never seen (held-out words are not in its vocabulary).
READING_QUESTION_TYPES = ("letter",)
LETTERS = ("A", "B", "C")  # upper case, as every MCQ benchmark and its answer parser expects


def _plural(shape: str) -> str:
    return shape + "s"


def scene_questions(scene: Scene | ReadingScene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, answer) for every type that applies to ``scene``."""
    if isinstance(scene, ReadingScene):
        which = "the word" if len(scene.words) == 1 else "the first word"
        return [("letter", f"what letter does {which} start with?", scene.words[0][0])]
    out = []
    if scene.word:
        out.append(("word", "what word is written?", scene.word))
    group = rng.choice(scene.groups)
    out.append(("count", f"how many {_plural(group.shape)} are there?", COUNT_WORDS[group.count]))
    out.append(("colour", f"what colour are the {_plural(group.shape)}?", group.colour))
    singles = [g for g in scene.groups if g.count == 1]
    if singles:
        single = rng.choice(singles)
        out.append(("position", f"where is the {single.shape}?", single.column))
    out.append(_presence(scene, rng))
    out.append(_choice(scene, rng))
    return out


def _presence(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """Half yes (a real group), half no (an absent shape, or a present shape in another colour)."""
    present = {(g.colour, g.shape) for g in scene.groups}
    if rng.random() < 0.5:
        colour, shape = rng.choice(sorted(present))
        answer = "yes"
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colour, shape = rng.choice(absent)
        answer = "no"
    return "presence", f"is there a {colour} {shape}?", answer


def _choice(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """Which of three shapes is in the picture: one present, two absent, shuffled; answer a letter."""
    present = [g.shape for g in scene.groups]
    absent = [s for s in SHAPES if s not in present]
    options = [rng.choice(present), *rng.sample(absent, 2)]  # at most 2 of the 4 shapes are present
    correct = options[0]
    rng.shuffle(options)
    listed = " ".join(f"{letter}. {shape}" for letter, shape in zip(LETTERS, options))
    question = f"which shape is in the image? {listed}. answer with the letter."
    return "choice", question, LETTERS[options.index(correct)]


def _scene_fields(scenes: str, split: str) -> dict:
    """Where a record's picture comes from, on records of reading / mixed data (shapes records stay as they were)."""
    return {} if scenes == "shapes" else {"scene_kind": scenes, "split": split}


def instruction_records(seed: int, num_scenes: int, start: int = 0, scenes: str = "shapes",
                        split: str = "train") -> Iterator[dict]:
    """LLaVA conversation records (one question per record); ``image`` is ``scenes/<seed>_<i>.png``.

    ``scenes``: shapes, reading or mixed (``data/reading.py``); ``split``: the reading words' split.
    """
    for index in range(start, start + num_scenes):
        rng = random.Random(f"ov2-instructions/{seed}/{index}")
        for qtype, question, answer in scene_questions(scene_of(scenes, seed, index, split), rng):
            yield {
                "id": f"{seed}-{index}-{qtype}",
                "image": image_name(seed, index, scenes, split),
                "question_type": qtype,
                **_scene_fields(scenes, split),
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
            }


def caption_records(seed: int, num_scenes: int, start: int = 0, scenes: str = "shapes",
                    split: str = "train") -> Iterator[dict]:
    """Image-caption pairs for projector alignment (stage 1), as LLaVA's pretraining JSON."""
    for index in range(start, start + num_scenes):
        yield {
            "id": f"{seed}-{index}-caption",
            "image": image_name(seed, index, scenes, split),
            **_scene_fields(scenes, split),
            "conversations": [
                {"from": "human", "value": "<image>\n"},
                {"from": "gpt", "value": scene_of(scenes, seed, index, split).caption},
            ],
        }


def image_name(seed: int, index: int, scenes: str = "shapes", split: str = "train") -> str:
    if scenes == "shapes":
        return f"scenes/{seed}_{index}.png"
    return f"scenes/{scenes}-{split}_{seed}_{index}.png"


def write_dataset(out_dir: str | Path, kind: str, seed: int, num_scenes: int, image_size: int = 64,
                  scenes: str = "shapes", split: str = "train") -> Path:
    """Write ``<kind>_<seed>.json`` and the scene images under ``out_dir``; return the JSON path.

    ``kind`` is ``instructions`` or ``captions``. Images are rendered once at ``image_size``.
    ``scenes``/``split`` choose the pictures (shapes by default; reading or mixed, ``data/reading.py``).
    """
    if kind not in ("instructions", "captions"):
        raise ValueError(f"Unknown built-in data kind {kind!r}; use 'instructions' or 'captions'.")
    out = Path(out_dir)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    make = instruction_records if kind == "instructions" else caption_records
    records = list(make(seed, num_scenes, scenes=scenes, split=split))
    for index in range(num_scenes):
        path = out / image_name(seed, index, scenes, split)
        if not path.is_file():
            scene_of(scenes, seed, index, split).render(image_size).save(path)
    json_path = out / f"{kind}_{seed}.json"
    json_path.write_text(json.dumps(records))
    return json_path


def vocabulary() -> list[str]:
    """Every word the built-in captions, questions and answers use (for a word-level tokenizer)."""
    words = {*SHAPES, *map(_plural, SHAPES), *COLOURS, *COUNT_WORDS, *WORDS, *LETTERS, "yes", "no"}
    words |= set(
        "left middle right top bottom on in the and a is word written at there are what how many where".split()
    )
    words |= set("colour which shape image answer with letter user assistant".split())
    return sorted(words)


def reading_vocabulary() -> list[str]:
    """``vocabulary()`` plus what the reading questions and answers use (letters a-z)."""
    return sorted({*vocabulary(), *LOWER_LETTERS, *"what letter does the first word start with".split()})
