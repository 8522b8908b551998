"""The whole LLaVA pipeline on the built-in data, offline, pretrained tower vs random tower.

    python -m ov2_plugin.experiments.llava_end_to_end --output_dir runs/llava-e2e

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
import resource
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from ..data.instructions import QUESTION_TYPES, instruction_records, write_dataset
from ..data.scenes import make_scene
from ..evaluation.scene_probe import ATTRIBUTES, probe_towers
from .llava_pipeline import greedy_answers, make_language_model, pretrain_tower, run_pipeline, scene_index, start_beside
from .run_folder import claim_output_dir, finished_runs, publish_results

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


def evaluate(model_dir: Path, cfg: dict, seed: int = 1, batch: int = 64, use_cpu: bool = True) -> dict:
    """Greedy answers to the held-out questions; accuracy per question type (exact first word)."""
    records = list(instruction_records(seed, cfg["eval_scenes"]))
    answers = greedy_answers(model_dir, records, lambda r: make_scene(seed, scene_index(r)).render(cfg["image_size"]),
                             batch, use_cpu)
    hits, totals = Counter(), defaultdict(int)
    for r, (right, _) in zip(records, answers):
        totals[r["question_type"]] += 1
        hits[r["question_type"]] += right
    per_type = {t: hits[t] / totals[t] for t in QUESTION_TYPES if totals[t]}  # counts: every type, 0 if none asked
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="runs/llava-e2e")
    p.add_argument("--quick", action="store_true", help="Tiny smoke-test sizes (mechanics only).")
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"],
                   help="bf16 autocast for the OV2 pretraining; auto: on a GPU, or where the CPU has bf16 matmul "
                        "instructions.")
    p.add_argument("--use_cpu", default="true", choices=["true", "false"],
                   help="false: pretrain, train and answer on the GPU (the sizes are chosen for 2 CPU cores).")
    p.add_argument("--pretrained", default=None, help="Use this 'ov2 pretrain' output instead of pretraining here.")
    p.add_argument("--only", choices=["pretrained", "random"], default=None,
                   help="Run one pipeline; tables are written once both exist. Without it the random-tower "
                        "pipeline runs in a child process beside this one, each on half the CPU threads.")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=INT",
                   help="Override sizes, e.g. stage2_steps=200. seed=N re-draws every random choice (weights, "
                        "training order; the data stay the same), to see the run-to-run spread.")
    args = p.parse_args(argv)
    use_cpu = args.use_cpu == "true"
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

        pretrain_tower(pretrained, cfg["image_size"], cfg["pretrain_steps"], cfg["pretrain_batch"], cfg["seed"],
                       resolve_bf16(args.bf16, "cpu" if use_cpu else "cuda"), use_cpu)
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
                                                   "random", "--bf16", args.bf16, "--use_cpu", args.use_cpu,
                                                   *(["--quick"] if args.quick else []),
                                                   "--set", *args.set], out / "random.log")
        only = "pretrained"
    for name, tower in (("pretrained", pretrained), ("random", control)):
        if name != only:
            continue
        t = time.time()
        model_dir, _ = run_pipeline(tower, lm, data, out / name, cfg, use_cpu)
        result = evaluate(model_dir, cfg, use_cpu=use_cpu)
        probe = probe_towers({name: tower}, cfg["probe_train_scenes"], cfg["probe_test_scenes"])
        result["probe"] = {"majority": probe["majority"], **probe["towers"][name]}
        result["wall_s"] = time.time() - t
        result["cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        (out / name / "eval.json").write_text(json.dumps(result, indent=2))
    if control_run is not None and control_run.wait() != 0:
        raise RuntimeError(f"The random-tower pipeline failed (exit {control_run.returncode}); see {out}/random.log.")
    wall["total"] = time.time() - t0
    runs = finished_runs(out, ("pretrained", "random"))
    if runs is None:
        return {}
    results = {"settings": cfg, "tower": str(pretrained), **runs,
               "wall_s": {"this process": wall["total"], **{n: r["wall_s"] for n, r in runs.items()}},
               "cpu_s": sum(r["cpu_s"] for r in runs.values())}
    return publish_results(out, results, markdown)


if __name__ == "__main__":
    main()
