"""The evaluations every tower of a comparison gets, whatever objective trained it.

- ``probes``: ``ov2 probe``'s linear probes (the shape attributes, and letters on the reading task
  for seen and held-out words), patch and pooled views;
- ``retrieval``: zero-shot image <-> caption retrieval on held-out scenes, for objectives with a text tower;
- ``llava``: the LLaVA pipeline of ``ov2_plugin.llava.end_to_end`` (stage 1 projector on captions,
  stage 2 LoRA on built-in questions, greedy answers to held-out questions), on the mixed data:
  the shape questions plus the reading question (first letter), on seen and on held-out words.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from ..data.instructions import QUESTION_TYPES, instruction_records, reading_vocabulary, write_dataset
from ..data.reading import scene_of
from ..evaluation.scene_probe import probe_reading, probe_towers

EVAL_SEED = 1  # held-out scenes: a stream no training step or probe fit ever drew


def probes(tower: Path, cfg: dict) -> dict:
    """{view: {task: accuracy}} for reading_seen, reading_unseen and the shape attributes."""
    shapes = probe_towers({"t": tower}, cfg["train_scenes"], cfg["test_scenes"])
    reading = probe_reading({"t": tower}, cfg["train_scenes"], cfg["test_scenes"])
    views = {v: {**reading["towers"]["t"][v], **shapes["towers"]["t"][v]} for v in ("patch", "pooled")}
    return {**views, "majority": {**reading["majority"], **shapes["majority"]}}


@torch.no_grad()
def retrieval(tower: Path, num_scenes: int, image_size: int, batch: int = 64) -> dict:
    """Image -> text and text -> image recall@1 among ``num_scenes`` held-out mixed scenes.

    A retrieved caption counts as right when its text equals the true one (two shape scenes can
    share a caption). Scenes are rendered at the tower's size and preprocessed by its processor.
    """
    from transformers import AutoImageProcessor

    from ..baselines import load_objective_model
    from ..tokenization import build_caption_tokenizer

    model = load_objective_model(tower).eval()
    processor = AutoImageProcessor.from_pretrained(tower)
    tokenizer = build_caption_tokenizer(model.config.decoder_config.max_length)
    scenes = [scene_of("mixed", EVAL_SEED, i) for i in range(num_scenes)]
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


def make_llava_data(out: Path, cfg: dict, image_size: int) -> Path:
    """Stage 1 captions and stage 2 questions on mixed scenes of training words (seed 0)."""
    write_dataset(out, "captions", 0, cfg["stage1_scenes"], image_size, scenes="mixed")
    write_dataset(out, "instructions", 0, cfg["stage2_scenes"], image_size, scenes="mixed")
    return out


def make_llava_language_model(out: Path, cfg: dict, seed: int) -> Path:
    """The end-to-end run's random word-level Llama, with the reading questions' words (letters)."""
    from transformers import LlamaForCausalLM

    from ..llava.tiny import build_word_tokenizer, tiny_llama_config

    tokenizer = build_word_tokenizer(reading_vocabulary())
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = tiny_llama_config(len(tokenizer), cfg["lm_hidden"], cfg["lm_layers"], initializer_range=cfg["lm_hidden"] ** -0.5)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def llava(tower: Path, lm: Path, data: Path, out: Path, cfg: dict, seed: int, image_size: int) -> dict:
    """Stage 1 + LoRA stage 2 (``end_to_end.run_pipeline``), then held-out accuracy per question type."""
    from ..llava import end_to_end

    with _on_gpu_when_there_is_one():
        merged = end_to_end.run_pipeline(tower, lm, data, out, {**cfg, "seed": seed})
    return answer_accuracy(merged, cfg["eval_scenes"], image_size)


@contextmanager
def _on_gpu_when_there_is_one():
    """``end_to_end.run_pipeline`` passes ``--use_cpu true`` (the end-to-end run is a CPU recipe);
    with a GPU present, this turns that one flag off for its ``ov2 llava-train`` calls, so the GPU
    recipe trains LLaVA on the GPU with exactly the same stages and settings."""
    from ..llava import train

    if not torch.cuda.is_available():
        yield
        return
    real = train.main

    def on_gpu(argv):
        argv = list(argv)
        i = argv.index("--use_cpu")
        return real(argv[:i] + ["--use_cpu", "false"] + argv[i + 2:])

    train.main = on_gpu
    try:
        yield
    finally:
        train.main = real


def held_out_questions(num_scenes: int) -> list[tuple[str, dict]]:
    """(task, record): shape questions on shape scenes; the letter question on reading scenes of
    training words (``letter_seen``) and of held-out words (``letter_unseen``)."""
    out = [(r["question_type"], r) for r in instruction_records(EVAL_SEED, num_scenes)]
    for split, task in (("train", "letter_seen"), ("held_out", "letter_unseen")):
        out += [(task, r) for r in instruction_records(EVAL_SEED, num_scenes, scenes="reading", split=split)]
    return out


@torch.no_grad()
def answer_accuracy(model_dir: Path, num_scenes: int, image_size: int, batch: int = 64) -> dict:
    """Greedy answers, exact match of the first word, per task (as ``end_to_end.evaluate``)."""
    from ..llava.build import load_llava

    model, processor = load_llava(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().to(device)
    processor.tokenizer.padding_side = "left"
    items = held_out_questions(num_scenes)
    hits, totals = defaultdict(int), defaultdict(int)
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        texts = [processor.apply_chat_template([{"role": "user", "content": r["conversations"][0]["value"]}],
                                               add_generation_prompt=True) for _, r in chunk]
        images = [_record_scene(r).render(image_size) for _, r in chunk]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True).to(device)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        for (task, r), answer in zip(chunk, answers):
            words = answer.split()
            totals[task] += 1
            hits[task] += int(bool(words) and words[0] == r["conversations"][1]["value"])
    order = ["letter_seen", "letter_unseen", *QUESTION_TYPES]
    return {"per_task": {t: hits[t] / totals[t] for t in order if totals[t]}, "counts": {t: totals[t] for t in order if totals[t]}}


def _record_scene(record: dict):
    index = int(record["id"].split("-")[1])
    return scene_of(record.get("scene_kind", "shapes"), EVAL_SEED, index, record.get("split", "train"))
