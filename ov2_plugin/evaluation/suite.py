"""An offline benchmark suite from the built-in scenes, written in each framework's own format.

The public benchmarks OpenVision 2 is judged on cannot be downloaded here, so this suite asks
the same kinds of questions about the built-in scenes, scored with the same metrics:

============================  ==========================  ===============================
task                          like                        metric
============================  ==========================  ===============================
ov2_text                      TextVQA / OCRBench          VQA accuracy, 10 annotators
ov2_count, ov2_colour,        GQA / VQAv2 open answers    VQA accuracy, 10 annotators
ov2_position
ov2_pope_{random,popular,     POPE                        accuracy, precision, recall, F1,
adversarial}                                              yes-ratio
ov2_mme                       MME (paired yes/no)         perception score (acc + acc+)
ov2_choice                    SEED / ScienceQA-IMG        letter accuracy
============================  ==========================  ===============================

Questions are phrased as the built-in LLaVA instruction data phrases them
(:mod:`ov2_plugin.data.instructions`), so a model tuned on that data answers in the expected
form. The annotator answers of the open tasks vary as real annotators do (articles, case,
punctuation, digits vs number words, the odd wrong answer) so the normalisation matters.

``write_suite(out, seed, num_scenes)`` writes::

    out/lmms_eval/<task>.yaml + utils.py   lmms-eval tasks (``--include_path out/lmms_eval``)
    out/lm_eval/<task>.yaml + utils.py     lm-eval tasks (``TaskManager(include_path=...)``)
    out/data/<task>.parquet                the documents both read (images embedded as PNG)
    out/vlmeval/<NAME>.tsv                 VLMEvalKit benchmark files (``LMUData=out/vlmeval``)
    out/suite.json                         what was written, with the seed

The same seed gives byte-identical data files; YAMLs name the data by absolute path.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.instructions import LETTERS
from ..data.scenes import COLOURS, COUNT_WORDS, SHAPES, WORDS, Scene, make_scene

DEFAULT_SEED = 20_251_126  # distinct from the training seeds of the built-in data

# task -> (kind, VLMEvalKit TSV name). The TSV name picks VLMEvalKit's scoring rule by substring
# ("TextVQA" -> VQA accuracy, "POPE" -> POPE rating, "MME" -> MME rating).
TASKS: dict[str, tuple[str, str]] = {
    "ov2_text": ("vqa", "OV2Suite_TextVQA_text"),
    "ov2_count": ("vqa", "OV2Suite_TextVQA_count"),
    "ov2_colour": ("vqa", "OV2Suite_TextVQA_colour"),
    "ov2_position": ("vqa", "OV2Suite_TextVQA_position"),
    "ov2_pope_random": ("pope", "OV2Suite_POPE_random"),
    "ov2_pope_popular": ("pope", "OV2Suite_POPE_popular"),
    "ov2_pope_adversarial": ("pope", "OV2Suite_POPE_adversarial"),
    "ov2_mme": ("mme", "OV2Suite_MME"),
    "ov2_choice": ("choice", "OV2Suite_MCQ_choice"),
}
VLMEVAL_NAMES = {tsv: task for task, (_, tsv) in TASKS.items()}


@dataclass
class Item:
    """One question. ``question_id`` names the image; MME's two questions per image share it."""

    index: int
    question_id: str
    scene: Scene = field(repr=False)
    question: str
    answer: str
    answers: list[str] = field(default_factory=list)
    category: str = ""
    choices: list[str] = field(default_factory=list)


def _plural(shape: str) -> str:
    return shape + "s"


def _annotators(rng: random.Random, variants: list[str], wrong: list[str], n: int = 10) -> list[str]:
    """``n`` answers: mostly spellings of the truth, sometimes (p=0.1 each) a wrong one."""
    return [rng.choice(wrong) if wrong and rng.random() < 0.1 else rng.choice(variants) for _ in range(n)]


def _text_item(scene: Scene, rng: random.Random) -> tuple[str, str, list[str]]:
    w = scene.word
    variants = [w, w, w, w.upper(), f"the {w}", f"{w}.", f'"{w}"', f"a {w}", w.capitalize()]
    return "what word is written?", w, _annotators(rng, variants, [x for x in WORDS if x != w])


def _count_item(scene: Scene, rng: random.Random) -> tuple[str, str, list[str]]:
    g = rng.choice(scene.groups)
    word = COUNT_WORDS[g.count]
    variants = [word, word, str(g.count), str(g.count), f"{word}.", word.capitalize(), f"{g.count} {_plural(g.shape)}"]
    wrong = [c for c in COUNT_WORDS[1:] if c != word]
    return f"how many {_plural(g.shape)} are there?", word, _annotators(rng, variants, wrong)


