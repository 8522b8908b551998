"""The release's open_clip layout <-> ours, in both directions, for configs and tensors.

The official OpenVision (2) releases store the encoder in open_clip's ``VisionTransformer``
key layout and describe it with an open_clip ``model_cfg`` (``vision_cfg``) plus a
``preprocess_cfg``. Everything here is pure data manipulation on plain ``dict``s of tensors, so
the mapping can be read (and fixed) in one place; file handling lives in ``release.py``.

Release (open_clip) key                         ours (``Ov2VisionModel``)
``conv1.weight``                                ``embeddings.patch_embedding.weight``
``class_embedding``                             ``embeddings.class_embedding``
``positional_embedding``  [1+N, D]              computed (checked; the stored table kept for export)
``transformer.resblocks.{i}.ln_1``              ``layers.{i}.layer_norm1``
``transformer.resblocks.{i}.attn.in_proj_*``    ``layers.{i}.self_attn.qkv``
``transformer.resblocks.{i}.attn.out_proj``     ``layers.{i}.self_attn.out_proj``
``transformer.resblocks.{i}.ln_2``              ``layers.{i}.layer_norm2``
``transformer.resblocks.{i}.mlp.c_fc``          ``layers.{i}.mlp.fc1``
``transformer.resblocks.{i}.mlp.c_proj``        ``layers.{i}.mlp.fc2``
``ln_post``                                     ``post_layernorm``
``proj``  [D, embed_dim]                        none: kept aside and written back on export

Caption decoder (``caption_decoder.safetensors``), release key -> ours inside ``decoder.``:
``token_embedding.weight``, ``image_projection.weight``, ``lm_head.weight`` -> ``embed_tokens``,
``image_projection``, ``lm_head`` (all [out, in]); ``blocks.{i}.*`` -> ``layers.{i}.*`` with the
block names above; ``ln_final`` -> ``norm``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..configuration import Ov2DecoderConfig, Ov2VisionConfig
from ..modeling_vision import sincos_2d_table

# What a release runs when its config leaves a key out. Preprocessing: ImageNet mean/std, bilinear,
# squash (the release's preprocess_cfg), never open_clip's OpenAI-CLIP defaults. LayerNorm eps: the
# authors' patched open_clip builds every OpenVision 2 LayerNorm with 1e-6 whatever norm_kwargs
# says; OpenVision 1 releases (with a text tower) run in upstream open_clip, which takes norm_kwargs
# and otherwise torch's 1e-5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RELEASE_PREPROCESS = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear", "resize_mode": "squash"}
OV2_LN_EPS = 1e-6
UPSTREAM_OPEN_CLIP_LN_EPS = 1e-5

# One transformer block, release name -> our name. The caption decoder uses the same block.
BLOCK_KEYS: dict[str, str] = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.in_proj_weight": "self_attn.qkv.weight",
    "attn.in_proj_bias": "self_attn.qkv.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}

VISION_TOP_KEYS: dict[str, str] = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
POS_KEY = "positional_embedding"  # computed by our model; checked on import, the stored one kept for export
VISION_EXTRA_KEYS = ("proj",)  # contrastive projection: not part of our encoder, carried along

# The caption decoder as every OpenVision 2 release stores it (``caption_decoder.safetensors``,
# loaded strictly by the authors' ``OpenVision2TextDecoder``): blocks under ``blocks.{i}`` with the
# same names as the encoder's blocks; the image projection and the head are plain ``nn.Linear``
# weights without bias ([out, in], the same orientation as ours, so nothing is transposed).
DECODER_TOP_KEYS: dict[str, str] = {
    "token_embedding.weight": "embed_tokens.weight",  # [V, E]
    "image_projection.weight": "image_projection.weight",  # [E, vision width]
    "ln_final.weight": "norm.weight",
    "ln_final.bias": "norm.bias",
    "lm_head.weight": "lm_head.weight",  # [V, E]
}

# text_decoder_config.json: the fields the authors' loader reads, and the optional ones with the
# defaults of their decoder config (LayerNorm eps 1e-6 as Flax, pad id 0).
DECODER_CONFIG_FIELDS = ("width", "depth", "num_heads", "mlp_dim", "vocab_size", "vision_width", "bos_id", "eos_id")
DECODER_CONFIG_OPTIONAL = {"pad_id": 0, "layer_norm_eps": 1e-6}

# vision_cfg settings our encoder does not implement, with the value it needs.
_REQUIRED_VISION_SETTINGS: dict[str, Any] = {
    "no_ln_pre": True,
    "pool_type": "avg",
    "final_ln_after_pool": True,
}
_UNSUPPORTED_IF_TRUE = (
    "timm_model_name", "attentional_pool", "ls_init_value", "qk_norm", "scaled_cosine_attn",
    "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc", "output_tokens_only",
)


def vision_key_map(num_layers: int) -> dict[str, str]:
    """Every stored encoder key (release name -> our name) for ``num_layers`` blocks."""
    keys = dict(VISION_TOP_KEYS)
    for i in range(num_layers):
        keys.update({f"transformer.resblocks.{i}.{k}": f"layers.{i}.{v}" for k, v in BLOCK_KEYS.items()})
    return keys


def decoder_key_map(num_layers: int) -> dict[str, str]:
    """Every stored caption-decoder key (release name -> our name inside ``decoder.``)."""
    keys = dict(DECODER_TOP_KEYS)
    for i in range(num_layers):
        keys.update({f"blocks.{i}.{k}": f"layers.{i}.{v}" for k, v in BLOCK_KEYS.items()})
    return keys


# ---------------------------------------------------------------- configs


def _activation_from_open_clip(model_cfg: dict[str, Any], act_kwargs: dict[str, Any] | None) -> str:
    """open_clip's activation for a tower: QuickGELU with ``quick_gelu``, else nn.GELU(**act_kwargs)."""
    if model_cfg.get("quick_gelu"):
        return "quick_gelu"
    approximate = (act_kwargs or {}).get("approximate", "none")
    if approximate == "none" and not set(act_kwargs or {}) - {"approximate"}:
        return "gelu"
    if approximate == "tanh" and not set(act_kwargs or {}) - {"approximate"}:
        return "gelu_pytorch_tanh"
    raise ValueError(f"act_kwargs {act_kwargs!r} are not supported; OpenVision releases use exact or tanh GELU.")


