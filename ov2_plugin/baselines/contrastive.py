"""The contrastive baselines, built from OpenVision 2's own modules (same ViT, kernels, init).

- ``OpenVisionModel`` (objective ``openvision``, OpenVision 1): the captioner decoding from ALL
  patch tokens (keep_ratio 1.0) + a text encoder + CLIP's softmax contrastive loss on the pooled
  image embedding; loss = caption + contrastive.
- ``ClipStyleModel`` (objective ``clip``): ViT + text encoder + contrastive loss only. The loss is
  SigLIP's sigmoid by default. Why sigmoid: it scores each pair on its own, so it does not depend
  on a batch-wide softmax and stays well-behaved at the small batches of the CPU recipe (32), where
  Zhai et al. (2023) find it ahead of the softmax loss; and with ``openvision`` on CLIP's softmax
  the comparison covers both contrastive families. ``contrastive_loss='softmax'`` switches it.

Shapes: B batch, N patches, D ViT width, T caption tokens, L text-encoder tokens, P embedding.
Both take the batch ``CaptionCollator`` makes (the caption is also the contrastive text);
``text_ids`` passes one or more separate captions instead (bench: one 77-token or two captions).
Both losses are over the global batch (``losses.py``): the caption part is divided by the
step's token count (``num_items_in_batch``), the contrastive part sees every rank's and every
accumulated micro-batch's features (``step_features``, which ``Ov2Trainer`` passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from ..modeling_captioner import Ov2ForCaptioning
from ..modeling_vision import Ov2PreTrainedModel, Ov2VisionModel
from .configuration import Ov2ObjectiveConfig
from .losses import StepFeatures, contrastive_loss, gradient_share, scored_features, share_of_step
from .text_encoder import TextEncoder


@dataclass
class ObjectiveOutput(ModelOutput):
    loss: torch.Tensor | None = None
    caption_loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None


class _ContrastiveBase(Ov2PreTrainedModel):
    """Text tower, image projection, temperature (and SigLIP bias) and the contrastive term."""

    config_class = Ov2ObjectiveConfig
    accepts_loss_kwargs = True  # num_items_in_batch, as Ov2ForCaptioning's

    def _build_contrastive(self, config: Ov2ObjectiveConfig) -> None:
        embed_dim = config.vision_config.hidden_size
        self.image_projection = nn.Linear(config.vision_config.hidden_size, embed_dim, bias=False)
        self.text_encoder = TextEncoder(config.decoder_config, config.text_length, embed_dim)
        sigmoid = config.contrastive_loss == "sigmoid"  # SigLIP's init: t = 10, b = -10; CLIP's: 1 / 0.07
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0) if sigmoid else math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if sigmoid else None

    @property
    def encoder(self) -> Ov2VisionModel:
        raise NotImplementedError

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> normalised image embeddings [B, P]."""
        return F.normalize(self.image_projection(self.encoder(pixel_values).pooler_output).float(), dim=-1)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> normalised text embeddings [B, P]."""
        return F.normalize(self.text_encoder(input_ids).float(), dim=-1)

    def features(self, pooled: torch.Tensor, input_ids: torch.Tensor,
                 text_ids: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised image embedding [B, P] and one text embedding [B, P] per caption (one text-encoder pass)."""
        texts = [input_ids] if text_ids is None else list(text_ids)
        if text_ids is not None and len(texts) != self.config.num_captions:
            raise ValueError(f"this model reads {self.config.num_captions} caption(s) per image, got {len(texts)}")
        image = F.normalize(self.image_projection(pooled).float(), dim=-1)
        width = max(t.shape[1] for t in texts)
        padded = [F.pad(t, (0, width - t.shape[1]), value=self.config.decoder_config.pad_token_id) for t in texts]
        embeds = self.text_encoder(torch.cat(padded, dim=0)).chunk(len(texts), dim=0)
        return image, [F.normalize(t.float(), dim=-1) for t in embeds]

    @torch.no_grad()
    def contrastive_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                             text_ids: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``features`` of a batch without gradient: the other micro-batches' part of ``StepFeatures``."""
        return self.features(self.encoder(pixel_values).pooler_output, input_ids, text_ids)

    def contrastive(self, pooled: torch.Tensor, input_ids: torch.Tensor, text_ids: list[torch.Tensor] | None,
                    num_items_in_batch=None, step_features: StepFeatures | None = None) -> torch.Tensor:
        """Mean contrastive loss of the image embedding against each caption, over the global batch."""
        image, texts, share = scored_features(step_features, *self.features(pooled, input_ids, text_ids))
        scale = gradient_share(self.logit_scale, share)
        bias = gradient_share(self.logit_bias, share) if self.logit_bias is not None else None
        losses = [contrastive_loss(self.config.contrastive_loss, image, t, scale, bias) for t in texts]
        return share_of_step(sum(losses) / len(losses), num_items_in_batch, step_features)


class OpenVisionModel(_ContrastiveBase):
    """OpenVision 1 style: caption loss on all visual tokens + contrastive loss."""

    def __init__(self, config: Ov2ObjectiveConfig) -> None:
        super().__init__(config)
        config.keep_ratio = 1.0
        self.captioner = Ov2ForCaptioning(config)
        self.loss_type = self.captioner.loss_type  # shifted caption labels: the Trainer counts labels[:, 1:]
        self._build_contrastive(config)
        self.post_init()

    @property
    def encoder(self) -> Ov2VisionModel:
        return self.captioner.vision_model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, text_ids: list[torch.Tensor] | None = None,
                num_items_in_batch=None, step_features: StepFeatures | None = None, **kwargs) -> ObjectiveOutput:
        """Caption loss on ``input_ids`` [B, T] (``labels`` [B, T], -100 ignored) + contrastive loss."""
        if labels is None:
            labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
        elif attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        vision = self.encoder(pixel_values)
        caption = self.captioner.decoder.loss(vision.last_hidden_state[:, 1:], input_ids, labels,  # all N tokens
                                              fused=self.captioner.fused_head_loss, num_items_in_batch=num_items_in_batch)
        contrastive = self.contrastive(vision.pooler_output, input_ids, text_ids, num_items_in_batch, step_features)
        return ObjectiveOutput(loss=caption + contrastive, caption_loss=caption, contrastive_loss=contrastive)


class ClipStyleModel(_ContrastiveBase):
    """CLIP / SigLIP style: the ViT and a text encoder, contrastive loss only (no decoder)."""

    def __init__(self, config: Ov2ObjectiveConfig) -> None:
        super().__init__(config)
        self.vision_model = Ov2VisionModel(config.vision_config)
        self._build_contrastive(config)
        self.post_init()

    @property
    def encoder(self) -> Ov2VisionModel:
        return self.vision_model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, text_ids: list[torch.Tensor] | None = None,
                num_items_in_batch=None, step_features: StepFeatures | None = None, **kwargs) -> ObjectiveOutput:
        """Contrastive loss of the images [B, 3, H, W] against their captions [B, T]."""
        contrastive = self.contrastive(self.encoder(pixel_values).pooler_output, input_ids, text_ids,
                                       num_items_in_batch, step_features)
        return ObjectiveOutput(loss=contrastive, contrastive_loss=contrastive)
