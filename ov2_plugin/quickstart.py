"""``ov2 quickstart``: pretrain the tiny preset on the built-in scenes, then show what it learned.

Sized for a 2-core CPU: the whole run, evaluation included, takes about a quarter of an hour, and the
held-out report says whether the encoder learned colours, shapes and counts or only the
caption template.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .caption import caption_images
from .data.scenes import make_scene
from .devices import bf16_is_fast
from .pretrain import DataArguments, ModelArguments, PretrainArguments, run_pretraining


def quickstart_arguments(
    output_dir: str, max_steps: int | None = None, eval_samples: int | None = None
) -> tuple[ModelArguments, DataArguments, PretrainArguments]:
    """The built-in ``quickstart`` recipe; bf16 autocast where it is fast (a GPU, a CPU with bf16 matmul instructions)."""
    bf16 = bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu")
    train = PretrainArguments(output_dir=output_dir, use_cpu=not torch.cuda.is_available(), bf16=bf16, seed=0)
    if max_steps:
        train.max_steps = max_steps
    data = DataArguments(recipe="quickstart")
    if eval_samples:
        data.eval_samples = eval_samples
    return ModelArguments(), data, train


def show_report(metrics: dict, output_dir: Path, console: Console) -> None:
    table = Table(title="Held-out built-in scenes (never seen in training)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("caption token accuracy", f"{metrics['token_accuracy']:.1%}")
    table.add_row("scenes with every count, colour and shape right", f"{metrics['attributes_all_right']:.1%}")
    table.add_row("final training loss (mean over run)", f"{metrics['train_loss']:.3f}")
    console.print(table)
    from .loading import load_captioner

    model = load_captioner(output_dir).eval()
    scenes = [make_scene(seed=1, index=i) for i in range(4)]
    captions = caption_images(model, [s.render(model.config.vision_config.image_size) for s in scenes])
    samples = Table(title="Sample captions")
    samples.add_column("true caption")
    samples.add_column("generated")
    for i, (scene, text) in enumerate(zip(scenes, captions)):
        scene.render(256).save(output_dir / f"sample_{i}.png")
        samples.add_row(scene.caption, text)
    console.print(samples)
    console.print(f"Model, report.json and loss.png are in {output_dir}/")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="ov2 quickstart", description=__doc__)
    parser.add_argument("--output_dir", default="runs/quickstart")
    parser.add_argument("--max_steps", type=int, default=None, help="shorten the run (the recipe's 3000 by default)")
    parser.add_argument("--eval_samples", type=int, default=None, help="held-out scenes to score (the recipe's 256)")
    args = parser.parse_args(argv)
    console = Console()
    console.rule("OpenVision 2 quickstart: captioning-only pretraining of the tiny preset")
    metrics = run_pretraining(*quickstart_arguments(args.output_dir, args.max_steps, args.eval_samples))
    show_report(metrics, Path(args.output_dir), console)
    print(json.dumps({k: metrics[k] for k in ("token_accuracy", "attributes_all_right")}))
    return metrics
