"""The whole LLaVA pipeline on the built-in data, offline, pretrained tower vs random tower.

    python -m ov2_plugin.llava.end_to_end --output_dir runs/llava-e2e

1. ``ov2 pretrain``: the quickstart's small tiny OpenVision 2 on the built-in captioned scenes;
2. the same tower architecture with random weights, as the control;
3. for each tower, the identical LLaVA pipeline with the same random Llama and data:
   stage 1 (projector on captions, ``ov2 llava-train --tune_mm_mlp_adapter``) ->
   stage 2 (LoRA instruction tuning on built-in questions) ->
   greedy answers to held-out questions (other scenes, other seed), exact match per type;
4. linear probes of each tower's features on held-out scenes, to tell the tower from the language model.
Writes ``results.json`` and ``results.md``. ``--quick`` shrinks every stage to a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from ..data.instructions import QUESTION_TYPES, instruction_records, vocabulary, write_dataset
from ..data.scenes import make_scene
from ..evaluation.scene_probe import ATTRIBUTES, probe_towers
from .build import load_llava
from .tiny import build_word_tokenizer, tiny_llama_config

FULL = dict(
    image_size=64,
    pretrain_steps=2400,
    pretrain_batch=32,
    stage1_scenes=1000,
    stage1_steps=30,
    stage2_scenes=2000,
    stage2_steps=300,
    lora_r=32,  # see docs/llava_end_to_end.md: r 128 is a full-rank update on this 128-wide model
    batch=32,
    eval_scenes=120,
    lm_hidden=128,
    lm_layers=3,
    probe_train_scenes=2000,
    probe_test_scenes=500,
    seed=0,
)
QUICK = dict(
    image_size=32,
    pretrain_steps=2,
    pretrain_batch=8,
    stage1_scenes=8,
    stage1_steps=2,
    stage2_scenes=8,
    stage2_steps=2,
    lora_r=8,
    batch=4,
    eval_scenes=4,
    lm_hidden=64,
    lm_layers=2,
    probe_train_scenes=40,
    probe_test_scenes=20,
    seed=0,
)


def pretrain_tower(out: Path, cfg: dict, bf16: bool) -> Path:
    """``ov2 pretrain`` with the quickstart's recipe (model, data, optimiser), shortened to ``pretrain_steps``."""
    from ..pretrain import main as pretrain_main

    flags = {
        "recipe": "quickstart", "image_size": cfg["image_size"], "output_dir": out, "max_steps": cfg["pretrain_steps"],
        "per_device_train_batch_size": cfg["pretrain_batch"], "eval_samples": 0, "save_strategy": "no",
        "use_cpu": "true", "bf16": str(bf16).lower(), "seed": cfg["seed"],
    }
    pretrain_main([item for key, value in flags.items() for item in (f"--{key}", str(value))])
    return out


def random_tower(pretrained: Path, out: Path, seed: int) -> Path:
    """The pretrained tower's exact architecture and preprocessing, freshly initialised."""
    from transformers import AutoImageProcessor

    from ..loading import load_vision_model
    from ..modeling_vision import Ov2VisionModel

    config = load_vision_model(pretrained).config
    torch.manual_seed(seed)
    Ov2VisionModel(config).save_pretrained(out)
    AutoImageProcessor.from_pretrained(pretrained).save_pretrained(out)
    return out


def make_language_model(out: Path, cfg: dict, words: list[str] | None = None, special_tokens: tuple[str, ...] = ()) -> Path:
    """A random word-level Llama over ``words`` (the built-in questions' by default); ``special_tokens`` get rows
    of their own here, before the weights are drawn (a token ``build_llava`` appends later gets the mean output
    row, which LoRA, with the head frozen, can never make the likeliest). ``cfg["lm_heads"]``: the heads, if set."""
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


