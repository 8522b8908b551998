"""How reading grows with the budget on a reading curriculum: what a ``cpu-reading``-style recipe should spend.

    python -m ov2_plugin.experiments.reading_budget --steps 100 200 400 --output_dir runs/reading-budget

Pretrains one objective (``caption`` by default) of a comparison recipe (``cpu-reading`` by default: its
model, optimiser and data, ``pretrain.run_pretraining`` as ``ov2 compare`` calls it) for each number of
steps, and probes every tower, plus the same model untrained (``random``: the weights each run starts
from), on the recipe's reading scenes: the first three letters of the first word on new scenes of
training words (``reading_seen``) and of held-out words (``reading_unseen``), and the whole first word
among the curriculum's training words (``reading_word_seen``), each beside the majority answer; for the
``caption`` objective also the captioner's own reading (``captions``): greedy captions of new scenes of
training and of held-out words, and how often they name the first word and its first letter. Writes
``reading_budget.json`` and ``reading_budget.md`` in ``--output_dir``. Resumable as ``ov2 compare``:
each finished pretraining and probe leaves a record, a rerun (with more ``--steps`` too) redoes only
what is missing.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..data.reading import SCENE_KINDS, reading_kind, scene_of
from .objectives import count_flops, in_child, run_pretrain, run_units, save_untrained
from .recipes import load_comparison_recipe
from .run_folder import claim_output_dir

TASKS = ("reading_seen", "reading_unseen", "reading_word_seen")


def budget_recipe(recipe: dict, objective: str, scene_kind: str | None = None, image_size: int | None = None,
                  patch_size: int | None = None, probe_scenes: tuple[int, int] | None = None) -> dict:
    """``recipe`` for one objective, with the data, resolution, patch and probe sizes given (None: the recipe's)."""
    recipe = json.loads(json.dumps(recipe))
    recipe["objectives"], recipe["budget"]["objective"] = [objective], objective
    if scene_kind:
        recipe["pretrain"]["scene_kind"] = scene_kind
    if image_size:
        recipe["model"]["image_size"] = image_size
    if patch_size:
        recipe["model"]["config_overrides"] = ",".join(filter(None, [recipe["model"].get("config_overrides"),
                                                                      f"patch_size={patch_size}"]))
    if probe_scenes:
        recipe["probe"].update(train_scenes=probe_scenes[0], test_scenes=probe_scenes[1])
    return recipe


def probe(tower: Path, recipe: dict) -> dict:
    from ..evaluation.scene_probe import probe_reading

    result = probe_reading({"t": tower}, recipe["probe"]["train_scenes"], recipe["probe"]["test_scenes"],
                           kind=reading_kind(recipe["pretrain"]["scene_kind"]))
    return {**result["towers"]["t"], "majority": result["majority"]}


def caption_reading(model_dir: Path, recipe: dict, num_scenes: int = 100) -> dict:
    """{split: {'word_named', 'first_letter'}}: greedy captions (``ov2 caption``'s decoding) of ``num_scenes`` new
    reading scenes per split (the probes' test stream), read as the first quoted text of the caption
    (letters joined, so spelled captions count too), against the scene's first word."""
    import torch

    from ..caption import caption_images
    from ..loading import load_captioner

    model = load_captioner(model_dir).eval()
    size, kind, out = model.config.vision_config.image_size, reading_kind(recipe["pretrain"]["scene_kind"]), {}
    for split in ("train", "held_out"):
        scenes = [scene_of(kind, 1, i, split) for i in range(num_scenes)]
        with torch.no_grad():
            captions = caption_images(model, [s.render(size) for s in scenes], max_new_tokens=32)
        read = ["".join(m.group(1).split()) if (m := re.search(r'"([^"]*)"', c)) else "" for c in captions]
        out["seen" if split == "train" else "unseen"] = {
            "word_named": sum(s.words[0] == r for s, r in zip(scenes, read)) / num_scenes,
            "first_letter": sum(s.words[0][0] == r[:1] for s, r in zip(scenes, read)) / num_scenes,
            "examples": [[s.words[0], c] for s, c in list(zip(scenes, captions))[:5]]}
    return {**out, "scenes": num_scenes}


def plan(recipe: dict, objective: str, steps: list[int], seed: int, out: Path) -> list[tuple[str, Path, callable]]:
    """(label, record, function) for the FLOP count, the untrained tower, each budget's pretraining and every probe."""
    flops_file = out / "flops.json"
    units = [("count training FLOPs", flops_file, lambda: in_child(count_flops, recipe)),
             ("random tower", out / "random" / "pretrain.json",
              lambda: in_child(save_untrained, recipe, objective, seed, out / "random" / "tower")),
             ("random tower: probes", out / "random" / "probe.json", lambda: probe(out / "random" / "tower", recipe))]
    for n in steps:
        d = out / f"steps{n}"

        def pretrain(n=n, d=d):
            step_flops = json.loads(flops_file.read_text())["step_flops"][objective]
            return in_child(run_pretrain, recipe, objective, seed, n, step_flops, d / "tower")

        units.append((f"{n} steps: pretrain", d / "pretrain.json", pretrain))
        units.append((f"{n} steps: probes", d / "probe.json", lambda d=d: probe(d / "tower", recipe)))
        if objective == "caption":
            units.append((f"{n} steps: captions", d / "captions.json", lambda d=d: caption_reading(d / "tower", recipe)))
    return units


def collect(out: Path) -> dict:
    """{'majority': {...}, 'towers': {name: {'pretrain', 'probe'}}} from the records on disk: the untrained
    tower and every finished budget, this call's and earlier ones' (a folder gathers budgets over reruns)."""
    budgets = sorted((d for d in out.glob("steps*") if (d / "probe.json").is_file()), key=lambda d: int(d.name[5:]))
    towers = {d.name: {u: json.loads((d / f"{u}.json").read_text()) for u in ("pretrain", "probe", "captions")
                       if (d / f"{u}.json").is_file()} for d in [out / "random", *budgets]}
    return {"majority": towers["random"]["probe"]["majority"], "towers": towers}


def markdown(results: dict, recipe: dict, objective: str) -> str:
    tasks = [t for t in TASKS if t in results["majority"]]
    cells = " | ".join(f"{t} ({v})" for t in tasks for v in ("patch", "pooled"))
    lines = [f"Objective {objective}, data {recipe['pretrain']['scene_kind']}, {recipe['model']['image_size']} px, "
             f"batch {recipe['pretrain']['batch']}; probes: {recipe['probe']['train_scenes']} / "
             f"{recipe['probe']['test_scenes']} scenes.", "",
             f"| tower | steps | training TFLOPs | pretraining s | final loss | {cells} | captions name the word: "
             "seen / unseen | first letter: seen / unseen |", "|---" * (7 + 2 * len(tasks)) + "|"]
    for name, r in results["towers"].items():
        p = r["pretrain"]
        tflops = f"{p['train_flops'] / 1e12:.2f}" if "train_flops" in p else "0"
        wall = f"{p['wall_s']:.0f}" if "wall_s" in p else "—"
        loss = f"{p['train_loss']:.3f}" if p.get("train_loss") is not None else "—"
        accs = " | ".join(f"{r['probe'][v][t]:.3f}" for t in tasks for v in ("patch", "pooled"))
        c = r.get("captions")
        named = f"{c['seen']['word_named']:.2f} / {c['unseen']['word_named']:.2f}" if c else "—"
        first = f"{c['seen']['first_letter']:.2f} / {c['unseen']['first_letter']:.2f}" if c else "—"
        lines.append(f"| {name} | {p['steps']} | {tflops} | {wall} | {loss} | {accs} | {named} | {first} |")
    majority = [cell for t in tasks for cell in (f"{results['majority'][t]:.3f}", "")]  # under the patch column
    lines.append("| majority answer | | | | | " + " | ".join(majority) + " | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ov2_plugin.experiments.reading_budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", required=True, help="Pretraining budgets, in steps of the recipe's batch.")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--recipe", default="cpu-reading", help="A comparison recipe (experiments/recipes.py) or its file.")
    p.add_argument("--objective", default="caption", choices=["caption", "openvision", "clip", "coca"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scene_kind", default=None, choices=list(SCENE_KINDS),
                   help="Pretraining data instead of the recipe's (e.g. reading-cpu: reading scenes only).")
    p.add_argument("--image_size", type=int, default=None, help="Resolution instead of the recipe's.")
    p.add_argument("--patch_size", type=int, default=None, help="Patch size instead of the preset's.")
    p.add_argument("--probe_scenes", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                   help="Probe scenes instead of the recipe's.")
    args = p.parse_args(argv)
    if min(args.steps) < 1:
        raise ValueError(f"--steps must be positive, got {args.steps}.")
    recipe = budget_recipe(load_comparison_recipe(args.recipe), args.objective, args.scene_kind, args.image_size,
                           args.patch_size, args.probe_scenes)
    claim_output_dir(args.output_dir, {"recipe": recipe, "objective": args.objective, "seed": args.seed})
    run_units(plan(recipe, args.objective, args.steps, args.seed, args.output_dir), log=lambda s: print(s, flush=True))
    results = {"recipe": recipe, "objective": args.objective, "seed": args.seed,
               **collect(args.output_dir)}
    (args.output_dir / "reading_budget.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, recipe, args.objective)
    (args.output_dir / "reading_budget.md").write_text(table)
    print(table, flush=True)
    return results


if __name__ == "__main__":
    main()
