"""Linear probes of a frozen tower on the built-in scenes: what its features hold, with no language model.

    python -m ov2_plugin.evaluation.scene_probe runs/ov2 runs/random_tower --output_dir runs/probe

The LLaVA comparison (``ov2_plugin.experiments.llava_end_to_end``) measures a tower *through* a small
language model that learns for a few minutes; when two towers score alike there, it cannot say
whether the towers are alike or the language model used neither. A probe answers the first
question alone. For every attribute the built-in questions ask about (the word, and for each
shape: present, how many, which colour, which column) it fits closed-form ridge regression on
one-hot targets, as big_vision's few-shot evaluator does, from the features LLaVA's projector
receives (one hidden state, CLS dropped), on training scenes, and scores held-out scenes.
Two views: ``patch`` (all patch features side by side, positions kept: what the projector sees)
and ``pooled`` (their mean: what the tower says about the picture as a whole).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data.reading import LETTERS, SCENE_KINDS, ReadingScene, curriculum_of, curriculum_words, reading_kind, scene_of
from ..data.scenes import COLOURS, COLUMN_NAMES, SHAPES, WORDS, Scene, make_scene

COLOUR_NAMES = tuple(COLOURS)
RIDGE = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # per unit of mean kernel diagonal; picked on a validation split
ATTRIBUTES = ("word", "presence", "count", "colour", "position")  # named as the question types they serve
CONDITIONAL = ("count", "colour", "position")  # asked only about a shape that is there


def scene_targets(scene: Scene) -> dict[str, int]:
    """Class index of every probed attribute; 0 means "none" (no word, shape absent, not a single object)."""
    groups = {g.shape: g for g in scene.groups}
    out = {"word": WORDS.index(scene.word) + 1 if scene.word else 0}
    for shape in SHAPES:
        g = groups.get(shape)
        out[f"presence/{shape}"] = int(g is not None)
        out[f"count/{shape}"] = g.count if g else 0
        out[f"colour/{shape}"] = COLOUR_NAMES.index(g.colour) + 1 if g else 0
        out[f"position/{shape}"] = COLUMN_NAMES.index(g.column) + 1 if g and g.count == 1 else 0
    return out


def attribute_of(name: str) -> str:
    """``"colour/circle"`` -> ``"colour"``: the question type a target serves."""
    return name.split("/")[0]


def num_classes(name: str) -> int:
    sizes = {"word": len(WORDS) + 1, "presence": 2, "count": 4, "colour": len(COLOUR_NAMES) + 1, "position": 4,
             "letter": len(LETTERS)}
    return sizes[attribute_of(name)]


@torch.no_grad()
def tower_features(path: str | Path, seed: int, num_scenes: int, layer: int = -2, batch: int = 100,
                   scenes: str = "shapes", split: str = "train") -> torch.Tensor:
    """(scenes, patches, width) hidden state ``layer`` of the tower at ``path``, CLS dropped (LLaVA's 'patch').

    ``scenes``/``split``: which built-in pictures (``data/reading.py``: shapes, reading, mixed)."""
    from transformers import AutoImageProcessor

    from ..loading import load_vision_model

    device = "cuda" if torch.cuda.is_available() else "cpu"  # a B/16 tower's probe takes minutes on a CPU
    model = load_vision_model(path).eval().to(device)
    processor = AutoImageProcessor.from_pretrained(path)
    size = model.config.image_size
    out = []
    for start in range(0, num_scenes, batch):
        images = [scene_of(scenes, seed, i, split).render(size) for i in range(start, min(num_scenes, start + batch))]
        pixels = processor(images, return_tensors="pt")["pixel_values"].to(device)
        out.append(model(pixels, output_hidden_states=layer).hidden_states[layer][:, 1:].float().cpu())
    return torch.cat(out)


def ridge_probe(train_x: torch.Tensor, train_y: dict[str, torch.Tensor], test_x: torch.Tensor,
                test_y: dict[str, torch.Tensor], val_share: float = 0.2,
                classes: dict[str, int] | None = None) -> dict[str, float]:
    """Held-out accuracy per attribute. Kernel form, because the patch view is wider than the number of scenes.

    All attributes share one eigendecomposition; each picks its ridge strength on the last
    ``val_share`` of the training scenes, then is refitted on all of them. ``classes``: class counts
    of targets ``num_classes`` does not know (the whole-word probe's vocabulary).
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    names = list(train_y)
    sizes = [(classes or {}).get(n) or num_classes(n) for n in names]
    onehot = torch.cat([torch.nn.functional.one_hot(train_y[n], k) for n, k in zip(names, sizes)], 1).double()
    blocks = torch.tensor(sizes).cumsum(0).tolist()
    n_fit = int(len(train_x) * (1 - val_share))

    def fit_predict(x: torch.Tensor, y: torch.Tensor, query: torch.Tensor) -> list[torch.Tensor]:
        prior = y.mean(0)  # the intercept: features are centred, targets must be too
        kernel = x @ x.T
        evals, evecs = torch.linalg.eigh(kernel)
        projected, cross = evecs.T @ (y - prior), query @ x.T @ evecs
        scale = kernel.diagonal().mean()
        return [prior + cross @ (projected / (evals + lam * scale)[:, None]) for lam in RIDGE]

    def accuracies(scores: torch.Tensor, truth: dict[str, torch.Tensor]) -> dict[str, float]:
        parts = torch.tensor_split(scores, blocks[:-1], dim=1)
        return {n: _accuracy(p, truth[n], n) for n, p in zip(names, parts)}

    val_truth = {n: y[n_fit:] for n, y in train_y.items()}
    val = [accuracies(s, val_truth) for s in fit_predict(train_x[:n_fit], onehot[:n_fit], train_x[n_fit:])]
    test = [accuracies(s, test_y) for s in fit_predict(train_x, onehot, test_x)]
    best = {n: max(range(len(RIDGE)), key=lambda i: val[i][n]) for n in names}
    return {n: test[best[n]][n] for n in names}


def _asked(truth: torch.Tensor, name: str) -> torch.Tensor:
    """Where the question is asked: count, colour and position only about a shape that is there
    (position: a single object); presence and the word always."""
    return truth > 0 if attribute_of(name) in CONDITIONAL else torch.ones_like(truth, dtype=torch.bool)


def _accuracy(scores: torch.Tensor, truth: torch.Tensor, name: str) -> float:
    """Accuracy where the question is asked, choosing among the real answers (never "none");
    NaN when it is asked nowhere."""
    asked = _asked(truth, name)
    if attribute_of(name) in CONDITIONAL:
        scores = torch.cat([torch.full_like(scores[:, :1], -torch.inf), scores[:, 1:]], 1)
    return (scores[asked].argmax(1) == truth[asked]).double().mean().item()


def _per_attribute(values: dict[str, float], truth: dict[str, torch.Tensor]) -> dict[str, float]:
    """Shape-level numbers pooled into one per attribute, weighted by how often each is asked."""
    out = {}
    for a in ATTRIBUTES:
        weights = {k: _asked(t, k).sum().item() for k, t in truth.items() if attribute_of(k) == a}
        total = sum(weights.values())
        out[a] = sum(values[k] * w for k, w in weights.items() if w) / total if total else float("nan")
    return out


def probe_towers(towers: dict[str, str | Path], train_scenes: int = 2000, test_scenes: int = 500,
                 layer: int = -2) -> dict:
    """Per tower and view, held-out probe accuracy per attribute (pooled over the four shapes)."""
    targets = {}
    for seed, n in ((0, train_scenes), (1, test_scenes)):  # seed 1: scenes no probe was fitted on
        rows = [scene_targets(make_scene(seed, i)) for i in range(n)]
        targets[seed] = {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}
    results = {}
    for name, path in towers.items():
        train_f, test_f = tower_features(path, 0, train_scenes, layer), tower_features(path, 1, test_scenes, layer)
        results[name] = {}
        for view in ("patch", "pooled"):
            pick = (lambda f: f.flatten(1)) if view == "patch" else (lambda f: f.mean(1))
            per_name = ridge_probe(pick(train_f), targets[0], pick(test_f), targets[1])
            results[name][view] = _per_attribute(per_name, targets[1])
    majority = _per_attribute({k: _majority_accuracy(t, k) for k, t in targets[1].items()}, targets[1])
    return {"majority": majority, "towers": results, "settings": {"train_scenes": train_scenes,
            "test_scenes": test_scenes, "layer": layer}}


def _majority_accuracy(truth: torch.Tensor, name: str) -> float:
    """What always giving the commonest answer scores: the floor for each row of the table."""
    asked = truth[_asked(truth, name)]
    return torch.bincount(asked).max().item() / len(asked) if len(asked) else float("nan")


READING_LETTERS = 3  # letters probed: the first three of the first word (every reading word has 3 or more)
WORD_TARGET = "reading_word"  # the whole-word probe's target (curricula with a limited vocabulary only)


def reading_targets(scene: ReadingScene) -> dict[str, int]:
    """Letter ``i`` of the first word, as an index into a-z, for i < READING_LETTERS.

    Why letters and not the word: a linear probe can only name classes it was fitted on, and the
    held-out words are never in its training scenes; letters are shared by seen and unseen words.
    """
    return {f"letter/{i + 1}": LETTERS.index(scene.words[0][i]) for i in range(READING_LETTERS)}


def _reading_sets(train_scenes: int, test_scenes: int) -> dict[str, tuple[int, str, int]]:
    """name -> (seed, split, scenes): the probe's training scenes and its two test sets."""
    return {"train": (0, "train", train_scenes), "reading_seen": (1, "train", test_scenes),
            "reading_unseen": (1, "held_out", test_scenes)}


def _reading_target_sets(kind: str, sets: dict[str, tuple[int, str, int]]) -> dict[str, dict[str, torch.Tensor]]:
    """Letter targets of every set, and the first word's class where the curriculum's vocabulary is limited
    (training words only: a held-out word is no class the probe was fitted on)."""
    words = curriculum_words(curriculum_of(kind))["train"] if curriculum_of(kind).vocab_size else ()
    vocab = {w: i for i, w in enumerate(words)}
    targets = {}
    for name, (seed, split, n) in sets.items():
        scenes = [scene_of(kind, seed, i, split) for i in range(n)]
        rows = [reading_targets(s) for s in scenes]
        targets[name] = {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}
        if vocab and split == "train":
            targets[name][WORD_TARGET] = torch.tensor([vocab[s.words[0]] for s in scenes])
    return targets


def probe_reading(towers: dict[str, str | Path], train_scenes: int = 2000, test_scenes: int = 500,
                  layer: int = -2, kind: str = "reading") -> dict:
    """Letter probes fitted on reading scenes of training words, scored on new scenes of training
    words (``reading_seen``) and of held-out words never drawn in training (``reading_unseen``).

    ``kind``: whose reading scenes (``data/reading.py``: ``reading``, or a curriculum's ``reading-<c>``;
    a mixed kind means its reading scenes). Where the vocabulary is limited, also ``reading_word_seen``:
    the first word itself, one class per training word, on the seen-word scenes. ``majority`` holds
    what always giving the commonest answer scores, per task.
    """
    kind = reading_kind(kind)
    sets = _reading_sets(train_scenes, test_scenes)
    targets = _reading_target_sets(kind, sets)
    with_word = WORD_TARGET in targets["train"]
    classes = {WORD_TARGET: len(curriculum_words(curriculum_of(kind))["train"])} if with_word else None
    letters = lambda d: sum(v for k, v in d.items() if k != WORD_TARGET) / READING_LETTERS  # noqa: E731 - equal weights
    results = {}
    for tower, path in towers.items():
        feats = {name: tower_features(path, seed, n, layer, scenes=kind, split=split)
                 for name, (seed, split, n) in sets.items()}
        results[tower] = {}
        for view in ("patch", "pooled"):
            pick = (lambda f: f.flatten(1)) if view == "patch" else (lambda f: f.mean(1))
            row = {}
            for name in ("reading_seen", "reading_unseen"):
                fit_y = {k: v for k, v in targets["train"].items() if k in targets[name]}
                acc = ridge_probe(pick(feats["train"]), fit_y, pick(feats[name]), targets[name], classes=classes)
                row[name] = letters(acc)
                if WORD_TARGET in acc:
                    row["reading_word_seen"] = acc[WORD_TARGET]
            results[tower][view] = row
    majority = {name: letters({k: _majority_accuracy(t, k) for k, t in targets[name].items()})
                for name in ("reading_seen", "reading_unseen")}
    if with_word:
        majority["reading_word_seen"] = _majority_accuracy(targets["reading_seen"][WORD_TARGET], WORD_TARGET)
    return {"majority": majority, "towers": results, "settings": {"train_scenes": train_scenes,
            "test_scenes": test_scenes, "layer": layer, "letters": READING_LETTERS, "kind": kind}}


def markdown_reading(results: dict) -> str:
    names = list(results["towers"])
    head = " | ".join(f"{n} ({v})" for n in names for v in ("patch", "pooled"))
    what = f"first {READING_LETTERS} letters" + ("; whole first word" if "reading_word_seen" in results["majority"] else "")
    rows = [f"| reading ({what}) | majority answer | {head} |",
            "|---|---|" + "---|" * (2 * len(names))]
    for a in results["majority"]:
        cells = " | ".join(f"{results['towers'][n][v][a]:.3f}" for n in names for v in ("patch", "pooled"))
        rows.append(f"| {a} | {results['majority'][a]:.3f} | {cells} |")
    return "\n".join(rows) + "\n"


def markdown(results: dict) -> str:
    names = list(results["towers"])
    head = " | ".join(f"{n} ({v})" for n in names for v in ("patch", "pooled"))
    rows = [f"| attribute | majority answer | {head} |", "|---|---|" + "---|" * (2 * len(names))]
    for a in ATTRIBUTES:
        cells = " | ".join(f"{results['towers'][n][v][a]:.3f}" for n in names for v in ("patch", "pooled"))
        rows.append(f"| {a} | {results['majority'][a]:.3f} | {cells} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("towers", nargs="+", help="OpenVision 2 folders (a pretrained one, a random control, ...).")
    p.add_argument("--output_dir", default=None, help="Write probe.json and probe.md here.")
    p.add_argument("--train_scenes", type=int, default=2000)
    p.add_argument("--test_scenes", type=int, default=500)
    p.add_argument("--layer", type=int, default=-2, help="Hidden state to probe (LLaVA's mm_vision_select_layer).")
    p.add_argument("--task", choices=["shapes", "reading"], default="shapes",
                   help="shapes: the attributes above; reading: letters of words from a large vocabulary, "
                        "seen and held-out words (data/reading.py).")
    p.add_argument("--scene_kind", default="reading", choices=list(SCENE_KINDS),
                   help="--task reading: whose reading scenes (a curriculum's, e.g. reading-cpu, adds a whole-word probe).")
    args = p.parse_args(argv)
    towers = {t: t for t in args.towers}
    if args.task == "shapes":
        results, table = probe_towers(towers, args.train_scenes, args.test_scenes, args.layer), markdown
    else:
        results = probe_reading(towers, args.train_scenes, args.test_scenes, args.layer, kind=args.scene_kind)
        table = markdown_reading
    print(table(results))
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = "probe" if args.task == "shapes" else "probe_reading"
        (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
        (out / f"{stem}.md").write_text(table(results))
    return results


if __name__ == "__main__":
    main()
