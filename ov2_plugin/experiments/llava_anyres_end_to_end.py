"""What does anyres buy? LLaVA-OneVision's tiles against one tower-sized square, offline, on built-in scenes.

    python -m ov2_plugin.experiments.llava_anyres_end_to_end --output_dir runs/anyres-e2e

1. ``ov2 pretrain``: the quickstart's small OpenVision 2, briefly, on the built-in scenes at the tile size
   (``--tower random``: the tiny preset at the tile size, random weights; or a folder to reuse);
2. data (``ov2_plugin.data.aspect_scenes``): scenes of five aspect ratios, each a whole number of tiles, with a
   big shape (coarse questions) and a small one (detail questions);
3. for each variant, the identical pipeline with the same tower, random word-level Llama, data, steps and LoRA:
   stage 1 (projector on captions) -> stage 2 (LoRA on multi-turn questions) -> greedy answers to held-out
   questions (another seed), exact match per question type and aspect ratio, and image tokens per image.
   The variants (``VARIANTS``) differ only in what the language model is shown of an image:
   ``anyres``: ``--arch llava_onevision`` with its default pinpoints scaled to the tower: the image squashed to
   one square (the base) + the tiles of the best-fitting pinpoint, here the scene pixel for pixel;
   ``single``: ``--arch llava``, whose processor squashes the image to one tower-sized square, the base alone;
   ``onevision_1x1``: OneVision with pinpoints ``[[S, S]]``: the base + one more square holding the whole image
   shrunk to fit (letterboxed, its padding's features dropped), nothing finer than the base. Same family, chat
   format and newline embedding as ``anyres``, so it tells the tiles from the family.
Writes ``results.json`` and ``results.md``. ``--quick`` shrinks every stage to a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from ..data.aspect_scenes import (
    ANSWERS,
    ASPECTS,
    QUESTION_TYPES,
    aspect_vocabulary,
    make_aspect_scene,
    question_records,
    write_aspect_dataset,
)
from ..llava.build import VIDEO_TOKEN
from ..llava.chat import CHATML
from .llava_pipeline import greedy_answers, make_language_model, pretrain_tower, run_pipeline, scene_index, start_beside
from .run_folder import claim_output_dir, finished_runs, publish_results

PATCH = 8  # the tiny preset's patch: a 32 px tile is a 4 x 4 grid
TOWERS = ("pretrain", "random")
# name -> (--arch, only the tower-sized pinpoint, table heading)
VARIANTS = {
    "single": ("llava", False, "single tile (`llava`)"),
    "onevision_1x1": ("llava_onevision", True, "OneVision, pinpoint SxS only"),
    "anyres": ("llava_onevision", False, "anyres (OneVision's pinpoints)"),
}
CHILD = ("single", "onevision_1x1")  # one after the other in a child process, beside anyres (the costliest)
FULL = dict(
    side=32,  # the tower's image size = the tile = a scene's short side
    pretrain_steps=1000,
    pretrain_batch=32,
    stage1_scenes=1000,
    stage1_steps=30,
    stage2_scenes=2000,  # one four-question dialogue each
    stage2_steps=600,
    lora_r=32,
    batch=32,
    eval_scenes=200,
    lm_hidden=128,
    lm_layers=3,
    lm_heads=8,
    seed=0,
)
QUICK = dict(side=16, pretrain_steps=2, pretrain_batch=8, stage1_scenes=10, stage1_steps=2, stage2_scenes=10,
             stage2_steps=2, lora_r=8, batch=4, eval_scenes=10, lm_hidden=64, lm_layers=2, lm_heads=2, seed=0)


def make_tower(out: Path, cfg: dict, kind: str, use_cpu: bool = True) -> Path:
    """``ov2 pretrain`` with the quickstart recipe at the tile size (``pretrain``), or the tiny preset at the
    tile size with random weights (``random``, no pretraining)."""
    if kind == "random":
        from ..configuration import Ov2VisionConfig
        from ..image_processing import make_image_processor
        from ..modeling_vision import Ov2VisionModel

        config = Ov2VisionConfig.from_preset("tiny", image_size=cfg["side"], patch_size=PATCH)
        torch.manual_seed(cfg["seed"])
        Ov2VisionModel(config).save_pretrained(out)
        make_image_processor(config).save_pretrained(out)
        return out
    from ..devices import resolve_bf16

    return pretrain_tower(out, cfg["side"], cfg["pretrain_steps"], cfg["pretrain_batch"], cfg["seed"],
                          resolve_bf16("auto", "cpu" if use_cpu else "cuda"), use_cpu)


def evaluate(model_dir: Path, cfg: dict, seed: int = 1, batch: int = 50, use_cpu: bool = True) -> dict:
    """Greedy answers to the held-out questions: exact first word per question type and per (type, aspect),
    and the ``<image>`` placeholders each image became (the image tokens the language model reads)."""
    records = list(question_records(seed, cfg["eval_scenes"]))
    answers = greedy_answers(model_dir, records, lambda r: make_aspect_scene(seed, scene_index(r)).render(cfg["side"]),
                             batch, use_cpu)
    hits, totals, tokens = Counter(), Counter(), defaultdict(list)
    for r, (right, image_tokens) in zip(records, answers):
        for key in (r["question_type"], f"{r['question_type']}/{r['aspect']}"):
            totals[key] += 1
            hits[key] += right
        tokens[r["aspect"]].append(image_tokens)
    every = [n for per_aspect in tokens.values() for n in per_aspect]
    return {
        "per_type": {k: hits[k] / totals[k] for k in QUESTION_TYPES},
        "per_type_aspect": {k: hits[k] / totals[k] for k in totals if "/" in k},
        "counts": {k: totals[k] for k in QUESTION_TYPES},
        "overall": sum(hits[k] for k in QUESTION_TYPES) / sum(totals[k] for k in QUESTION_TYPES),
        "image_tokens_mean": sum(every) / len(every),
        "image_tokens_per_aspect": {a: sum(v) / len(v) for a, v in tokens.items()},
    }


def baselines(cfg: dict, seed: int = 1) -> dict:
    """Per question type: chance (one over the possible answers) and the majority answer's share of the held-out set."""
    answers = defaultdict(Counter)
    for r in question_records(seed, cfg["eval_scenes"]):
        answers[r["question_type"]][r["conversations"][1]["value"]] += 1
    return {t: {"chance": 1 / len(ANSWERS[t]), "majority": max(c.values()) / sum(c.values())}
            for t, c in answers.items()}


