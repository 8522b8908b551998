"""Pretraining objectives beside OpenVision 2's captioning, for comparisons at equal cost.

``openvision`` (OpenVision 1: contrastive + captioning on all tokens), ``clip`` (contrastive
only, sigmoid loss) and ``coca`` (open_clip's CoCa). Each shares the encoder config of
OpenVision 2 and exposes ``encoder``, an ``Ov2VisionModel``, so every downstream tool (probes,
LLaVA, evaluation) takes any of them unchanged. The core model files never import this package.
"""

from __future__ import annotations

from pathlib import Path

from ..configuration import Ov2Config
from .configuration import OBJECTIVES, Ov2ObjectiveConfig
from .contrastive import ClipStyleModel, ObjectiveOutput, OpenVisionModel

OBJECTIVE_MODEL_DIR = "objective_model"  # inside an 'ov2 pretrain' output: the whole baseline model


def objective_model_class(objective: str) -> type:
    if objective == "coca":
        from .coca import CocaModel

        return CocaModel
    classes = {"openvision": OpenVisionModel, "clip": ClipStyleModel}
    if objective not in classes:
        raise ValueError(f"Unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}.")
    return classes[objective]


def build_objective_model(objective: str, captioner_config: Ov2Config, init_from: str | None = None, **kwargs):
    """A new baseline with ``captioner_config``'s ViT and decoder sizes, or ``init_from``'s weights."""
    cls = objective_model_class(objective)
    if init_from:
        return cls.from_pretrained(init_from)
    return cls(Ov2ObjectiveConfig.from_captioner_config(captioner_config, objective, **kwargs))


def load_objective_model(path: str | Path):
    """The whole baseline model of an 'ov2 pretrain --objective X' output (or its ``objective_model`` folder)."""
    path = Path(path)
    if (path / OBJECTIVE_MODEL_DIR / "config.json").is_file():
        path = path / OBJECTIVE_MODEL_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no baseline model (config.json); pass an 'ov2 pretrain --objective' output.")
    config = Ov2ObjectiveConfig.from_pretrained(path)
    return objective_model_class(config.objective).from_pretrained(path)


def save_objective_outputs(model, out: str | Path) -> None:
    """``out/objective_model`` = the whole model (text tower kept, for retrieval); ``out`` = its
    encoder as an ``Ov2VisionModel`` folder, which replaces the whole model the Trainer saved there."""
    out = Path(out)
    model.save_pretrained(out / OBJECTIVE_MODEL_DIR)
    model.encoder.save_pretrained(out)


__all__ = ["OBJECTIVES", "OBJECTIVE_MODEL_DIR", "ClipStyleModel", "ObjectiveOutput", "OpenVisionModel",
           "Ov2ObjectiveConfig", "build_objective_model", "load_objective_model", "objective_model_class",
           "save_objective_outputs"]
