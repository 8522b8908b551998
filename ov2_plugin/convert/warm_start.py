"""Warm start: initialise our encoder from a Hugging Face ``CLIPVisionModel`` or
``SiglipVisionModel`` folder (or a whole ``CLIPModel`` / ``SiglipModel``), where shapes allow.

This is an initialisation, not a conversion: CLIP has a pre-LN and learned positions, SigLIP
has a patch bias, learned positions, no CLS token and an attention-pool head; our encoder has
none of these, so the result computes something else until it is trained. The report says
exactly which tensors were copied and why the others were not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configuration import Ov2VisionConfig
from ..loading import resolve_model_path
from ..modeling_vision import Ov2VisionModel
from .release import load_state_dict_file

SUPPORTED = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}
PREFIX = "vision_model."

# Why a source tensor has no place in our encoder.
_SOURCE_ONLY = {
    "embeddings.position_embedding.weight": "learned positions; ours are the computed sin-cos table",
    "pre_layrnorm.weight": "CLIP's pre-LN; our encoder has none",
    "pre_layrnorm.bias": "CLIP's pre-LN; our encoder has none",
    "embeddings.patch_embedding.bias": "SigLIP's patch bias; our patch conv has no bias",
    "embeddings.position_ids": "a buffer, not a weight",
}

_SAME_NAME = ("layer_norm1.weight", "layer_norm1.bias", "layer_norm2.weight", "layer_norm2.bias",
              "self_attn.out_proj.weight", "self_attn.out_proj.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


@dataclass
class WarmStartReport:
    source: str
    source_type: str
    copied: list[str] = field(default_factory=list)
    not_copied: dict[str, str] = field(default_factory=dict)  # our key -> reason (kept its fresh init)
    source_unused: dict[str, str] = field(default_factory=dict)  # source key (no vision_model. prefix) -> reason

    def summary(self) -> str:
        lines = [f"warm start from {self.source_type} ({self.source}): copied {len(self.copied)} tensors"]
        lines += [f"  not copied (fresh init): {k}: {why}" for k, why in self.not_copied.items()]
        reasons: dict[str, list[str]] = {}
        for key, why in self.source_unused.items():
            reasons.setdefault(why, []).append(key)
        lines += [f"  source unused: {len(keys)} tensor(s), {why} (e.g. {keys[0]})" for why, keys in reasons.items()]
        return "\n".join(lines)


def _read_source(folder: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; a warm start needs a Hugging Face CLIP or SigLIP folder.")
    cfg = json.loads(config_file.read_text())
    model_type = cfg.get("model_type", "")
    if model_type not in SUPPORTED:
        raise ValueError(f"{str(folder)!r} holds a {model_type!r} model; a warm start takes {', '.join(SUPPORTED)}.")
    vision_cfg = cfg.get("vision_config", {}) if model_type in ("clip", "siglip") else cfg
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return SUPPORTED[model_type], vision_cfg, load_state_dict_file(folder / name)
    raise FileNotFoundError(f"{str(folder)!r} has no model.safetensors or pytorch_model.bin.")


def config_from_source(vision_cfg: dict[str, Any], folder: Path, **overrides: Any) -> Ov2VisionConfig:
    """An encoder config with the source's sizes, activation and eps, so copied blocks compute as there.

    Mean/std come from the source's ``preprocessor_config.json`` when present, because the copied
    patch embedding was trained on inputs normalised that way.
    """
    fields: dict[str, Any] = dict(
        hidden_size=vision_cfg.get("hidden_size", 768),
        num_hidden_layers=vision_cfg.get("num_hidden_layers", 12),
        intermediate_size=vision_cfg.get("intermediate_size", 3072),
        num_attention_heads=vision_cfg.get("num_attention_heads", 12),
        patch_size=vision_cfg.get("patch_size", 16),
        image_size=vision_cfg.get("image_size", 224),
        num_channels=vision_cfg.get("num_channels", 3),
        hidden_act=vision_cfg.get("hidden_act", "gelu"),
        layer_norm_eps=vision_cfg.get("layer_norm_eps", 1e-6),
    )
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        pre_cfg = json.loads(pre.read_text())
        fields.update({k: tuple(pre_cfg[k]) for k in ("image_mean", "image_std") if k in pre_cfg})
    fields.update(overrides)
    return Ov2VisionConfig(**fields)


def _source_tensor(src: dict[str, torch.Tensor], ours_key: str) -> tuple[torch.Tensor | None, list[str]]:
    """The source tensor for one of our keys (and the source keys it used), or None if there is none."""
    if ours_key == "embeddings.patch_embedding.weight":
        names = ["embeddings.patch_embedding.weight"]
    elif ours_key == "embeddings.class_embedding":
        names = ["embeddings.class_embedding"]
    elif ours_key.startswith("post_layernorm."):
        names = [ours_key]
    else:
        i, rest = ours_key.split(".", 2)[1:]
        base = f"encoder.layers.{i}."
        if rest.startswith("self_attn.qkv."):  # HF keeps q, k, v apart; ours is fused in q, k, v order
            kind = rest.rsplit(".", 1)[1]
            names = [f"{base}self_attn.{p}_proj.{kind}" for p in "qkv"]
            if all(n in src for n in names):
                return torch.cat([src[n] for n in names]), names
            return None, names
        names = [base + rest]
    return (src[names[0]], names) if names[0] in src else (None, names)


def warm_start_from_hf(src: str | Path, config: Ov2VisionConfig | None = None, **overrides: Any) -> tuple[Ov2VisionModel, WarmStartReport]:
    """Our encoder initialised from a HF CLIP/SigLIP vision folder, and what was copied.

    Without ``config`` the encoder takes the source's sizes (so everything that can be copied
    is); with one, tensors whose shapes differ keep their fresh init and are reported.
    """
    folder = resolve_model_path(src)
    source_type, vision_cfg, state = _read_source(folder)
    if any(k.startswith(PREFIX) for k in state):  # CLIPModel/SiglipModel, or older saves of the vision model
        state = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    src_state = state  # transformers 5 saves CLIPVisionModel/SiglipVisionModel without the prefix
    config = config or config_from_source(vision_cfg, folder, **overrides)
    torch.manual_seed(0)
    model = Ov2VisionModel(config)
    report = WarmStartReport(str(src), source_type)
    used: set[str] = set()
    new_state = model.state_dict()
    for key, target in new_state.items():
        tensor, names = _source_tensor(src_state, key)
        if tensor is None:
            report.not_copied[key] = f"no {names[0]} in the source"
            continue
        used.update(names)
        if tensor.shape != target.shape:
            report.not_copied[key] = f"shape {tuple(tensor.shape)} in the source, {tuple(target.shape)} here"
            continue
        new_state[key] = tensor.to(target.dtype)
        report.copied.append(key)
    model.load_state_dict(new_state)
    for key in sorted(set(src_state) - used):
        report.source_unused[key] = _SOURCE_ONLY.get(key, "SigLIP's attention-pool head" if key.startswith("head.") else "no counterpart in our encoder")
    return model, report


def warm_start_to_folder(src: str | Path, dst: str | Path, **overrides: Any) -> WarmStartReport:
    """Warm-start an encoder and save it with its image processor and the report as JSON."""
    from ..image_processing import make_image_processor

    model, report = warm_start_from_hf(src, **overrides)
    dst = Path(dst)
    model.save_pretrained(dst)
    make_image_processor(model.config).save_pretrained(dst)
    (dst / "warm_start_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
