"""Does a tower's LLaVA feature lose in LLaVA by its offset? The same tower with that feature centred.

    python -m ov2_plugin.experiments.centred_feature --compare_dir runs/compare-short --seeds 0 1 2

Why: in ``ov2 compare`` the caption-only tower answers LLaVA's colour question far below its own
colour probe and below the contrastive towers. Its ``hidden_states[-2]`` (what LLaVA's projector
receives) is dominated by one vector shared by every patch; the ridge probes centre their input, the
projector does not. This takes each finished tower of a comparison, subtracts the mean patch
feature over training scenes from the bias of the last MLP of the block that outputs that state (an
exact shift of that state, so the probes cannot change), and reruns the comparison's own LLaVA
stage 1 + 2 with the same language model, data and seed. Writes ``centred/<seed>/<objective>.json``
in the comparison folder and prints the answers beside the uncentred ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ..atomic_json import write_json_atomically
from ..evaluation.scene_probe import tower_features
from ..loading import load_vision_model
from .run_folder import SETTINGS

MEAN_SEED, MEAN_SCENES = 11, 500  # training-distribution scenes, none of them held out for evaluation


def feature_offset(tower: Path) -> torch.Tensor:
    """The mean of ``hidden_states[-2]`` over patches and scenes: [width]."""
    return tower_features(tower, seed=MEAN_SEED, num_scenes=MEAN_SCENES).flatten(0, 1).mean(0)


def centre_feature(tower: Path, out: Path) -> dict:
    """Copy ``tower`` to ``out`` with ``hidden_states[-2]`` shifted by minus its mean; returns norms before/after."""
    offset = feature_offset(tower)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tower, out)
    model = load_vision_model(out)
    with torch.no_grad():  # hidden_states[-2] is the output of layers[-2]; its last addend is mlp.fc2
        model.layers[-2].mlp.fc2.bias -= offset.to(model.layers[-2].mlp.fc2.bias.dtype)
    model.save_pretrained(out)
    return {"offset_norm": offset.norm().item(), "offset_norm_after": feature_offset(out).norm().item()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ov2_plugin.experiments.centred_feature", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare_dir", type=Path, required=True, help="A finished 'ov2 compare' output folder.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--objectives", nargs="+", default=["caption"], choices=["caption", "openvision", "clip", "coca"])
    args = p.parse_args(argv)
    from .evaluation import llava

    recipe = json.loads((args.compare_dir / SETTINGS).read_text())
    size = recipe["model"]["image_size"]
    results = {}
    for seed in args.seeds:
        for objective in args.objectives:
            run = args.compare_dir / f"seed{seed}" / objective
            if not (run / "llava.json").is_file():
                raise FileNotFoundError(f"{run} has no finished LLaVA run; run 'ov2 compare' with --llava_seeds {seed} first.")
            work = args.compare_dir / "centred" / f"seed{seed}" / objective
            norms = centre_feature(run / "tower", work / "tower")
            centred = llava(work / "tower", args.compare_dir / f"seed{seed}" / "lm", args.compare_dir / "llava_data",
                            work / "llava", recipe["llava"], seed, size, use_cpu=not torch.cuda.is_available(),
                            scene_kind=recipe["pretrain"]["scene_kind"])
            before = json.loads((run / "llava.json").read_text())["per_task"]
            results[f"seed{seed}/{objective}"] = {**norms, "uncentred": before, "centred": centred["per_task"]}
            write_json_atomically(args.compare_dir / "centred" / f"seed{seed}" / f"{objective}.json", results[f"seed{seed}/{objective}"])
            print(f"seed {seed} {objective}: offset norm {norms['offset_norm']:.1f} -> {norms['offset_norm_after']:.2f}; "
                  + ", ".join(f"{t} {before[t]:.3f} -> {centred['per_task'][t]:.3f}" for t in before), flush=True)
    return results


if __name__ == "__main__":
    main()
