"""Configurations of the OpenVision 2 encoder, its caption decoder and the captioner.

Field names follow Hugging Face's ``CLIPVisionConfig`` so that code written for CLIP towers
(``config.hidden_size``, ``config.image_size // config.patch_size``) works unchanged.
Variants are data: one table per component, and ``from_preset(name, **overrides)``.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# Encoder variants: width, depth, MLP size, heads (DESIGN.md), plus patch size and the
# default resolution. "tiny" is ours, sized so a full pretraining run fits a 2-core CPU.
# An image size need not be a multiple of the patch: the stride-``patch`` conv keeps a
# floor(size / patch) grid, as open_clip and HF SigLIP do (So400M/14 at 384 px: 27 x 27 = 729
# tokens, the last 6 pixel rows and columns never read).
VISION_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=192, num_hidden_layers=6, intermediate_size=768, num_attention_heads=3, patch_size=8, image_size=64),
    "S/16": dict(hidden_size=384, num_hidden_layers=12, intermediate_size=1536, num_attention_heads=6, patch_size=16, image_size=224),
    "B/16": dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_attention_heads=12, patch_size=16, image_size=224),
    "L/14": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, num_attention_heads=16, patch_size=14, image_size=224),
    "So400M/14": dict(hidden_size=1152, num_hidden_layers=27, intermediate_size=4304, num_attention_heads=16, patch_size=14, image_size=384),
    "H/14": dict(hidden_size=1280, num_hidden_layers=32, intermediate_size=5120, num_attention_heads=16, patch_size=14, image_size=224),
    "g/14": dict(hidden_size=1408, num_hidden_layers=40, intermediate_size=6144, num_attention_heads=16, patch_size=14, image_size=224),
}

# The released geometries (``UCSC-VLAA/openvision2-vit-<name>-vision-only``): a preset at its
# release resolution. ``Ov2VisionConfig.from_preset("So400M/14-384")`` is So400M/14 at 384 px.
RELEASE_RESOLUTIONS: dict[str, tuple[int, ...]] = {
    "L/14": (224, 336), "H/14": (224, 336, 448), "So400M/14": (384,), "g/14": (224,),
}
VISION_PRESETS.update({
    f"{name}-{size}": dict(VISION_PRESETS[name], image_size=size)
    for name, sizes in RELEASE_RESOLUTIONS.items() for size in sizes
})

# Caption-decoder variants (width/depth/MLP/heads), as in the release's decoder table.
DECODER_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=192, num_hidden_layers=2, intermediate_size=768, num_attention_heads=3),
    "Ti": dict(hidden_size=192, num_hidden_layers=12, intermediate_size=768, num_attention_heads=3),
    "S": dict(hidden_size=384, num_hidden_layers=12, intermediate_size=1536, num_attention_heads=6),
    "B": dict(hidden_size=512, num_hidden_layers=12, intermediate_size=2048, num_attention_heads=8),
    "L": dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_attention_heads=12),
    "H": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, num_attention_heads=16),
}

# Which decoder each encoder preset is paired with. As released: L/14 ships the L decoder, H/14
# the H decoder (the authors' decoder defaults: 1024 wide for a 1280-wide ViT); g/14 ships the H
# decoder by third-party notes. Which decoder the So400M/14 release ships is not published, so the
# converter reads every release's from its text_decoder_config.json; for pretraining So400M/14 we
# pair the L decoder, as its width lies between L/14's and H/14's. S/16 and B/16 (not released)
# get the decoder of matching size.
CAPTIONER_PRESETS: dict[str, str] = {
    "tiny": "tiny", "S/16": "S", "B/16": "B", "L/14": "L", "So400M/14": "L", "H/14": "H", "g/14": "H",
}
CAPTIONER_PRESETS.update({name: CAPTIONER_PRESETS[name.split("-")[0]] for name in VISION_PRESETS if "-" in name})


def _unknown_preset(kind: str, name: str, table: dict[str, Any]) -> ValueError:
    return ValueError(f"Unknown {kind} preset {name!r}; choose one of: {', '.join(table)}.")


class Ov2VisionConfig(PretrainedConfig):
    """The OpenVision 2 ViT: CLS token, computed 2-D sin-cos positions, no pre-LN, final LN.

    ``hidden_act`` is a field because the released open_clip configs run the encoder MLP with
    exact GELU while the decoder uses the tanh approximation; converters set it from the release.
    """

    model_type = "openvision2_vision"
    base_config_key = "vision_config"

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        intermediate_size: int = 4096,
        num_attention_heads: int = 16,
        patch_size: int = 14,
        image_size: int = 224,
        num_channels: int = 3,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        image_mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        image_std: tuple[float, ...] = (0.229, 0.224, 0.225),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}.")
        if hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by 4 for the 2-D sin-cos position table.")
        if image_size < patch_size:
            raise ValueError(f"image_size {image_size} is smaller than patch_size {patch_size}; no patch would fit.")
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.patch_size = patch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @property
    def num_patches_per_side(self) -> int:
        """Patches per side: floor(image_size / patch_size), what the stride-``patch`` conv keeps."""
        return self.image_size // self.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Ov2VisionConfig:
        if name not in VISION_PRESETS:
            raise _unknown_preset("vision", name, VISION_PRESETS)
        return cls(**{**VISION_PRESETS[name], **overrides})


class Ov2DecoderConfig(PretrainedConfig):
    """The prefix-LM caption decoder: image tokens first, causal text, no positional embeddings.

    ``tokenizer_vocab_size`` is the number of ids the caption tokenizer can decode when it is
    smaller than ``vocab_size``: the released decoders have 32000 rows for a 30522-entry BERT
    vocabulary, and generation never returns an id at or above it. None: every id decodes.
    """

    model_type = "openvision2_decoder"
    base_config_key = "decoder_config"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        intermediate_size: int = 3072,
        num_attention_heads: int = 12,
        vocab_size: int = 30522,
        hidden_act: str = "gelu_pytorch_tanh",
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        max_length: int = 128,
        tokenizer_vocab_size: int | None = None,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}.")
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.vocab_size = vocab_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.max_length = max_length
        if tokenizer_vocab_size is not None and not 0 < tokenizer_vocab_size <= vocab_size:
            raise ValueError(f"tokenizer_vocab_size {tokenizer_vocab_size} must be in (0, vocab_size={vocab_size}].")
        self.tokenizer_vocab_size = tokenizer_vocab_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Ov2DecoderConfig:
        if name not in DECODER_PRESETS:
            raise _unknown_preset("decoder", name, DECODER_PRESETS)
        return cls(**{**DECODER_PRESETS[name], **overrides})


class Ov2Config(PretrainedConfig):
    """Encoder + visual-token dropping + caption decoder: the whole pretraining model."""

    model_type = "openvision2"
    sub_configs = {"vision_config": Ov2VisionConfig, "decoder_config": Ov2DecoderConfig}

    def __init__(
        self,
        vision_config: Ov2VisionConfig | dict | None = None,
        decoder_config: Ov2DecoderConfig | dict | None = None,
        keep_ratio: float = 0.35,
        **kwargs: Any,
    ) -> None:
        if isinstance(vision_config, dict):
            vision_config = Ov2VisionConfig(**vision_config)
        if isinstance(decoder_config, dict):
            decoder_config = Ov2DecoderConfig(**decoder_config)
        self.vision_config = vision_config if vision_config is not None else Ov2VisionConfig()
        self.decoder_config = decoder_config if decoder_config is not None else Ov2DecoderConfig()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}; the release uses 0.35.")
        self.keep_ratio = keep_ratio
        dec = self.decoder_config
        kwargs.setdefault("pad_token_id", dec.pad_token_id)
        kwargs.setdefault("bos_token_id", dec.bos_token_id)
        kwargs.setdefault("eos_token_id", dec.eos_token_id)
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, keep_ratio: float = 0.35, **overrides: Any) -> Ov2Config:
        """Build a captioner config; overrides go to the encoder, or to the decoder as ``decoder_<field>``."""
        if name not in CAPTIONER_PRESETS:
            raise _unknown_preset("model", name, CAPTIONER_PRESETS)
        dec_overrides = {k.removeprefix("decoder_"): v for k, v in overrides.items() if k.startswith("decoder_")}
        vis_overrides = {k: v for k, v in overrides.items() if not k.startswith("decoder_")}
        return cls(
            vision_config=Ov2VisionConfig.from_preset(name, **vis_overrides),
            decoder_config=Ov2DecoderConfig.from_preset(CAPTIONER_PRESETS[name], **dec_overrides),
            keep_ratio=keep_ratio,
        )