def markdown(results: dict) -> str:
    runs = [results[name] for name in VARIANTS]
    rows = ["| question type | n | chance / majority | " + " | ".join(v[2] for v in VARIANTS.values()) + " |",
            "|---" * (3 + len(VARIANTS)) + "|"]
    for t in QUESTION_TYPES:
        base = results["baselines"][t]
        rows.append(f"| {t} | {runs[0]['counts'][t]} | {base['chance']:.2f} / {base['majority']:.2f} | "
                    + " | ".join(f"{r['per_type'][t]:.3f}" for r in runs) + " |")
    rows.append(f"| **all** | {sum(runs[0]['counts'].values())} | | "
                + " | ".join(f"{r['overall']:.3f}" for r in runs) + " |")
    rows.append("| image tokens per image (mean) | | | " + " | ".join(f"{r['image_tokens_mean']:.1f}" for r in runs)
                + " |")
    rows += ["", f"Per aspect ratio (width:height), {' / '.join(VARIANTS)}:", "",
             "| aspect | image tokens | " + " | ".join(QUESTION_TYPES) + " |", "|---" * (len(QUESTION_TYPES) + 2) + "|"]
    for a in ASPECTS:
        if a not in runs[0]["image_tokens_per_aspect"]:
            continue
        cells = [" / ".join(f"{r['per_type_aspect'][f'{t}/{a}']:.2f}" for r in runs) for t in QUESTION_TYPES]
        tokens = " / ".join(f"{r['image_tokens_per_aspect'][a]:.0f}" for r in runs)
        rows.append(f"| {a} | {tokens} | " + " | ".join(cells) + " |")
    rows += ["", "| wall time, s | " + " | ".join(VARIANTS) + " |", "|---" * (1 + len(VARIANTS)) + "|"]
    for stage in ("stage1", "stage2", "eval"):
        rows.append(f"| {stage} | " + " | ".join(f"{r['wall_s'][stage]:.0f}" for r in runs) + " |")
    shared = ", ".join(f"{k} {v:.0f} s" for k, v in results["wall_s"].items())
    return "\n".join(rows) + (
        f"\n\nWall time: {shared}. Tower: {results['tower']}. Settings: `{json.dumps(results['settings'])}`\n"
    )