def _activation_to_open_clip(hidden_act: str) -> tuple[bool, dict[str, str] | None]:
    """(quick_gelu, act_kwargs) that make open_clip run ``hidden_act``."""
    table = {"gelu": (False, None), "gelu_pytorch_tanh": (False, {"approximate": "tanh"}), "quick_gelu": (True, None)}
    if hidden_act not in table:
        raise ValueError(f"hidden_act {hidden_act!r} has no open_clip equivalent; use gelu, gelu_pytorch_tanh or quick_gelu.")
    return table[hidden_act]


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{name} {value} is not square; OpenVision encoders take square images.")
        value = value[0]
    return int(value)


def release_preprocess(preprocess_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The release's preprocessing: its ``preprocess_cfg`` over ImageNet + bilinear + squash."""
    return {**RELEASE_PREPROCESS, **(preprocess_cfg or {})}


def layer_norm_eps(model_cfg: dict[str, Any]) -> float:
    """The eps the release's own code runs (see ``OV2_LN_EPS``): OpenVision 2 releases have no text tower."""
    configured = ((model_cfg.get("vision_cfg") or {}).get("norm_kwargs") or {}).get("eps")
    if "text_cfg" not in model_cfg:
        return OV2_LN_EPS
    return float(configured) if configured is not None else UPSTREAM_OPEN_CLIP_LN_EPS


def vision_config_from_open_clip(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None) -> Ov2VisionConfig:
    """Our encoder config from an open_clip ``model_cfg``; a clear error for a different architecture.

    Mean/std come from ``preprocess_cfg`` (ImageNet where absent), so the saved image processor
    normalises as the release does; the image size need not be a multiple of the patch.
    """
    vc = model_cfg.get("vision_cfg")
    if not isinstance(vc, dict):
        raise ValueError("open_clip_config.json has no model_cfg.vision_cfg; it is not an open_clip model config.")
    problems = [f"{k}={vc.get(k)!r} (needs {v!r})" for k, v in _REQUIRED_VISION_SETTINGS.items() if vc.get(k) != v]
    problems += [f"{k}={vc[k]!r} (needs it off)" for k in _UNSUPPORTED_IF_TRUE if vc.get(k)]
    if isinstance(vc.get("layers", 12), (list, tuple)):
        problems.append("layers is a list (a ResNet tower)")
    if vc.get("block_type") not in (None, "default"):
        problems.append(f"block_type={vc['block_type']!r} (needs the default block)")
    if problems:
        raise ValueError(
            "This open_clip model is not an OpenVision (2) ViT encoder, which has no pre-LN, average pooling "
            "and the final LayerNorm after pooling: " + "; ".join(problems) + ". Only OpenVision / OpenVision 2 "
            "releases (or open_clip ViTs configured that way) can be converted; for CLIP or SigLIP in Hugging Face "
            "format use the warm start (ov2 convert on their folder)."
        )
    width = int(vc.get("width", 768))
    head_width = int(vc.get("head_width", 64))
    if width % head_width:
        raise ValueError(f"vision_cfg width {width} is not divisible by head_width {head_width}.")
    pre = release_preprocess(preprocess_cfg)
    return Ov2VisionConfig(
        hidden_size=width,
        num_hidden_layers=int(vc.get("layers", 12)),
        intermediate_size=int(width * float(vc.get("mlp_ratio", 4.0))),  # as open_clip computes mlp_width
        num_attention_heads=width // head_width,
        patch_size=_square(vc.get("patch_size", 16), "patch_size"),
        image_size=_square(vc.get("image_size", 224), "image_size"),
        hidden_act=_activation_from_open_clip(model_cfg, vc.get("act_kwargs")),
        layer_norm_eps=layer_norm_eps(model_cfg),
        image_mean=tuple(pre["mean"]),
        image_std=tuple(pre["std"]),
    )


def open_clip_config_from_vision(config: Ov2VisionConfig, embed_dim: int) -> dict[str, Any]:
    """The ``open_clip_config.json`` content of the release format for our encoder config."""
    quick_gelu, act_kwargs = _activation_to_open_clip(config.hidden_act)
    vision_cfg: dict[str, Any] = {
        "image_size": config.image_size,
        "layers": config.num_hidden_layers,
        "width": config.hidden_size,
        "head_width": config.hidden_size // config.num_attention_heads,
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "patch_size": config.patch_size,
        "no_ln_pre": True,
        "pool_type": "avg",
        "final_ln_after_pool": True,
        "pos_embed_type": "sin_cos_2d",
        "norm_kwargs": {"eps": config.layer_norm_eps},
    }
    if act_kwargs:
        vision_cfg["act_kwargs"] = act_kwargs
    model_cfg: dict[str, Any] = {"embed_dim": embed_dim, "vision_cfg": vision_cfg}
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    preprocess_cfg = {
        "mean": list(config.image_mean),
        "std": list(config.image_std),
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def decoder_config_from_release(
    cfg: dict[str, Any], vision_width: int, tokenizer_vocab_size: int, file_name: str = "text_decoder_config.json"
) -> tuple[Ov2DecoderConfig, list[str]]:
    """(our decoder config, the unknown fields found) from a release's ``text_decoder_config.json``.

    The decoder runs tanh GELU, pre-LN and eps 1e-6 whatever the file says (the authors' decoder
    hard-codes them); the vocabulary has 32000 rows against the tokenizer's 30522, so generation is
    limited to the ids the tokenizer can decode.
    """
    missing = [k for k in DECODER_CONFIG_FIELDS if k not in cfg]
    if missing:
        raise ValueError(f"{file_name} lacks the field(s) {', '.join(missing)}; a release's decoder config has "
                         f"{', '.join(DECODER_CONFIG_FIELDS)}. The file is damaged or from another model.")
    if int(cfg["vision_width"]) != vision_width:
        raise ValueError(f"{file_name}: vision_width {cfg['vision_width']} does not match the encoder's width {vision_width} "
                         "(open_clip_config.json vision_cfg.width); the two files come from different releases.")
    unknown = sorted(set(cfg) - set(DECODER_CONFIG_FIELDS) - set(DECODER_CONFIG_OPTIONAL))
    vocab = int(cfg["vocab_size"])
    config = Ov2DecoderConfig(
        hidden_size=int(cfg["width"]),
        num_hidden_layers=int(cfg["depth"]),
        intermediate_size=int(cfg["mlp_dim"]),
        num_attention_heads=int(cfg["num_heads"]),
        vocab_size=vocab,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=float(cfg.get("layer_norm_eps", DECODER_CONFIG_OPTIONAL["layer_norm_eps"])),
        tokenizer_vocab_size=tokenizer_vocab_size if vocab > tokenizer_vocab_size else None,
        pad_token_id=int(cfg.get("pad_id", DECODER_CONFIG_OPTIONAL["pad_id"])),
        bos_token_id=int(cfg["bos_id"]),
        eos_token_id=int(cfg["eos_id"]),
    )
    return config, unknown


def release_decoder_config(config: Ov2DecoderConfig, vision_width: int) -> dict[str, Any]:
    """``text_decoder_config.json`` content for our decoder config (inverse of the above)."""
    if config.hidden_act != "gelu_pytorch_tanh":
        raise ValueError(f"The release's decoder runs tanh GELU; this decoder uses {config.hidden_act!r} and cannot be exported.")
    return {
        "width": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_dim": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "vision_width": vision_width,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_id": config.pad_token_id,
        "bos_id": config.bos_token_id,
        "eos_id": config.eos_token_id,
    }


# ---------------------------------------------------------------- position table


def release_position_table(grid: int, width: int) -> torch.Tensor:
    """The table the release stores: big_vision's sin-cos [grid*grid, D] with a zero CLS row first."""
    return torch.cat([torch.zeros(1, width), sincos_2d_table(grid, grid, width)], dim=0)


def _mae_table(grid: int, width: int) -> torch.Tensor:
    """open_clip's own ``sin_cos_2d`` (MAE) table: omega divides by D/4, not D/4 - 1. Used only to
    recognise it in an error message."""
    quarter = width // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    x = x.flatten()[:, None] * omega
    y = y.flatten()[:, None] * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()
    return torch.cat([torch.zeros(1, width), table], dim=0)


def check_position_table(table: torch.Tensor, grid: int, width: int, atol: float = 1e-4) -> None:
    """Raise unless ``table`` is the sin-cos table our encoder computes (CLS row zero).

    Our encoder computes the table instead of storing it, so a release with any other table
    (learned, or open_clip's MAE variant) would silently change the model: refuse it instead.
    """
    expected = release_position_table(grid, width)
    table = table.float().reshape(expected.shape)
    if torch.allclose(table, expected, atol=atol):
        return
    diff = (table - expected).abs().max().item()
    if table[0].abs().max() > atol:
        why = "its CLS row is not zero (a learned position embedding)"
    elif torch.allclose(table, _mae_table(grid, width), atol=atol):
        why = "it is open_clip's own sin_cos_2d (MAE) table, whose frequencies divide by D/4 instead of D/4-1"
    else:
        why = "it is not a fixed sin-cos table (a learned position embedding?)"
    raise ValueError(
        f"positional_embedding is not big_vision's 2-D sin-cos table that OpenVision uses and our encoder computes "
        f"(max abs difference {diff:.3g}): {why}. Converting it would change the model's outputs, so this "
        "checkpoint cannot be converted; it is not an OpenVision (2) release."
    )


# ---------------------------------------------------------------- tensors


def list_keys(keys: list[str], limit: int = 24) -> str:
    """Keys for an error message: all of them up to ``limit``, then a count."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _shape_problems(got: dict[str, torch.Tensor], want: dict[str, torch.Size]) -> list[str]:
    return [f"{k}: checkpoint {tuple(got[k].shape)} vs config {tuple(want[k])}" for k in want if k in got and got[k].shape != want[k]]


def _geometry_hint(state: dict[str, torch.Tensor], config: Ov2VisionConfig) -> str:
    """What the checkpoint itself says about width, patch, depth and image size, for error messages."""
    parts = []
    if "conv1.weight" in state:
        w = state["conv1.weight"]
        parts.append(f"width {w.shape[0]}, patch {w.shape[-1]}")
        if POS_KEY in state:
            grid = math.isqrt(max(state[POS_KEY].shape[0] - 1, 0))
            parts.append(f"a {grid}x{grid} patch grid (image size {grid * w.shape[-1]} to {(grid + 1) * w.shape[-1] - 1})")
    layers = {k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}
    parts.append(f"{len(layers)} layers")
    return (
        f"The checkpoint looks like {', '.join(parts)}; the config says width {config.hidden_size}, patch "
        f"{config.patch_size}, image size {config.image_size}, {config.num_hidden_layers} layers. A wrong preset "
        "or image size in open_clip_config.json is the likely cause."
    )


def expected_vision_shapes(config: Ov2VisionConfig) -> dict[str, torch.Size]:
    """Release key -> shape our encoder needs (computed on the meta device: no memory, no init)."""
    from ..modeling_vision import Ov2VisionModel

    with torch.device("meta"):
        ours = {k: v.shape for k, v in Ov2VisionModel(config).state_dict().items()}
    shapes = {k: ours[v] for k, v in vision_key_map(config.num_hidden_layers).items()}
    grid = config.num_patches_per_side
    shapes[POS_KEY] = torch.Size([grid * grid + 1, config.hidden_size])
    return shapes


def split_open_clip_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(vision tower keys without prefix, other keys). Whole CLIP checkpoints (OpenVision 1) prefix
    the tower with ``visual.`` and add a text tower and ``logit_scale``, which we do not convert."""
    if any(k.startswith("visual.") for k in state):
        vision = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        return vision, sorted(k for k in state if not k.startswith("visual."))
    return dict(state), []


def vision_from_open_clip(
    state: dict[str, torch.Tensor], config: Ov2VisionConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(our encoder state dict, extras kept aside) from the tower's release-layout state dict."""
    key_map = vision_key_map(config.num_hidden_layers)
    expected = set(key_map) | {POS_KEY}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - set(VISION_EXTRA_KEYS))
    if missing or unexpected:
        raise ValueError(
            "The vision weights do not match an OpenVision encoder of this config. "
            + (f"Missing keys: {list_keys(missing)}. " if missing else "")
            + (f"Unexpected keys: {list_keys(unexpected)}. " if unexpected else "")
            + _geometry_hint(state, config)
        )
    bad = _shape_problems(state, expected_vision_shapes(config))
    if bad:
        raise ValueError("Shape mismatch: " + "; ".join(bad) + ". " + _geometry_hint(state, config))
    check_position_table(state[POS_KEY], config.num_patches_per_side, config.hidden_size)
    ours = {ours_key: state[key] for key, ours_key in key_map.items()}
    extras = {k: state[k] for k in (*VISION_EXTRA_KEYS, POS_KEY) if k in state}
    return ours, extras


def vision_to_open_clip(
    ours: dict[str, torch.Tensor], config: Ov2VisionConfig, extras: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Release-layout state dict of our encoder: the inverse of ``vision_from_open_clip``.

    open_clip's ``VisionTransformer`` always has ``proj``; an encoder that never had one (ours,
    pretrained here) gets the identity, so pooled features are unchanged in open_clip. The
    position table kept from a release is written back as stored (bit for bit) while the grid
    is unchanged, and computed otherwise.
    """
    key_map = vision_key_map(config.num_hidden_layers)
    state = {key: ours[ours_key] for key, ours_key in key_map.items()}
    grid = config.num_patches_per_side
    dtype = ours["embeddings.class_embedding"].dtype
    extras = dict(extras or {})
    kept_table = extras.pop(POS_KEY, None)
    computed = release_position_table(grid, config.hidden_size).to(dtype)
    state[POS_KEY] = kept_table if kept_table is not None and kept_table.shape == computed.shape else computed
    extras.setdefault("proj", torch.eye(config.hidden_size, dtype=dtype))
    state.update(extras)
    return state


def decoder_from_release(state: dict[str, torch.Tensor], config: Ov2DecoderConfig, image_width: int) -> dict[str, torch.Tensor]:
    """Our ``decoder.*`` state dict (without the prefix) from ``caption_decoder.safetensors``."""
    key_map = decoder_key_map(config.num_hidden_layers)
    missing = sorted(set(key_map) - set(state))
    unexpected = sorted(set(state) - set(key_map))
    if missing or unexpected:
        raise ValueError(
            "caption_decoder.safetensors does not match the caption decoder of text_decoder_config.json. "
            + (f"Missing keys: {list_keys(missing)}. " if missing else "")
            + (f"Unexpected keys: {list_keys(unexpected)}. " if unexpected else "")
            + "Check that the decoder config (depth) belongs to these weights."
        )
    ours = {key_map[k]: v for k, v in state.items()}
    width, vocab = config.hidden_size, config.vocab_size
    want = {"image_projection.weight": (width, image_width), "embed_tokens.weight": (vocab, width), "lm_head.weight": (vocab, width)}
    for i in range(config.num_hidden_layers):
        want[f"layers.{i}.self_attn.qkv.weight"] = (3 * width, width)
        want[f"layers.{i}.mlp.fc1.weight"] = (config.intermediate_size, width)
    bad = [f"{k}: checkpoint {tuple(ours[k].shape)} vs config {v}" for k, v in want.items() if tuple(ours[k].shape) != v]
    if bad:
        raise ValueError(
            "Caption decoder shape mismatch: " + "; ".join(bad) + ". text_decoder_config.json (width, mlp_dim, "
            f"vocab_size, vision_width {image_width}) does not describe these weights."
        )
    return ours


def decoder_to_release(ours: dict[str, torch.Tensor], config: Ov2DecoderConfig) -> dict[str, torch.Tensor]:
    """The release's naming for our decoder state dict (``decoder.`` prefix removed)."""
    return {k: ours[v].contiguous() for k, v in decoder_key_map(config.num_hidden_layers).items()}
