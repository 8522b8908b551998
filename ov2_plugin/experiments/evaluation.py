"""The evaluations every tower of a comparison gets, whatever objective trained it.

- ``probes``: ``ov2 probe``'s linear probes (the shape attributes, and letters on the reading task
  for seen and held-out words), patch and pooled views;
- ``retrieval``: zero-shot image <-> caption retrieval on held-out scenes, for objectives with a text tower;
- ``llava``: the LLaVA pipeline of ``llava_pipeline`` (as ``llava_end_to_end``: stage 1 projector on captions,
  stage 2 LoRA on built-in questions, greedy answers to held-out questions), on the mixed data:
  the shape questions plus the reading question (first letter), on seen and on held-out words.

``scene_kind`` (a ``data/reading.py`` kind, the recipe's pretraining data) picks the reading scenes of
every evaluation: its curriculum's words, sizes and clutter (``mixed``, the default, is the built-in task).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..data.instructions import QUESTION_TYPES, instruction_records, write_dataset
from ..data.reading import mixed_kind, reading_kind, scene_of
from ..evaluation.scene_probe import probe_reading, probe_towers
from .llava_pipeline import greedy_answers, run_pipeline, scene_index

EVAL_SEED = 1  # held-out scenes: a stream no training step or probe fit ever drew


def probes(tower: Path, cfg: dict, scene_kind: str = "mixed") -> dict:
    """{view: {task: accuracy}} for reading_seen, reading_unseen (and reading_word_seen where the
    curriculum's vocabulary is limited) and the shape attributes."""
    shapes = probe_towers({"t": tower}, cfg["train_scenes"], cfg["test_scenes"])
    reading = probe_reading({"t": tower}, cfg["train_scenes"], cfg["test_scenes"], kind=reading_kind(scene_kind))
    views = {v: {**reading["towers"]["t"][v], **shapes["towers"]["t"][v]} for v in ("patch", "pooled")}
    return {**views, "majority": {**reading["majority"], **shapes["majority"]}}


@torch.no_grad()
def retrieval(tower: Path, num_scenes: int, image_size: int, batch: int = 64, scene_kind: str = "mixed") -> dict:
    """Image -> text and text -> image recall@1 among ``num_scenes`` held-out mixed scenes (of ``scene_kind``'s curriculum).

    A retrieved caption counts as right when its text equals the true one (two shape scenes can
    share a caption). Scenes are rendered at the tower's size and preprocessed by its processor.
    """
    from transformers import AutoImageProcessor

    from ..baselines import load_objective_model
    from ..tokenization import build_caption_tokenizer

    model = load_objective_model(tower).eval()
    processor = AutoImageProcessor.from_pretrained(tower)
    tokenizer = build_caption_tokenizer(model.config.decoder_config.max_length)
    scenes = [scene_of(mixed_kind(scene_kind), EVAL_SEED, i) for i in range(num_scenes)]
    captions = [s.caption for s in scenes]
    images, texts = [], []
    for start in range(0, num_scenes, batch):
        chunk = scenes[start:start + batch]
        pixels = processor([s.render(image_size) for s in chunk], return_tensors="pt")["pixel_values"]
        images.append(model.embed_image(pixels))
        ids = tokenizer([s.caption for s in chunk], padding=True, truncation=True, return_tensors="pt").input_ids
        texts.append(model.embed_text(ids))
    sims = torch.cat(images) @ torch.cat(texts).t()  # [N images, N texts]
    i2t = sum(captions[j] == captions[i] for i, j in enumerate(sims.argmax(1).tolist())) / num_scenes
    t2i = sum(captions[j] == captions[i] for i, j in enumerate(sims.argmax(0).tolist())) / num_scenes
    return {"image_to_text_r1": i2t, "text_to_image_r1": t2i, "scenes": num_scenes, "chance_r1": 1 / num_scenes}


def make_llava_data(out: Path, cfg: dict, image_size: int, scene_kind: str = "mixed") -> Path:
    """Stage 1 captions and stage 2 questions on mixed scenes of training words (seed 0)."""
    write_dataset(out, "captions", 0, cfg["stage1_scenes"], image_size, scenes=mixed_kind(scene_kind))
    write_dataset(out, "instructions", 0, cfg["stage2_scenes"], image_size, scenes=mixed_kind(scene_kind))
    return out


def llava(tower: Path, lm: Path, data: Path, out: Path, cfg: dict, seed: int, image_size: int,
          use_cpu: bool, scene_kind: str = "mixed") -> dict:
    """Stage 1 + LoRA stage 2 (``llava_pipeline.run_pipeline``), then held-out accuracy per question type."""
    merged, _ = run_pipeline(tower, lm, data, out, {**cfg, "seed": seed}, use_cpu)
    return answer_accuracy(merged, cfg["eval_scenes"], image_size, use_cpu=use_cpu, scene_kind=scene_kind)


def held_out_questions(num_scenes: int, scene_kind: str = "mixed") -> list[tuple[str, dict]]:
    """(task, record): shape questions on shape scenes; the letter question on ``scene_kind``'s reading
    scenes of training words (``letter_seen``) and of held-out words (``letter_unseen``)."""
    out = [(r["question_type"], r) for r in instruction_records(EVAL_SEED, num_scenes)]
    for split, task in (("train", "letter_seen"), ("held_out", "letter_unseen")):
        out += [(task, r) for r in instruction_records(EVAL_SEED, num_scenes, scenes=reading_kind(scene_kind), split=split)]
    return out


def answer_accuracy(model_dir: Path, num_scenes: int, image_size: int, batch: int = 64, use_cpu: bool = True,
                    scene_kind: str = "mixed") -> dict:
    """Greedy answers to ``held_out_questions``, exact match of the first word, per task."""
    items = held_out_questions(num_scenes, scene_kind)
    answers = greedy_answers(model_dir, [r for _, r in items], lambda r: _record_scene(r).render(image_size), batch,
                             use_cpu)
    hits, totals = Counter(), Counter()
    for (task, _), (right, _) in zip(items, answers):
        totals[task] += 1
        hits[task] += right
    order = ["letter_seen", "letter_unseen", *QUESTION_TYPES]
    return {"per_task": {t: hits[t] / totals[t] for t in order if totals[t]}, "counts": {t: totals[t] for t in order if totals[t]}}


def _record_scene(record: dict):
    return scene_of(record.get("scene_kind", "shapes"), EVAL_SEED, scene_index(record), record.get("split", "train"))
