"""What the comparison's tower can learn to read when told the word directly: a ceiling for ``reading_budget``.

    python -m ov2_plugin.experiments.reading_ceiling --scene_kind reading-w32 --steps 600 --output_dir runs/reading-ceiling

Trains the recipe's ViT (``cpu-reading`` by default: its preset, overrides, resolution, batch and learning
rate) from the same initialisation as a pretraining with ``--seed``, with a linear head on its patch
tokens that names the scene's first word among the curriculum's training words (cross-entropy, AdamW,
constant learning rate), on the recipe's reading scenes; every ``--eval_every`` steps it scores the
whole-word accuracy on new scenes of training words (the stream the probes test on). No caption, no
decoder: if this reads and a captioner given the same steps does not, the caption pathway, not the
tower's size or the pictures, is what keeps the captioner from reading at that budget. Writes
``reading_ceiling.json`` (the accuracy curve) in ``--output_dir``.

``--readout``: what the head reads. ``mean``: the mean patch token as it is. ``mean_ln``: that mean
through a LayerNorm, as the contrastive objectives' pooled embedding sees the tower. ``token_ln``: each
token through a LayerNorm, then the mean, as the caption decoder's first pre-LN block sees the tokens
(with uniform attention). The LayerNorm's scale and offset are trained with the rest.

A plain loop, not the Trainer: a fixed number of steps with a held-out score every few, no checkpoint,
no resume, nothing the Trainer's machinery would add.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..atomic_json import write_json_atomically
from ..data.reading import SCENE_KINDS, curriculum_of, curriculum_words, reading_kind, scene_of
from ..data.transforms import eval_transform
from .objectives import model_arguments
from .reading_budget import budget_recipe
from .recipes import load_comparison_recipe


def scene_batch(kind: str, seed: int, start: int, count: int, size: int, vocab: dict[str, int]):
    """Pixels and first-word classes of reading scenes ``start .. start + count`` of stream ``seed``."""
    transform = eval_transform(size)
    scenes = [scene_of(kind, seed, i) for i in range(start, start + count)]
    return torch.stack([transform(s.render(size)) for s in scenes]), torch.tensor([vocab[s.words[0]] for s in scenes])


READOUTS = ("mean", "mean_ln", "token_ln")


def train_ceiling(recipe: dict, steps: int, seed: int = 0, eval_every: int = 100, test_scenes: int = 300,
                  readout: str = "mean", log=print) -> dict:
    from transformers import set_seed

    from ..pretrain import build_model

    if readout not in READOUTS:
        raise ValueError(f"Unknown readout {readout!r}; use one of {', '.join(READOUTS)}.")
    kind = reading_kind(recipe["pretrain"]["scene_kind"])
    if curriculum_of(kind).vocab_size is None:
        raise ValueError(f"Scene kind {kind!r} has no limited vocabulary to name; use a curriculum kind such as reading-w32.")
    vocab = {w: i for i, w in enumerate(curriculum_words(curriculum_of(kind))["train"])}
    size, batch = recipe["model"]["image_size"], recipe["pretrain"]["batch"]
    set_seed(seed)
    tower = build_model(model_arguments(recipe, "caption")).vision_model  # the weights a caption run with this seed starts from
    width = tower.config.hidden_size
    head, norm = torch.nn.Linear(width, len(vocab)), torch.nn.LayerNorm(width, eps=tower.config.layer_norm_eps)
    optimiser = torch.optim.AdamW([*tower.parameters(), *head.parameters(), *norm.parameters()],
                                  lr=recipe["pretrain"]["learning_rate"])
    test_x, test_y = scene_batch(kind, 1, 0, test_scenes, size, vocab)  # probe test stream: seed 1, training words

    def classify(pixels: torch.Tensor) -> torch.Tensor:
        tokens = tower(pixels).last_hidden_state[:, 1:]  # before the final norm, CLS dropped: the decoder's input
        if readout == "token_ln":
            return head(norm(tokens).mean(1))
        pooled = tokens.mean(1)
        return head(norm(pooled) if readout == "mean_ln" else pooled)

    curve, start = [], time.time()
    for step in range(1, steps + 1):
        x, y = scene_batch(kind, seed, (step - 1) * batch, batch, size, vocab)
        loss = torch.nn.functional.cross_entropy(classify(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                accuracy = (classify(test_x).argmax(1) == test_y).double().mean().item()
            curve.append({"step": step, "train_loss": loss.item(), "word_accuracy": accuracy})
            log(f"step {step}: loss {loss.item():.3f}, whole-word accuracy on new scenes {accuracy:.3f} "
                f"({time.time() - start:.0f} s)")
    majority = torch.bincount(test_y).max().item() / len(test_y)
    return {"scene_kind": kind, "readout": readout, "words": len(vocab), "test_scenes": test_scenes, "majority": majority, "curve": curve,
            "wall_s": time.time() - start}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ov2_plugin.experiments.reading_ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--recipe", default="cpu-reading", help="A comparison recipe (experiments/recipes.py) or its file.")
    p.add_argument("--scene_kind", default=None, choices=list(SCENE_KINDS), help="Reading scenes instead of the recipe's.")
    p.add_argument("--patch_size", type=int, default=None, help="Patch size instead of the preset's.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--readout", default="mean", choices=READOUTS, help="What the head reads (see above).")
    args = p.parse_args(argv)
    recipe = budget_recipe(load_comparison_recipe(args.recipe), "caption", args.scene_kind, patch_size=args.patch_size)
    result = {"recipe": recipe, "seed": args.seed, **train_ceiling(recipe, args.steps, args.seed, args.eval_every, readout=args.readout)}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.output_dir / "reading_ceiling.json", result, indent=2)
    return result


if __name__ == "__main__":
    main()
