"""The LLaVA pipeline the experiments run on built-in data, from code (no argv, no patching).

- ``pretrain_tower``: ``ov2 pretrain --recipe quickstart``, shortened, through ``pretrain.run_pretraining``;
- ``make_language_model``: a random word-level Llama over the questions' words;
- ``run_pipeline``: stage 1 (projector on captions) then LoRA stage 2, through ``llava.train.run_training``;
- ``greedy_answers``: greedy answers to questions, right or wrong by their first word;
- ``start_beside``: a second pipeline in a child process, on half of the CPU threads.

Used by ``llava_end_to_end``, ``llava_anyres_end_to_end`` and ``ov2 compare`` (``evaluation.llava``). The
device is an argument (``use_cpu``) of every function that trains or generates.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.instructions import vocabulary
from ..llava.build import IMAGE_TOKEN, load_llava
from ..llava.tiny import build_word_tokenizer, tiny_llama_config


def pretrain_tower(out: Path, image_size: int, steps: int, batch: int, seed: int, bf16: bool,
                   use_cpu: bool = True) -> Path:
    """``ov2 pretrain`` with the quickstart recipe (model, data, optimiser) at ``image_size``, for ``steps``
    steps of ``batch`` scenes; no held-out captioning report, no checkpoints."""
    from ..pretrain import DataArguments, ModelArguments, PretrainArguments, run_pretraining

    train = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, save_strategy="no",
                 use_cpu=use_cpu, bf16=bf16, seed=seed)
    # the fields set here win over the recipe's values, as flags on the command line do
    run_pretraining(ModelArguments(image_size=image_size), DataArguments(recipe="quickstart", eval_samples=0),
                    PretrainArguments(**train), explicit=frozenset({"image_size", "eval_samples", *train}))
    return out


def make_language_model(out: Path, cfg: dict, words: list[str] | None = None,
                        special_tokens: tuple[str, ...] = ()) -> Path:
    """A random word-level Llama over ``words`` (the built-in questions' by default); ``special_tokens`` get rows
    of their own here, before the weights are drawn (a token ``build_llava`` appends later gets the mean output
    row, which LoRA, with the head frozen, can never make the likeliest). ``cfg``: ``lm_hidden``, ``lm_layers``,
    ``seed`` and, if set, ``lm_heads``."""
    from transformers import LlamaForCausalLM

    tokenizer = build_word_tokenizer(vocabulary() if words is None else words)
    if special_tokens:
        tokenizer.add_tokens(list(special_tokens), special_tokens=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(cfg["seed"])
    # Fan-in init (1/sqrt(width)) instead of transformers' 0.02: LoRA leaves the head and the final
    # norm frozen, and with a 0.02 head on 128-wide states no logit can exceed ~2.5, which caps
    # how sure any answer can get (stage 2's loss sat at 3.4 nats whatever the tower).
    heads = {"num_attention_heads": cfg["lm_heads"], "num_key_value_heads": cfg["lm_heads"]} if "lm_heads" in cfg else {}
    config = tiny_llama_config(len(tokenizer), cfg["lm_hidden"], cfg["lm_layers"],
                               initializer_range=cfg["lm_hidden"] ** -0.5, **heads)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def run_pipeline(tower: Path, lm: Path, data: Path, out: Path, cfg: dict, use_cpu: bool = True,
                 arch: str | None = None, image_grid_pinpoints: str | None = None,
                 instructions: str = "instructions_0.json", model_max_length: int = 128) -> tuple[Path, dict]:
    """``ov2 llava-train`` twice: stage 1 (projector only, 'plain' template, ``data/captions_0.json``) then
    stage 2 (LoRA r ``lora_r`` / alpha 2 r, LLaVA-1.5's ratio, + projector, ``data/<instructions>``), in
    ``out/stage1`` and ``out/stage2``. ``cfg``: ``batch``, ``seed``, ``stage1_steps``, ``stage2_steps``,
    ``lora_r``. ``arch`` / ``image_grid_pinpoints``: the LLaVA family of the new model and its tiles.
    Returns the merged model's folder and each stage's wall time."""
    from ..llava.train import DataArguments, LlavaTrainingArguments, ModelArguments, run_training

    def training(output_dir: Path, **stage) -> LlavaTrainingArguments:
        return LlavaTrainingArguments(
            output_dir=str(output_dir), use_cpu=use_cpu, per_device_train_batch_size=cfg["batch"], seed=cfg["seed"],
            logging_steps=20, dataloader_num_workers=0, model_max_length=model_max_length, learning_rate=1e-3, **stage)

    wall, t = {}, time.time()
    run_training(
        ModelArguments(vision_tower=f"ov2:{tower}", language_model=str(lm), arch=arch,
                       image_grid_pinpoints=image_grid_pinpoints),
        DataArguments(data_path=str(data / "captions_0.json"), version="plain"),
        training(out / "stage1", tune_mm_mlp_adapter=True, max_steps=cfg["stage1_steps"], warmup_steps=0.1))
    wall["stage1"], t = time.time() - t, time.time()
    run_training(
        ModelArguments(model_name_or_path=str(out / "stage1")),
        DataArguments(data_path=str(data / instructions)),
        training(out / "stage2", lora_enable=True, lora_r=cfg["lora_r"], lora_alpha=2 * cfg["lora_r"],
                 lora_dropout=0.0, mm_projector_lr=2e-3, warmup_steps=0.05, lr_scheduler_type="cosine",
                 weight_decay=0.0, merge_lora=True, max_steps=cfg["stage2_steps"]))
    wall["stage2"] = time.time() - t
    return out / "stage2" / "merged", wall


@torch.no_grad()
def greedy_answers(model_dir: Path, records: list[dict], render: Callable[[dict], object], batch: int = 64,
                   use_cpu: bool = True) -> list[tuple[bool, int]]:
    """For each question record (LLaVA conversation: the question, then the one-word answer) shown with the
    image ``render(record)``: whether the greedy answer's first word is the record's answer, and how many
    ``<image>`` placeholders the image became (the image tokens the language model reads)."""
    device = "cpu" if use_cpu else "cuda"
    model, processor = load_llava(model_dir)
    model.eval().to(device)
    processor.tokenizer.padding_side = "left"
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    results = []
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        texts = [processor.apply_chat_template([{"role": "user", "content": r["conversations"][0]["value"]}],
                                               add_generation_prompt=True) for r in chunk]
        inputs = processor(images=[render(r) for r in chunk], text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(device)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
        for r, answer, ids in zip(chunk, answers, inputs.input_ids):
            results.append((answer.split()[:1] == [r["conversations"][1]["value"]], int((ids == image_id).sum())))
    return results


def scene_index(record: dict) -> int:
    """The index of the scene a built-in question record asks about (its id is ``<seed>-<index>-<question>``)."""
    return int(record["id"].split("-")[1])


def start_beside(module: str, args: list[str], log: Path) -> subprocess.Popen:
    """``python -m module *args`` in a child process; this process keeps half of the threads, the child the rest.

    Why: stage 1, stage 2 and the evaluation are many small ops that do not use two cores well,
    so two pipelines side by side finish much sooner than one after the other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads - threads // 2))}
    with open(log, "w") as handle:  # the child keeps its own copy of the file
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=handle, stderr=subprocess.STDOUT)
