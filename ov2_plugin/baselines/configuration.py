"""Configuration of the baseline pretraining models (OpenVision-1 style, CLIP style, CoCa).

They share OpenVision 2's encoder and decoder configs (``Ov2Config``), so the same preset and
``--config_overrides`` build the same ViT whatever the objective; the fields added here say
which objective the model trains and how its text side is shaped.
"""

from __future__ import annotations

from typing import Any

from ..configuration import Ov2Config

OBJECTIVES = ("caption", "openvision", "clip", "coca")
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")


class Ov2ObjectiveConfig(Ov2Config):
    """``Ov2Config`` + the objective.

    Args:
        objective: ``openvision`` (text encoder + softmax contrastive + captioning on all visual
            tokens), ``clip`` (text encoder + contrastive only) or ``coca`` (open_clip's CoCa).
        contrastive_loss: ``softmax`` (CLIP's InfoNCE) or ``sigmoid`` (SigLIP's pairwise loss);
            by default softmax for ``openvision`` (as OpenVision 1) and sigmoid for ``clip``.
        text_length: positions of the text encoder (captions are cut to it).
        num_captions: captions per image through the text encoder (bench: one or two).
    """

    model_type = "openvision2_objective"

    def __init__(self, objective: str = "openvision", contrastive_loss: str | None = None, text_length: int | None = None,
                 num_captions: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if objective not in OBJECTIVES[1:]:
            raise ValueError(f"Unknown baseline objective {objective!r}; use one of {', '.join(OBJECTIVES[1:])} "
                             "('caption' is OpenVision 2 itself, Ov2ForCaptioning).")
        loss = contrastive_loss or ("sigmoid" if objective == "clip" else "softmax")
        if loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"Unknown contrastive_loss {loss!r}; use softmax or sigmoid.")
        self.objective = objective
        self.contrastive_loss = loss
        self.text_length = text_length or self.decoder_config.max_length
        self.num_captions = num_captions
        if objective == "openvision":
            self.keep_ratio = 1.0  # OpenVision (1) decodes from every visual token

    @classmethod
    def from_captioner_config(cls, config: Ov2Config, objective: str, **kwargs: Any) -> Ov2ObjectiveConfig:
        """The same ViT and decoder sizes as ``config`` (an OpenVision 2 captioner's), another objective."""
        return cls(objective=objective, vision_config=config.vision_config.to_dict(),
                   decoder_config=config.decoder_config.to_dict(), keep_ratio=config.keep_ratio, **kwargs)