def _colour_item(scene: Scene, rng: random.Random) -> tuple[str, str, list[str]]:
    g = rng.choice(scene.groups)
    variants = [g.colour, g.colour, g.colour.upper(), f"{g.colour}.", f"{g.colour}!", f"the {g.colour}"]
    return f"what colour are the {_plural(g.shape)}?", g.colour, _annotators(rng, variants, [c for c in COLOURS if c != g.colour])


def _position_item(scene: Scene, rng: random.Random) -> tuple[str, str, list[str]] | None:
    singles = [g for g in scene.groups if g.count == 1]
    if not singles:
        return None
    g = rng.choice(singles)
    variants = [g.column, g.column, f"{g.column}.", f"the {g.column}", f"on the {g.column}", g.column.capitalize()]
    wrong = [c for c in ("left", "middle", "right") if c != g.column]
    return f"where is the {g.shape}?", g.column, _annotators(rng, variants, wrong)


def _presence_question(colour: str, shape: str) -> str:
    return f"is there a {colour} {shape}?"


def _negative(scene: Scene, strategy: str, rng: random.Random, popular: list[tuple[str, str]]) -> tuple[str, str]:
    """An absent (colour, shape): POPE's random / popular (frequent in the suite) / adversarial
    (co-occurring: a present shape in another colour, or a present colour on another shape)."""
    present = {(g.colour, g.shape) for g in scene.groups}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    if strategy == "popular":
        return next(p for p in popular if p not in present)
    if strategy == "adversarial":
        near = [(c, s) for (c, s) in absent if any(c == pc or s == ps for pc, ps in present)]
        return rng.choice(near or absent)
    return rng.choice(absent)


def _mme_pair(scene: Scene, category: str, rng: random.Random) -> tuple[str, str] | None:
    """(yes question, no question) about one image for an MME perception category."""
    g = rng.choice(scene.groups)
    if category == "existence":
        c, s = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in {(x.colour, x.shape) for x in scene.groups}])
        return _presence_question(g.colour, g.shape), _presence_question(c, s)
    if category == "count":
        other = rng.choice([n for n in range(1, 4) if n != g.count])
        return (f"are there {COUNT_WORDS[g.count]} {_plural(g.shape)}?", f"are there {COUNT_WORDS[other]} {_plural(g.shape)}?")
    if category == "color":
        other = rng.choice([c for c in COLOURS if c != g.colour])
        return f"are the {_plural(g.shape)} {g.colour}?", f"are the {_plural(g.shape)} {other}?"
    if category == "position":
        singles = [x for x in scene.groups if x.count == 1]
        if not singles:
            return None
        s = singles[0]
        other = rng.choice([c for c in ("left", "middle", "right") if c != s.column])
        return f"is the {s.shape} on the {s.column}?", f"is the {s.shape} on the {other}?"
    if category == "OCR":
        if not scene.word:
            return None
        other = rng.choice([w for w in WORDS if w != scene.word])
        return f'is the word "{scene.word}" written?', f'is the word "{other}" written?'
    raise ValueError(f"unknown MME category {category!r}")


def build_items(seed: int = DEFAULT_SEED, num_scenes: int = 20) -> dict[str, list[Item]]:
    """Every task's questions over scenes ``0..num_scenes-1`` of ``seed``; deterministic."""
    scenes = [make_scene(seed, i) for i in range(num_scenes)]
    counts = Counter((g.colour, g.shape) for s in scenes for g in s.groups)
    popular = [p for p, _ in counts.most_common()] + [(c, s) for c in COLOURS for s in SHAPES]
    tasks: dict[str, list[Item]] = {name: [] for name in TASKS}

    def add(task: str, i: int, **kw) -> None:
        tasks[task].append(Item(index=len(tasks[task]), question_id=f"{seed}-{i}", scene=scenes[i], **kw))

    for i, scene in enumerate(scenes):
        rng = random.Random(f"ov2-suite/{seed}/{i}")
        if scene.word:
            q, a, answers = _text_item(scene, rng)
            add("ov2_text", i, question=q, answer=a, answers=answers, category="text")
        for task, maker in (("ov2_count", _count_item), ("ov2_colour", _colour_item), ("ov2_position", _position_item)):
            made = maker(scene, rng)
            if made:
                add(task, i, question=made[0], answer=made[1], answers=made[2], category=task[4:])
        g = rng.choice(scene.groups)
        for strategy in ("random", "popular", "adversarial"):
            task = f"ov2_pope_{strategy}"
            add(task, i, question=_presence_question(g.colour, g.shape), answer="yes", category=strategy)
            c, s = _negative(scene, strategy, rng, popular)
            add(task, i, question=_presence_question(c, s), answer="no", category=strategy)
        for category in ("existence", "count", "color", "position", "OCR"):
            pair = _mme_pair(scene, category, rng)
            if pair:
                for q, a in zip(pair, ("yes", "no")):
                    tasks["ov2_mme"].append(
                        Item(len(tasks["ov2_mme"]), f"{seed}-{i}-{category}", scene, q, a, category=category)
                    )
        present = [x.shape for x in scene.groups]
        options = [rng.choice(present), *rng.sample([s for s in SHAPES if s not in present], 2)]
        correct = options[0]
        rng.shuffle(options)
        listed = " ".join(f"{letter}. {shape}" for letter, shape in zip(LETTERS, options))
        add("ov2_choice", i, question=f"which shape is in the image? {listed}. answer with the letter.",
            answer=LETTERS[options.index(correct)], category="shape", choices=options)
    return tasks


