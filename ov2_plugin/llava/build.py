"""Assemble a Hugging Face LLaVA (``LlavaForConditionalGeneration``, LLaVA-NeXT's or LLaVA-OneVision's class)
whose vision tower is OpenVision 2.

The result is a plain HF folder of that family: ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` load it in any process that has run ``import ov2_plugin``
(which registers the ``openvision2_vision`` config with transformers' Auto classes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from ..image_processing import make_image_processor, saved_image_processor
from ..loading import load_vision_model
from ..modeling_vision import Ov2VisionModel
from .archs import (
    ANYRES_MAX,
    ARCHS,
    Arch,
    check_arch,
    check_strategy,
    check_video_grid,
    make_image_processor_for,
    parse_pinpoints,
    pinpoints_for,
)
from .chat import VICUNA

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"  # the video families' processors and configs name one; only images are trained here
PROJECTORS = {"mlp2x_gelu": "gelu"}  # LLaVA-1.5's projector: Linear -> GELU -> Linear (HF's LlavaMultiModalProjector)
SELECT_STRATEGIES = ("default", "full")  # default drops CLS, as LLaVA's "patch"; full keeps it ("cls_patch")
CHAT_TEMPLATE = VICUNA.jinja()  # LLaVA-1.5's turns; each arch's format is in ARCHS


def num_image_tokens(vision_config, strategy: str = "default") -> int:
    """How many ``<image>`` placeholders one image becomes: patches (+ CLS with the 'full' strategy)."""
    n = (vision_config.image_size // vision_config.patch_size) ** 2
    return n + (1 if strategy == "full" else 0)


def _check_options(projector: str, strategy: str, vision_feature_layer, num_layers: int) -> None:
    if projector not in PROJECTORS:
        raise ValueError(
            f"Unknown projector {projector!r}; HF LLaVA supports {sorted(PROJECTORS)} (LLaVA-1.5 uses mlp2x_gelu)."
        )
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(
            f"Unknown vision_feature_select_strategy {strategy!r}; use 'default' (patch tokens) or 'full' (CLS + patches)."
        )
    layers = vision_feature_layer if isinstance(vision_feature_layer, list) else [vision_feature_layer]
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"vision_feature_layer {layer} is outside the tower's hidden states (embeddings + {num_layers} layers); "
                f"use -1 (last) or -2 (second to last, as LLaVA-1.5)."
            )


def _load_language_model(language_model, tokenizer, dtype):
    """A causal LM (weights from a folder, or random from a config) and its tokenizer."""
    if isinstance(language_model, (PretrainedConfig, dict)):
        config = (
            language_model if isinstance(language_model, PretrainedConfig) else AutoConfig.for_model(**language_model)
        )
        if tokenizer is None:
            raise ValueError(
                "A language model given as a config has no tokenizer; pass tokenizer= (a folder or a tokenizer object)."
            )
        return AutoModelForCausalLM.from_config(config, dtype=dtype), tokenizer
    path = Path(language_model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"Language model folder {str(path)!r} has no config.json; pass a Hugging Face causal LM folder (Llama, Qwen2, ...)."
        )
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return lm, tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)


def _prepare_tokenizer(tokenizer, arch: Arch) -> PreTrainedTokenizerBase:
    """The tokenizer with ``<image>`` (and ``<video>`` for the video families), the chat format's special tokens
    (special: decoding skips them) and a pad token."""
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    needed = [IMAGE_TOKEN, *([VIDEO_TOKEN] if arch.video_processor_class else []), *arch.chat.special_tokens]
    missing = [t for t in needed if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)  # appended; the existing special tokens stay
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def build_llava(
    vision: str | Path | Ov2VisionModel,
    language_model: str | Path | PretrainedConfig | dict,
    tokenizer=None,
    projector: str = "mlp2x_gelu",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    image_processor=None,
    dtype: torch.dtype | None = None,
    arch: str = "llava",
    image_grid_pinpoints: list[list[int]] | None = None,
):
    """A LLaVA of family ``arch`` (``llava``, ``llava_next``, ``llava_onevision``; see ``archs.ARCHS``) with an
    OpenVision 2 tower, a fresh projector and the given language model; returns (model, processor).

    ``vision``: an Ov2 folder (vision-only or the captioner written by ``ov2 pretrain``) or a
    loaded ``Ov2VisionModel``. ``language_model``: a causal LM folder (weights + tokenizer) or
    a config (random weights; then pass ``tokenizer``). The tokenizer gains ``<image>`` (and a
    pad token if it has none); the processor expands ``<image>`` to exactly the number of
    features the chosen layer/strategy yields, tiles included. ``image_grid_pinpoints`` (pixels, multiples
    of the tower's ``image_size``) default to the family's set scaled to the tower.
    """
    family = check_arch(arch)
    tower = vision if isinstance(vision, Ov2VisionModel) else load_vision_model(vision)
    vcfg = tower.config
    _check_options(projector, vision_feature_select_strategy, vision_feature_layer, vcfg.num_hidden_layers)
    check_strategy(family, vision_feature_select_strategy)
    check_video_grid(family, vcfg)
    pinpoints = pinpoints_for(family, vcfg.image_size, image_grid_pinpoints) if family.tiles else None
    if image_processor is None:
        image_processor = (
            make_image_processor(vcfg) if isinstance(vision, Ov2VisionModel) else saved_image_processor(vision, vcfg)
        )
    image_processor = make_image_processor_for(family, image_processor, vcfg.image_size, pinpoints)
    lm, tokenizer = _load_language_model(language_model, tokenizer, dtype)
    tokenizer = _prepare_tokenizer(tokenizer, family)

    fields = dict(
        vision_config=vcfg.to_dict(),
        text_config=lm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act=PROJECTORS[projector],
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        multimodal_projector_bias=True,
    )
    if family.name != "llava_onevision":
        fields["image_seq_length"] = num_image_tokens(vcfg, vision_feature_select_strategy)  # one square tile
    if pinpoints:
        fields["image_grid_pinpoints"] = pinpoints
    if family.video_processor_class:
        fields["video_token_index"] = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if family.name == "llava_onevision":
        fields["vision_aspect_ratio"] = ANYRES_MAX
    config = family.config_class(**fields)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = family.model_class(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(lm.base_model.state_dict())
    model.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    if len(tokenizer) > model.config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    stops = [tokenizer.convert_tokens_to_ids(t) for t in family.chat.special_tokens[1:]]  # ChatML answers end at <|im_end|>
    if stops:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
    if dtype is not None:
        model.to(dtype)
    processor = make_processor(image_processor, tokenizer, vcfg, vision_feature_select_strategy, family.name)
    return model, processor


def make_processor(image_processor, tokenizer, vision_config, strategy: str = "default", arch: str = "llava"):
    """The arch's processor, counting CLS as the one extra token, so 'default' yields one placeholder per patch."""
    family = check_arch(arch)
    kwargs = dict(image_processor=image_processor, tokenizer=tokenizer, vision_feature_select_strategy=strategy,
                  chat_template=family.chat.jinja(), image_token=IMAGE_TOKEN)
    if family.video_processor_class:  # the processor requires one; frames get the tower's preprocessing
        side = dict(image_processor.size)
        kwargs["video_processor"] = family.video_processor_class(
            size=side, crop_size=side, do_center_crop=False, resample=image_processor.resample,
            image_mean=list(image_processor.image_mean), image_std=list(image_processor.image_std))
        kwargs["video_token"] = VIDEO_TOKEN
    if family.name == "llava_onevision":  # counts from the tokens of one square tile, CLS included (n = grid^2 + 1)
        kwargs.update(num_image_tokens=vision_config.num_patches_per_side**2 + 1, vision_aspect_ratio=ANYRES_MAX)
    else:
        kwargs.update(patch_size=vision_config.patch_size, num_additional_image_tokens=1)
    return family.processor_class(**kwargs)


LOAD_HINT = (
    "This folder is a LLaVA model with an OpenVision 2 vision tower: run `import ov2_plugin` before "
    "`from_pretrained` (it registers the 'openvision2_vision' model type)."
)


def save_llava(model, processor, output_dir: str | Path) -> Path:
    """Save model + processor, and a README that says which import the folder needs."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "README.md").write_text(
        f"# {type(model).__name__} + OpenVision 2\n\n{LOAD_HINT}\n\n```python\nimport ov2_plugin\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "model = AutoModelForImageTextToText.from_pretrained(path)\n"
        "processor = AutoProcessor.from_pretrained(path)\n```\n"
    )
    return out


def llava_arch(path: str | Path) -> Arch:
    """The family of the LLaVA folder at ``path`` (its config's ``model_type``), with a clear error otherwise."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no config.json; pass a folder written by 'ov2 llava-build' or 'ov2 llava-train'."
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in ARCHS:
        raise ValueError(
            f"{str(path)!r} holds a {model_type!r} model, not a LLaVA ({', '.join(ARCHS)}); build one with "
            "'ov2 llava-build'."
        )
    return ARCHS[model_type]


ADAPTER_CONFIG = "adapter_config.json"  # peft's file: a LoRA adapter folder (``ov2 llava-train --lora_enable``)


def lora_base(path: str | Path) -> Path:
    """The base LLaVA folder a LoRA adapter folder names (``base_model_name_or_path``), checked."""
    path = Path(path)
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    fix = (f"pass {str(path / 'merged')!r} instead" if (path / "merged" / "config.json").is_file()
           else "train with --merge_lora true and pass OUTPUT_DIR/merged")
    if not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is a LoRA adapter whose base model {base!r} is not a folder here; put the base at that "
            f"path (adapter_config.json's base_model_name_or_path), or {fix}."
        )
    model_type = json.loads((Path(base) / "config.json").read_text()).get("model_type")
    if model_type not in ARCHS:
        raise ValueError(
            f"{str(path)!r} is a LoRA adapter over a {model_type!r} model; adapters load over HF LLaVA folders only "
            f"({', '.join(ARCHS)}), so {fix}."
        )
    return Path(base)


def load_llava(path: str | Path, **kwargs):
    """(model, processor) of a LLaVA folder written by ``save_llava`` / ``ov2 llava-train``, any arch in ``ARCHS``,
    or of a LoRA adapter folder (``ov2 llava-train --lora_enable``): loaded over its base with peft and merged once
    here, so it generates at the speed of a plain model. ``kwargs`` go to ``from_pretrained`` (``dtype=`` ...)."""
    from transformers import AutoProcessor

    path = Path(path)
    if (path / "config.json").is_file() or not (path / ADAPTER_CONFIG).is_file():
        return llava_arch(path).model_class.from_pretrained(path, **kwargs), AutoProcessor.from_pretrained(path)
    from peft import PeftModel

    base = lora_base(path)
    model = llava_arch(base).model_class.from_pretrained(base, **kwargs)
    model = PeftModel.from_pretrained(model, path).merge_and_unload()
    # ov2 llava-train saves the processor beside the adapter; an adapter saved alone uses the base's
    processor_dir = path if (path / "processor_config.json").is_file() or (path / "tokenizer_config.json").is_file() else base
    return model, AutoProcessor.from_pretrained(processor_dir)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ov2 llava-build", description="Assemble an HF LLaVA with an OpenVision 2 vision tower."
    )
    p.add_argument("--vision_tower", required=True, help="OpenVision 2 folder (ov2 pretrain / ov2 convert output).")
    p.add_argument("--language_model", required=True, help="HF causal LM folder (config, weights, tokenizer).")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--arch", default="llava", help=f"LLaVA family: {', '.join(ARCHS)} (default llava, LLaVA-1.5).")
    p.add_argument("--image_grid_pinpoints", default=None,
                   help="Anyres tile layouts, HEIGHTxWIDTH in pixels, multiples of the tower's size "
                        "(default: LLaVA-NeXT's 1x2,2x1,2x2,3x1,1x3 tiles; OneVision's grid up to 6x6).")
    p.add_argument("--projector", default="mlp2x_gelu", choices=sorted(PROJECTORS))
    p.add_argument(
        "--vision_feature_layer",
        type=int,
        nargs="+",
        default=[-2],
        help="-2 as LLaVA-1.5; several for a concatenation.",
    )
    p.add_argument("--vision_feature_select_strategy", default="default", choices=SELECT_STRATEGIES)
    p.add_argument(
        "--image_size", type=int, default=None, help="Preprocessing resolution (the checkpoint's by default)."
    )
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layer = args.vision_feature_layer[0] if len(args.vision_feature_layer) == 1 else args.vision_feature_layer
    tower = load_vision_model(args.vision_tower)
    if args.image_size:
        tower.config.image_size = args.image_size
        image_processor = make_image_processor(tower.config, args.image_size)
    else:
        image_processor = saved_image_processor(args.vision_tower, tower.config)
    model, processor = build_llava(
        tower,
        args.language_model,
        projector=args.projector,
        vision_feature_layer=layer,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
        image_processor=image_processor,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        arch=args.arch,
        image_grid_pinpoints=parse_pinpoints(args.image_grid_pinpoints),
    )
    out = save_llava(model, processor, args.output_dir)
    square = num_image_tokens(tower.config, args.vision_feature_select_strategy)
    tiles = f", anyres over {len(model.config.image_grid_pinpoints)} pinpoints" if args.arch != "llava" else ""
    print(f"saved {type(model).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{square} image tokens a tile{tiles}) to {out}")