def tower_dir(out: Path, tower: str) -> Path:
    """Where the tower is: made in ``out/tower`` (``pretrain``, ``random``), or a given ``ov2 pretrain`` folder."""
    if tower in TOWERS:
        return out / "tower"
    if not (Path(tower) / "config.json").is_file():
        raise FileNotFoundError(f"--tower {tower!r} is neither {' nor '.join(TOWERS)} nor a folder with a config.json; "
                                "pass an 'ov2 pretrain' output folder.")
    return Path(tower)


def prepare(out: Path, cfg: dict, tower: str, use_cpu: bool = True) -> dict:
    """The shared inputs, made once: tower, language model, data. Returns their wall times."""
    wall, t = {}, time.time()
    if not (tower_dir(out, tower) / "config.json").is_file():
        make_tower(out / "tower", cfg, tower, use_cpu)
    wall["tower"], t = time.time() - t, time.time()
    if not (out / "lm" / "config.json").is_file():
        # every family's special tokens get rows of their own: ChatML's <|im_end|> ends every answer
        make_language_model(out / "lm", cfg, aspect_vocabulary(), (VIDEO_TOKEN, *CHATML.special_tokens))
    if not (out / "data" / "dialogues_0.json").is_file():
        write_aspect_dataset(out / "data", "captions", 0, cfg["stage1_scenes"], cfg["side"])
        write_aspect_dataset(out / "data", "dialogues", 0, cfg["stage2_scenes"], cfg["side"])
    wall["lm+data"] = time.time() - t
    return wall


def run_variant(name: str, out: Path, cfg: dict, tower: Path, use_cpu: bool = True) -> None:
    """Stage 1 (projector, captions) then stage 2 (LoRA + projector, dialogues) for variant ``name``, then the
    held-out answers; writes ``out/<name>/eval.json``."""
    arch, one_square, _ = VARIANTS[name]
    t = time.time()
    model_dir, wall = run_pipeline(tower, out / "lm", out / "data", out / name, cfg, use_cpu, arch=arch,
                                   image_grid_pinpoints=f"{cfg['side']}x{cfg['side']}" if one_square else None,
                                   instructions="dialogues_0.json", model_max_length=256)
    t_eval = time.time()
    result = evaluate(model_dir, cfg, use_cpu=use_cpu)
    wall["eval"] = time.time() - t_eval
    result.update(arch=arch, wall_s={**wall, "total": time.time() - t})
    (out / name / "eval.json").write_text(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="runs/anyres-e2e")
    p.add_argument("--quick", action="store_true", help="Tiny smoke-test sizes (mechanics only).")
    p.add_argument("--tower", default="pretrain",
                   help="pretrain: the quickstart recipe for pretrain_steps at the tile size; random: the tiny preset at "
                        "the tile size, random weights; or an 'ov2 pretrain' output folder to reuse.")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None,
                   help="Run these variants here; the tables are written once all exist. Without it "
                        f"{' and '.join(CHILD)} run in a child process beside this one, each on half the CPU threads.")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=INT", help="Override sizes, e.g. stage2_steps=300.")
    p.add_argument("--use_cpu", default="true", choices=["true", "false"],
                   help="false: pretrain, train and answer on the GPU (the sizes are chosen for 2 CPU cores).")
    args = p.parse_args(argv)
    use_cpu = args.use_cpu == "true"
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: int(v) for k, v in (kv.split("=") for kv in args.set)})
    out, t0 = Path(args.output_dir), time.time()
    claim_output_dir(out, {"settings": cfg, "tower": args.tower}, args.only or list(VARIANTS))
    wall = prepare(out, cfg, args.tower, use_cpu)
    only, child = args.only, None
    if only is None:
        child = start_beside(__spec__.name, ["--output_dir", str(out), "--only", *CHILD, "--tower", args.tower,
                                             "--use_cpu", args.use_cpu, *(["--quick"] if args.quick else []), "--set", *args.set],
                             out / "child.log")
        only = [name for name in VARIANTS if name not in CHILD]
    for name in only:
        run_variant(name, out, cfg, tower_dir(out, args.tower), use_cpu)
    if child is not None and child.wait() != 0:
        raise RuntimeError(f"The {' and '.join(CHILD)} pipelines failed (exit {child.returncode}); see {out}/child.log.")
    wall["total"] = time.time() - t0
    runs = finished_runs(out, VARIANTS)
    if runs is None:
        return {}
    results = {"settings": cfg, "tower": args.tower, "baselines": baselines(cfg), "wall_s": wall, **runs}
    return publish_results(out, results, markdown)


if __name__ == "__main__":
    main()
