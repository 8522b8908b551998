"""The models compared, their shapes, and the synthetic batch they all train on.

Variants (same ViT and decoder dimensions, same batch, same precision):
- ``ov2-k0.35`` / ``ov2-k0.25`` / ``ov2-k1.0``: our ``Ov2ForCaptioning``, caption loss only;
  keep 0.35 is the release recipe, 1.0 shows where the saving comes from.
- ``ov1-1cap`` / ``ov1-2cap``: OpenVision 1 as ``ov2 pretrain --objective openvision`` trains it
  (``ov2_plugin.baselines.OpenVisionModel``): text encoder on one or two ``text_length``-token
  captions (``text_ids``) + contrastive loss + decoder on all tokens.
- ``coca``: open_clip's CoCa as ``ov2 compare`` trains it (``ov2_plugin.baselines.CocaModel``,
  ``ov2 pretrain --objective coca``): open_clip's ``CoCa`` and ``CoCaLoss`` (caption weight 2,
  contrastive 1), no attentional pooler (the decoder cross-attends to the patch tokens), text
  tower and multimodal decoder at the ViT's width, random init (nothing downloaded).

The baselines are built by ``ov2_plugin.baselines.build_objective_model`` from the same captioner
config (keep 0.35, as ``ov2 compare``'s recipes); the bench sets only how many captions the text
encoder reads and its context (``BASELINES``).

Shapes: ``tiny`` is a smoke test; ``cpu`` keeps the paper's proportions at a size a 2-core CPU runs in minutes (256 patch
tokens as L/14 at 224 px, 128-token captions, decoder/encoder width 0.75 as 768/1024, decoder
half as deep as the encoder as 12/24, the 30522-token vocabulary); ``L/14`` and ``So400M/14``
are the true sizes of the paper's cost table, for a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ov2_plugin import Ov2Config, Ov2ForCaptioning
from ov2_plugin.activation_checkpointing import MODES, set_checkpointing
from ov2_plugin.configuration import DECODER_PRESETS, VISION_PRESETS


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration: model dimensions, sequence lengths, batch and memory budget."""

    name: str
    vision: dict[str, int]  # Ov2VisionConfig fields
    decoder: dict[str, int]  # Ov2DecoderConfig fields
    batch_size: int  # the batch every variant is timed at
    budget_gib: float  # memory budget (model state + activations) for the largest-batch search
    caption_length: int = 128  # decoder captions, as the release
    text_length: int = 77  # the contrastive text encoder's context, as CLIP/OpenVision
    vocab_size: int = 30522
    keep_ratios: tuple[float, ...] = (0.35, 0.25, 1.0)
    extra: dict = field(default_factory=dict)

    def ov2_config(self, keep_ratio: float) -> Ov2Config:
        dec = {f"decoder_{k}": v for k, v in {**self.decoder, "vocab_size": self.vocab_size}.items()}
        return Ov2Config.from_preset("tiny", keep_ratio=keep_ratio, **self.vision, **dec)

    @property
    def num_patches(self) -> int:
        return (self.vision["image_size"] // self.vision["patch_size"]) ** 2


SHAPES: dict[str, Shape] = {
    # A smoke-test size for the tests and a first try of the command (seconds, not minutes).
    "tiny": Shape(
        "tiny",
        vision=dict(hidden_size=64, num_hidden_layers=2, intermediate_size=256, num_attention_heads=2,
                    patch_size=8, image_size=32),
        decoder=dict(hidden_size=48, num_hidden_layers=1, intermediate_size=192, num_attention_heads=2),
        batch_size=4, budget_gib=0.05, caption_length=16, text_length=8, vocab_size=500,
    ),
    # 128 px / patch 8 = 16x16 = 256 patch tokens; widths 256 -> 192 (x0.75); depth 6 -> 3 (x0.5).
    "cpu": Shape(
        "cpu",
        vision=dict(hidden_size=256, num_hidden_layers=6, intermediate_size=1024, num_attention_heads=4,
                    patch_size=8, image_size=128),
        decoder=dict(hidden_size=192, num_hidden_layers=3, intermediate_size=768, num_attention_heads=3),
        batch_size=8,
        budget_gib=1.25,
    ),
    "L/14": Shape("L/14", vision=VISION_PRESETS["L/14"], decoder=DECODER_PRESETS["L"], batch_size=128, budget_gib=40.0),
    # 384 px, as released: the stride-14 conv floors it to 27x27 = 729 patches (tables measured
    # before the floor grid was allowed ran 378 px, the same 729 tokens).
    "So400M/14": Shape("So400M/14", vision=VISION_PRESETS["So400M/14"],
                       decoder=DECODER_PRESETS["L"], batch_size=64, budget_gib=40.0),
}

VARIANTS = ("ov2-k0.35", "ov2-k0.25", "ov2-k1.0", "ov1-1cap", "ov1-2cap", "coca")


def make_batch(shape: Shape, batch_size: int, seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Random images and captions shared by every variant.

    Caption lengths are drawn between half and all of ``caption_length`` (long synthetic captions,
    padded to the fixed length as in training); web captions for the second contrastive caption are
    shorter. Pads are 0, BOS 1, EOS 2, as our tokenizer.
    """
    g = torch.Generator().manual_seed(seed)
    size = shape.vision["image_size"]

    def captions(length: int, low: int) -> torch.Tensor:
        ids = torch.randint(3, shape.vocab_size, (batch_size, length), generator=g)
        lengths = torch.randint(low, length + 1, (batch_size,), generator=g)
        pos = torch.arange(length)[None]
        ids[:, 0] = 1
        ids = ids.masked_fill(pos == (lengths - 1)[:, None], 2).masked_fill(pos >= lengths[:, None], 0)
        return ids

    ids = captions(shape.caption_length, shape.caption_length // 2)  # [B, T]
    mask = (ids != 0).long()
    synthetic_short = ids[:, : shape.text_length].clone()
    web = captions(shape.text_length, 8)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": ids.masked_fill(mask == 0, -100),
        "text_ids": [synthetic_short, web],
    }
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}


@dataclass
class Variant:
    """A model and the training loss it claims, as one callable on a ``make_batch`` batch."""

    name: str
    model: nn.Module
    loss: Callable[[dict], torch.Tensor]


def build_ov2(shape: Shape, keep_ratio: float) -> Variant:
    model = Ov2ForCaptioning(shape.ov2_config(keep_ratio)).train()

    def loss(batch: dict) -> torch.Tensor:
        return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss

    return Variant(f"ov2-k{keep_ratio}", model, loss)


# bench name -> (``ov2 pretrain --objective``, captions through its text encoder as ``text_ids``)
BASELINES = {"ov1-1cap": ("openvision", 1), "ov1-2cap": ("openvision", 2), "coca": ("coca", 0)}
COMPARE_KEEP_RATIO = 0.35  # the captioner config ``ov2 compare``'s recipes build every objective from


def baseline_config_kwargs(shape: Shape, name: str) -> dict:
    """The ``Ov2ObjectiveConfig`` fields the bench sets for a baseline; everything else is ``ov2 compare``'s.

    OpenVision's text encoder reads ``num_captions`` separate captions of ``text_length`` (77) tokens;
    CoCa's text tower reads the caption itself, so its context is the caption length.
    """
    objective, captions = BASELINES[name]
    if objective == "coca":
        return {"text_length": shape.caption_length}
    return {"num_captions": captions, "text_length": shape.text_length}


def build_baseline(shape: Shape, name: str) -> Variant:
    """An ``ov2_plugin.baselines`` model as ``ov2 pretrain --objective`` builds it, at the shape's sizes."""
    from ov2_plugin.baselines import build_objective_model  # imports open_clip: only the baselines need it

    objective, captions = BASELINES[name]
    model = build_objective_model(objective, shape.ov2_config(COMPARE_KEEP_RATIO), **baseline_config_kwargs(shape, name))
    model.train()

    def loss(batch: dict) -> torch.Tensor:
        text_ids = batch["text_ids"][:captions] if captions else None
        return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                     text_ids=text_ids).loss

    return Variant(name, model, loss)


def checkpoint_coca(model: nn.Module, mode: str, every: int = 1) -> None:
    """open_clip's own ``set_grad_checkpointing`` on a ``CocaModel``'s towers: the image tower for
    ``encoder``, its text tower and multimodal decoder for ``decoder``, all three for ``all``. open_clip
    recomputes every block of a tower it checkpoints (no every-k-th choice)."""
    if every != 1:
        raise ValueError("open_clip's CoCa checkpoints every block of a tower; use checkpoint_every 1 for coca.")
    coca = model.coca
    coca.visual.set_grad_checkpointing(mode in ("encoder", "all"))
    coca.text.set_grad_checkpointing(mode in ("decoder", "all"))
    coca.text_decoder.set_grad_checkpointing(mode in ("decoder", "all"))


def build_variant(name: str, shape: Shape, checkpointing: str = "none", every: int = 1) -> Variant:
    """Build one variant by name (see ``VARIANTS``) with activation checkpointing ``checkpointing``.

    ``checkpointing`` is one of ``ov2_plugin.activation_checkpointing.MODES`` (``none``, ``encoder``:
    the ViT's blocks, ``decoder``: the caption decoder's and text tower's, ``all``), every ``every``-th
    block of each stack; the OV1-style baseline's text tower counts as decoder side.
    """
    if checkpointing not in MODES:
        raise ValueError(f"unknown checkpointing {checkpointing!r}; choose one of {', '.join(MODES)}")
    if name.startswith("ov2-k"):
        variant = build_ov2(shape, float(name.removeprefix("ov2-k")))
    elif name == "coca":
        variant = build_baseline(shape, name)
        checkpoint_coca(variant.model, checkpointing, every)
        return variant
    elif name in BASELINES:
        variant = build_baseline(shape, name)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)} (or ov2-k<keep ratio>)")
    set_checkpointing(variant.model, checkpointing, every)
    return variant