# ---------------------------------------------------------------- writers


def _png(scene: Scene, size: int) -> bytes:
    buf = io.BytesIO()
    scene.render(size).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(items: list[Item], path: Path, image_size: int) -> None:
    """One task's documents as parquet with an ``image`` column that ``datasets`` decodes to PIL."""
    import datasets

    features = datasets.Features({
        "index": datasets.Value("int64"),
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "category": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
    })
    rows = [
        {
            "index": it.index, "question_id": it.question_id, "image": {"bytes": _png(it.scene, image_size), "path": None},
            "question": it.question, "answer": it.answer, "answers": it.answers, "category": it.category,
            "choices": it.choices,
        }
        for it in items
    ]
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def write_tsv(task: str, items: list[Item], path: Path, image_size: int) -> None:
    """VLMEvalKit's benchmark TSV: ``index, image (base64 PNG), image_path, question, answer, category``
    (+ ``A, B, C`` for multiple choice). Yes/no answers are "Yes"/"No" and MC answers capital
    letters, as VLMEvalKit's scorers expect; VQA answers are the annotators' list."""
    import pandas as pd

    kind = TASKS[task][0]
    rows = []
    for it in items:
        row = {
            "index": it.index,
            "image": base64.b64encode(_png(it.scene, image_size)).decode(),
            "image_path": f"{it.question_id}.png",
            "question": it.question,
            "answer": it.answer.capitalize() if kind in ("pope", "mme") else it.answer if kind == "choice" else str(it.answers),
            "category": it.category,
        }
        if kind == "choice":
            row.update(dict(zip(LETTERS, it.choices)))
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def write_suite(out_dir: str | Path, seed: int = DEFAULT_SEED, num_scenes: int = 20, image_size: int = 64,
                tasks: list[str] | None = None) -> dict:
    """Write the suite for all three frameworks; return the manifest also saved as ``suite.json``."""
    from .tasks import lm_eval_yaml, lmms_eval_yaml

    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise ValueError(f"Unknown suite task(s) {unknown}; the suite has {sorted(TASKS)}.")
    out = Path(out_dir).resolve()
    for sub in ("data", "lmms_eval", "lm_eval", "vlmeval"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    items = build_items(seed, num_scenes)
    chosen = tasks or list(TASKS)
    for task in chosen:
        parquet = out / "data" / f"{task}.parquet"
        write_parquet(items[task], parquet, image_size)
        write_tsv(task, items[task], out / "vlmeval" / f"{TASKS[task][1]}.tsv", image_size)
        (out / "lmms_eval" / f"{task}.yaml").write_text(lmms_eval_yaml(task, TASKS[task][0], parquet))
        (out / "lm_eval" / f"{task}.yaml").write_text(lm_eval_yaml(task, TASKS[task][0], parquet))
    shim = '"""Task functions of the ov2 suite; they live in the ov2_plugin package."""\n'
    (out / "lmms_eval" / "utils.py").write_text(shim + "from ov2_plugin.evaluation.tasks import *  # noqa: F403\n")
    (out / "lm_eval" / "utils.py").write_text(shim + "from ov2_plugin.evaluation.tasks import *  # noqa: F403\n")
    manifest = {
        "seed": seed, "num_scenes": num_scenes, "image_size": image_size,
        "tasks": {t: {"kind": TASKS[t][0], "vlmeval_name": TASKS[t][1], "size": len(items[t])} for t in chosen},
    }
    (out / "suite.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="ov2 eval suite", description="Write the offline benchmark suite.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--num_scenes", type=int, default=20)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--tasks", default="", help="comma-separated subset (default: all)")
    a = p.parse_args(argv)
    manifest = write_suite(a.out, a.seed, a.num_scenes, a.image_size, [t for t in a.tasks.split(",") if t] or None)
    print(json.dumps(manifest["tasks"], indent=1))


if __name__ == "__main__":
    main()