def run_pipeline(tower: Path, lm: Path, data: Path, out: Path, cfg: dict) -> Path:
    from .train import main as train_main

    common = [
        "--use_cpu",
        "true",
        "--per_device_train_batch_size",
        str(cfg["batch"]),
        "--seed",
        str(cfg["seed"]),
        "--logging_steps",
        "20",
        "--dataloader_num_workers",
        "0",
        "--model_max_length",
        "128",
    ]
    train_main(
        [
            "--vision_tower",
            f"ov2:{tower}",
            "--language_model",
            str(lm),
            "--version",
            "plain",
            "--data_path",
            str(data / "captions_0.json"),
            "--tune_mm_mlp_adapter",
            "true",
            "--output_dir",
            str(out / "stage1"),
            "--max_steps",
            str(cfg["stage1_steps"]),
            "--learning_rate",
            "1e-3",
            "--warmup_steps",
            "0.1",
            *common,
        ]
    )
    train_main(
        [
            "--model_name_or_path",
            str(out / "stage1"),
            "--data_path",
            str(data / "instructions_0.json"),
            "--lora_enable",
            "true",
            "--lora_r",
            str(cfg["lora_r"]),
            "--lora_alpha",
            str(2 * cfg["lora_r"]),  # LLaVA-1.5's alpha = 2 r
            "--lora_dropout",
            "0.0",
            "--learning_rate",
            "1e-3",
            "--mm_projector_lr",
            "2e-3",
            "--warmup_steps",
            "0.05",
            "--lr_scheduler_type",
            "cosine",
            "--weight_decay",
            "0.0",
            "--merge_lora",
            "true",
            "--output_dir",
            str(out / "stage2"),
            "--max_steps",
            str(cfg["stage2_steps"]),
            *common,
        ]
    )
    return out / "stage2" / "merged"


