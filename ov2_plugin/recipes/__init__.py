"""Recipes: a pretraining run as data (model, data, optimiser, resolution stages) in a YAML/JSON file.

A recipe has up to four sections::

    model:  {preset: L/14, keep_ratio: 0.35}           # ModelArguments fields
    data:   {data: webdataset, caption_field: json:re_caption}   # DataArguments fields
    train:  {learning_rate: 8.0e-6, weight_decay: 0.2}  # TrainingArguments fields
    stages:                                             # run one after the other
      - {name: low-res, image_size: 84, samples: 12.8e9, per_device_train_batch_size: 512}
      - {name: high-res, image_size: 224, samples: 1.0e9, learning_rate: 4.0e-6}

Each stage starts from the weights the previous one saved (the sin-cos position table is
computed for the input's grid, so a resolution switch needs no weight surgery) and has its own
warmup + cosine schedule. ``samples`` sets the stage's step count from the global batch. A
recipe value replaces a flag's default; a flag given on the command line wins over the recipe
(from Python, a field set to a non-default value does). Built-in recipes live beside this file (``--recipe smoke``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BUILTIN = Path(__file__).parent
SECTIONS = ("model", "data", "train", "stages")


@dataclass
class Stage:
    """One resolution stage; ``train`` holds its TrainingArguments overrides (batch, learning rate...)."""

    name: str
    image_size: int | None = None
    samples: int | None = None
    train: dict[str, Any] = field(default_factory=dict)


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def read_recipe(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        path = BUILTIN / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Recipe {name_or_path!r} is neither a file nor a built-in recipe ({', '.join(builtin_recipes())})."
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict) or set(data) - set(SECTIONS):
        raise ValueError(f"Recipe {path} must be a mapping with sections {SECTIONS}; found {list(data or {})}.")
    return data


def _apply(section: str, target, values: dict, defaults_of, explicit: frozenset[str]) -> Any:
    """Set ``values`` on a copy of ``target`` where the field was not set explicitly and still holds its default."""
    known = {f.name: f for f in dataclasses.fields(defaults_of)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"Recipe section {section!r} has unknown keys {sorted(unknown)}; see `ov2 pretrain --help`.")
    target = copy.copy(target)
    for key, value in values.items():
        f = known[key]
        default = f.default if f.default is not dataclasses.MISSING else None
        current = getattr(target, key)
        if (key in explicit or current != default) and current != value:
            logger.info("recipe %s.%s=%r ignored: the command line set %r", section, key, value, current)
            continue
        setattr(target, key, value)
    return target


def parse_stages(raw: list, train_fields: set[str]) -> list[Stage]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("A recipe's 'stages' must be a non-empty list of {name, image_size, samples, ...}.")
    stages = []
    for i, s in enumerate(raw):
        s = dict(s)
        extra = set(s) - {"name", "image_size", "samples"} - train_fields
        if extra:
            raise ValueError(f"Stage {i + 1} has unknown keys {sorted(extra)}; use name, image_size, samples "
                             "or TrainingArguments fields such as per_device_train_batch_size, learning_rate.")
        samples = s.pop("samples", None)
        stages.append(Stage(
            name=str(s.pop("name", f"{i + 1}")),
            image_size=s.pop("image_size", None),
            samples=int(float(samples)) if samples is not None else None,  # YAML reads 1.2e9 as a string
            train=s,
        ))
    return stages


def load_recipe(recipe: str | None, model_args, data_args, train_args, explicit: frozenset[str] = frozenset()):
    """Apply a recipe to the three argument objects; returns them and the stage list.

    ``explicit``: field names given on the command line, kept even where they equal the default.
    """
    if recipe is None:
        return model_args, data_args, train_args, [Stage(name="main", image_size=model_args.image_size)]
    data = read_recipe(recipe)
    model_args = _apply("model", model_args, data.get("model") or {}, type(model_args), explicit)
    data_args = _apply("data", data_args, data.get("data") or {}, type(data_args), explicit)
    train_args = _apply("train", train_args, data.get("train") or {}, type(train_args), explicit)
    train_fields = {f.name for f in dataclasses.fields(type(train_args))}
    stages = parse_stages(data.get("stages") or [{"name": "main"}], train_fields)
    return model_args, data_args, train_args, stages
