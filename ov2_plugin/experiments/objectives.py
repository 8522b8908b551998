"""Caption-only against contrastive pretraining at equal cost, judged downstream: ``ov2 compare``.

    ov2 compare --recipe cpu --output_dir runs/compare --seeds 0 1 2
    python -m ov2_plugin.experiments.objectives --recipe micro --output_dir runs/compare-micro   # smoke test

For each seed and objective (``caption`` = OpenVision 2, ``openvision``, ``clip``, ``coca``;
``ov2_plugin/baselines``): ``ov2 pretrain --objective`` on the same data (mixed shapes + reading
scenes; ``cpu-reading``: an easier reading curriculum, ``data/reading.py``), ViT, trainer and optimiser,
for the number of steps that spends the recipe's FLOP budget (``cost.py``); then the same evaluations
for every tower (``evaluation.py``): linear probes, zero-shot retrieval where there is a text tower, the
LLaVA pipeline. Writes ``compare.json``, ``compare.md`` and ``compare.png`` in ``--output_dir``.

Resumable: every finished unit (FLOP count, data, language model, a pretraining, a probe, a
retrieval, a LLaVA run) leaves a JSON record, written whole or not at all; a rerun with the same
folder skips those and redoes only the unit that was interrupted. Seeded: ``--seeds`` sets the
weights' initialisation, training order and the LLaVA language model; the data are the same for all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ..atomic_json import write_json_atomically
from .recipes import load_comparison_recipe
from .run_folder import claim_output_dir


def _write_json(path: Path, value: dict) -> None:
    write_json_atomically(path, value, indent=2)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_arguments(recipe: dict, objective: str):
    from ..pretrain import ModelArguments

    m = recipe["model"]
    return ModelArguments(preset=m["preset"], keep_ratio=m["keep_ratio"], image_size=m["image_size"],
                          config_overrides=m.get("config_overrides"), objective=objective)


def count_flops(recipe: dict) -> dict:
    """Training FLOPs of one step of each objective on three real batches, and the steps the budget buys."""
    from ..data.captions import CaptionCollator, SceneCaptions
    from ..data.transforms import eval_transform
    from ..pretrain import build_model
    from ..tokenization import build_caption_tokenizer
    from .cost import caption_step_flops, step_flops

    m, p, device = recipe["model"], recipe["pretrain"], _device()
    data = SceneCaptions(p["train_samples"], m["image_size"], eval_transform(m["image_size"]), seed=0, kind=p["scene_kind"])
    collate = CaptionCollator(build_caption_tokenizer())
    b = p["batch"]
    batches = [{k: v.to(device) for k, v in collate([data[i] for i in range(k * b, (k + 1) * b)]).items()} for k in range(3)]
    per_step = {}
    for objective in recipe["objectives"]:
        torch.manual_seed(0)
        model = build_model(model_arguments(recipe, objective)).to(device)
        if objective == "caption":
            per_step[objective] = caption_step_flops(model, batches, p.get("unmasked_tuning", 0.0))
        else:
            per_step[objective] = step_flops(model, batches)
        del model
    budget = per_step[recipe["budget"]["objective"]] * recipe["budget"]["steps"]
    steps = {o: max(1, round(budget / f)) for o, f in per_step.items()}
    return {"step_flops": per_step, "budget_flops": budget, "steps": steps}


def in_child(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process, so each pretraining's peak memory is its own and
    no state of one unit leaks into the next. (CoCa's NaN at step 1 in a long-running process, seen
    before this, was open_clip leaving its decoder's ``text_projection`` as ``torch.empty``: whatever
    freed memory held. ``baselines/coca.py`` now initialises it.)"""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run_pretrain(recipe: dict, objective: str, seed: int, steps: int, step_flops: float, tower: Path) -> dict:
    from ..devices import resolve_bf16
    from ..pretrain import DataArguments, PretrainArguments, run_pretraining
    from .cost import PeakMemory

    shutil.rmtree(tower, ignore_errors=True)  # what an interrupted run left
    p, device = recipe["pretrain"], _device()
    unmasked = (p.get("unmasked_tuning") or 0.0) if objective == "caption" else 0.0  # the others never drop tokens
    data = DataArguments(scene_kind=p["scene_kind"], train_samples=p["train_samples"], eval_samples=0)
    train = PretrainArguments(
        output_dir=str(tower), max_steps=steps, per_device_train_batch_size=p["batch"], learning_rate=p["learning_rate"],
        warmup_steps=p["warmup_steps"], save_strategy="no", seed=seed, bf16=resolve_bf16(p["bf16"], device),
        dataloader_num_workers=p["dataloader_num_workers"], logging_steps=max(1, steps // 20), use_cpu=device == "cpu",
        unmasked_tuning=unmasked)
    start = time.time()
    with PeakMemory() as memory:
        report = run_pretraining(model_arguments(recipe, objective), data, train)
    return {"steps": steps, "step_flops": step_flops, "train_flops": step_flops * steps, "wall_s": time.time() - start,
            "train_runtime_s": report.get("train_runtime_s"), "train_loss": report.get("train_loss"),
            "peak_mb": memory.peak_mb, "peak_rise_mb": memory.rise_mb, "memory_kind": memory.kind}


def save_untrained(recipe: dict, objective: str, seed: int, out: Path) -> dict:
    """The model a run with ``seed`` starts from (``run_pretraining`` seeds before building), saved as a tower."""
    from transformers import set_seed

    from ..image_processing import make_image_processor
    from ..pretrain import build_model

    set_seed(seed)
    model = build_model(model_arguments(recipe, objective))
    tower = model.vision_model if objective == "caption" else model.encoder  # baselines expose their ViT as encoder
    tower.save_pretrained(out)
    make_image_processor(model.config.vision_config).save_pretrained(out)
    return {"steps": 0}


def plan(recipe: dict, seeds: list[int], out: Path, llava_seeds: list[int] | None = None) -> list[tuple[str, Path, callable]]:
    """Every unit of the comparison in order: (label, record path, function returning the record).

    ``llava_seeds``: the seeds that also run the LLaVA pipeline (default: all), the costliest
    evaluation after pretraining itself."""
    from ..data.instructions import reading_vocabulary
    from . import evaluation
    from .llava_pipeline import make_language_model

    size, units, kind = recipe["model"]["image_size"], [], recipe["pretrain"]["scene_kind"]
    flops_file, data = out / "flops.json", out / "llava_data"
    units.append(("count training FLOPs", flops_file, lambda: in_child(count_flops, recipe)))
    units.append(("write LLaVA data", data / "done.json",
                  lambda: (evaluation.make_llava_data(data, recipe["llava"], size, kind), {"folder": str(data)})[1]))
    for seed in seeds:
        root = out / f"seed{seed}"
        lm, with_llava = root / "lm", llava_seeds is None or seed in llava_seeds
        if with_llava:
            units.append((f"seed {seed}: language model", root / "lm.json",
                          lambda lm=lm, seed=seed: (make_language_model(lm, {**recipe["llava"], "seed": seed},
                                                                        reading_vocabulary()), {})[1]))
        random = root / "random" / "tower"  # the floor every tower is read against: the caption model untrained
        units.append((f"seed {seed}: random tower: probes", root / "random" / "probe.json",
                      lambda seed=seed, random=random: (in_child(save_untrained, recipe, "caption", seed, random),
                                                        evaluation.probes(random, recipe["probe"], kind))[1]))
        for o in recipe["objectives"]:
            d, tower = root / o, root / o / "tower"

            def pretrain(o=o, seed=seed, tower=tower):
                flops = json.loads(flops_file.read_text())
                return in_child(run_pretrain, recipe, o, seed, flops["steps"][o], flops["step_flops"][o], tower)

            units.append((f"seed {seed}: {o}: pretrain", d / "pretrain.json", pretrain))
            units.append((f"seed {seed}: {o}: probes", d / "probe.json",
                          lambda tower=tower: evaluation.probes(tower, recipe["probe"], kind)))
            if o != "caption":  # OpenVision 2 has no text tower
                units.append((f"seed {seed}: {o}: retrieval", d / "retrieval.json",
                              lambda tower=tower: evaluation.retrieval(tower, recipe["retrieval"]["scenes"], size,
                                                                       scene_kind=kind)))

            def llava(o=o, seed=seed, tower=tower, d=d, lm=lm):
                shutil.rmtree(d / "llava", ignore_errors=True)
                return evaluation.llava(tower, lm, data, d / "llava", recipe["llava"], seed, size, _device() == "cpu", kind)

            if with_llava:
                units.append((f"seed {seed}: {o}: LLaVA", d / "llava.json", llava))
    return units


def run_units(units: list, log=print) -> None:
    """Run what is not done yet, with progress; each record is written when its unit has finished."""
    start = time.time()
    for i, (label, record, fn) in enumerate(units, 1):
        head = f"[{i}/{len(units)} · {time.time() - start:.0f} s]"
        if record.is_file():
            log(f"{head} {label}: already done")
            continue
        log(f"{head} {label} ...")
        t = time.time()
        result = fn()
        _write_json(record, {**result, "unit_s": time.time() - t})
        log(f"{head} {label}: done in {time.time() - t:.0f} s")


def collect(out: Path, recipe: dict) -> dict:
    """runs[seed][objective][unit] from the records on disk (every finished seed folder); ``random``: the
    untrained tower's probes."""
    runs = {}
    for seed_dir in sorted(out.glob("seed*")):
        per = {}
        for o in [*recipe["objectives"], "random"]:
            records = {u: json.loads((seed_dir / o / f"{u}.json").read_text())
                       for u in ("pretrain", "probe", "retrieval", "llava") if (seed_dir / o / f"{u}.json").is_file()}
            if records:
                per[o] = records
        runs[seed_dir.name] = per
    return runs


def write_outputs(out: Path, recipe: dict) -> dict:
    from .report import markdown, plot, summarise

    runs = collect(out, recipe)
    summary = summarise(runs)
    majority = next((r["probe"]["majority"] for per in runs.values() for r in per.values() if "probe" in r), None)
    result = {"recipe": recipe, "flops": json.loads((out / "flops.json").read_text()), "summary": summary, "runs": runs}
    _write_json(out / "compare.json", result)
    (out / "compare.md").write_text(markdown(summary, recipe, majority))
    plot(summary, out / "compare.png")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Pretraining objectives at equal training FLOPs, judged downstream.")
    p.add_argument("--recipe", default="cpu", help="cpu, cpu-short, cpu-short-fp32, cpu-reading, gpu-B16, micro, or a JSON/YAML file "
                                                   "(ov2_plugin/experiments/recipes.py).")
    p.add_argument("--output_dir", default="runs/compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--objectives", nargs="+", default=None, choices=["caption", "openvision", "clip", "coca"],
                   help="A subset of the recipe's objectives (part of the folder's settings).")
    p.add_argument("--llava_seeds", type=int, nargs="+", default=None,
                   help="Run the LLaVA evaluation for these seeds only (default: every seed); rerun later with more to add them.")
    args = p.parse_args(argv)
    recipe = load_comparison_recipe(args.recipe)
    if args.objectives:
        recipe["objectives"] = [o for o in recipe["objectives"] if o in args.objectives]
    if recipe["budget"]["objective"] not in recipe["objectives"]:
        raise ValueError(f"The budget is set by {recipe['budget']['objective']!r}, which --objectives leaves out.")
    out = Path(args.output_dir)
    claim_output_dir(out, recipe)
    run_units(plan(recipe, args.seeds, out, args.llava_seeds), log=lambda s: print(s, flush=True))
    result = write_outputs(out, recipe)
    print((out / "compare.md").read_text())
    return result


if __name__ == "__main__":
    main()