@torch.no_grad()
def evaluate(model_dir: Path, cfg: dict, seed: int = 1, batch: int = 64) -> dict:
    """Greedy answers to the held-out questions; accuracy per question type (exact first word)."""
    model, processor = load_llava(model_dir)
    model.eval()
    processor.tokenizer.padding_side = "left"
    records = list(instruction_records(seed, cfg["eval_scenes"]))
    hits, totals = defaultdict(int), defaultdict(int)
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": r["conversations"][0]["value"]}], add_generation_prompt=True
            )
            for r in chunk
        ]
        images = [make_scene(seed, int(r["id"].split("-")[1])).render(cfg["image_size"]) for r in chunk]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        answers = processor.batch_decode(out[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
        for r, a in zip(chunk, answers):
            words = a.split()
            totals[r["question_type"]] += 1
            hits[r["question_type"]] += int(bool(words) and words[0] == r["conversations"][1]["value"])
    per_type = {t: hits[t] / totals[t] for t in QUESTION_TYPES if totals[t]}
    return {"per_type": per_type, "counts": dict(totals), "overall": sum(hits.values()) / sum(totals.values())}


def load_llava_tower_size(path: Path) -> int:
    from ..loading import load_vision_model

    return load_vision_model(path).config.image_size


def chance_levels() -> dict:
    return {"word": 1 / 12, "count": 1 / 3, "colour": 1 / 6, "position": 1 / 3, "presence": 1 / 2, "choice": 1 / 3}


def markdown(results: dict) -> str:
    rows = ["| question type | n | chance | random tower | OpenVision 2 tower |", "|---|---|---|---|---|"]
    pre, rnd = results["pretrained"], results["random"]
    for t in QUESTION_TYPES:
        if t in pre["per_type"]:
            rows.append(
                f"| {t} | {pre['counts'][t]} | {chance_levels()[t]:.2f} | {rnd['per_type'][t]:.3f} | "
                f"{pre['per_type'][t]:.3f} |"
            )
    rows.append(f"| **all** | {sum(pre['counts'].values())} | | {rnd['overall']:.3f} | {pre['overall']:.3f} |")
    rows += ["", "The towers alone: linear probes of the features LLaVA's projector receives (no language model; "
             "`ov2_plugin.evaluation.scene_probe`), held-out scenes:", "",
             "| attribute | majority answer | random tower (patch / pooled) | OpenVision 2 tower (patch / pooled) |",
             "|---|---|---|---|"]
    for a in ATTRIBUTES:
        cells = " | ".join(f"{r['probe']['patch'][a]:.3f} / {r['probe']['pooled'][a]:.3f}" for r in (rnd, pre))
        rows.append(f"| {a} | {pre['probe']['majority'][a]:.3f} | {cells} |")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in results["wall_s"].items())
    return "\n".join(rows) + (
        f"\n\nWall time: {times}; CPU time {results['cpu_s']:.0f} s. Settings: `{json.dumps(results['settings'])}`\n"
    )


def claim_output_dir(out: Path, stamp_data: dict, names) -> None:
    """One set of settings (``stamp_data``) per folder, and no result of the pipelines ``names`` from an earlier
    run in it.

    Why: the language model, the towers and the data are reused when present (the second
    process of a side-by-side run relies on that), so a folder made with another seed or size
    would silently mix runs; and an old ``eval.json`` would end up in the new tables.
    """
    stamp = out / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != stamp_data:
        raise ValueError(f"{out} holds a run with other settings (see {stamp}); pass a new --output_dir.")
    if not stamp.is_file() and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no run settings; pass a new --output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(stamp_data))
    for name in names:
        (out / name / "eval.json").unlink(missing_ok=True)


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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="runs/llava-e2e")
    p.add_argument("--quick", action="store_true", help="Tiny smoke-test sizes (mechanics only).")
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"],
                   help="bf16 autocast for the OV2 pretraining; auto: where the CPU has bf16 matmul instructions.")
    p.add_argument("--pretrained", default=None, help="Use this 'ov2 pretrain' output instead of pretraining here.")
    p.add_argument("--only", choices=["pretrained", "random"], default=None,
                   help="Run one pipeline; tables are written once both exist. Without it the random-tower "
                        "pipeline runs in a child process beside this one, each on half the CPU threads.")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=INT",
                   help="Override sizes, e.g. stage2_steps=200. seed=N re-draws every random choice (weights, "
                        "training order; the data stay the same), to see the run-to-run spread.")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: int(v) for k, v in (kv.split("=") for kv in args.set)})
    out = Path(args.output_dir)
    wall, t0 = {}, time.time()
    if args.pretrained:
        cfg["image_size"] = load_llava_tower_size(args.pretrained)
    pretrained = Path(args.pretrained or out / "ov2")
    claim_output_dir(out, {"settings": cfg, "tower": str(pretrained)},
                     ("pretrained", "random") if args.only is None else (args.only,))
    if not args.pretrained:
        from ..devices import resolve_bf16

        pretrain_tower(pretrained, cfg, resolve_bf16(args.bf16, "cpu"))
    # shared inputs are made once, so a second process (--only) reuses them untouched
    control, lm, data = out / "random_tower", out / "lm", out / "data"
    if not (control / "config.json").is_file():
        random_tower(pretrained, control, cfg["seed"])
    if not (lm / "config.json").is_file():
        make_language_model(lm, cfg)
    if not (data / "instructions_0.json").is_file():
        write_dataset(data, "captions", 0, cfg["stage1_scenes"], cfg["image_size"])
        write_dataset(data, "instructions", 0, cfg["stage2_scenes"], cfg["image_size"])
    wall["pretrain+data"] = time.time() - t0
    only, control_run = args.only, None
    if only is None:  # the two pipelines are independent: run the control beside this one
        control_run = start_beside(__spec__.name, ["--output_dir", str(out), "--pretrained", str(pretrained), "--only",
                                                   "random", "--bf16", args.bf16, *(["--quick"] if args.quick else []),
                                                   "--set", *args.set], out / "random.log")
        only = "pretrained"
    for name, tower in (("pretrained", pretrained), ("random", control)):
        if name != only:
            continue
        t = time.time()
        model_dir = run_pipeline(tower, lm, data, out / name, cfg)
        result = evaluate(model_dir, cfg)
        probe = probe_towers({name: tower}, cfg["probe_train_scenes"], cfg["probe_test_scenes"])
        result["probe"] = {"majority": probe["majority"], **probe["towers"][name]}
        result["wall_s"] = time.time() - t
        result["cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        (out / name / "eval.json").write_text(json.dumps(result, indent=2))
    if control_run is not None and control_run.wait() != 0:
        raise RuntimeError(f"The random-tower pipeline failed (exit {control_run.returncode}); see {out}/random.log.")
    wall["total"] = time.time() - t0
    if not all((out / n / "eval.json").is_file() for n in ("pretrained", "random")):
        return {}
    results = {"settings": cfg, "tower": str(pretrained)}
    for name in ("pretrained", "random"):
        results[name] = json.loads((out / name / "eval.json").read_text())
    results["wall_s"] = {"this process": wall["total"], **{n: results[n]["wall_s"] for n in ("pretrained", "random")}}
    results["cpu_s"] = sum(results[n]["cpu_s"] for n in ("pretrained", "random"))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
