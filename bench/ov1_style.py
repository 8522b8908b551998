"""The OpenVision-1-style baseline: OpenVision 2's captioner plus a CLIP text encoder and a contrastive loss.

Built from our own modules (the text tower and the losses are the ``openvision`` pretraining
objective's, ``ov2_plugin.baselines``), so that it runs on exactly the same kernels and takes the
same optimisations (chunked head + loss, SDPA, autocast) as OpenVision 2: the comparison then
measures the architecture, not two code bases. What it adds to OpenVision 2:
- the caption decoder reads ALL patch tokens (keep_ratio 1.0, no token dropping);
- a causal text encoder (CLIP style: token + learned position embeddings, pre-LN blocks,
  final norm, the end-of-text token pooled) reads one or two captions of ``text_length`` tokens;
- image embedding = projection of the encoder's pooled output; symmetric InfoNCE with a learned
  temperature on each caption, averaged, added to the caption loss.

Shapes: B batch, N patches, T caption tokens, L text-encoder tokens, E text width, P embed dim.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ov2_plugin import Ov2Config, Ov2ForCaptioning
from ov2_plugin.baselines.losses import caption_loss
from ov2_plugin.baselines.losses import softmax_contrastive_loss as contrastive_loss
from ov2_plugin.baselines.text_encoder import TextEncoder


class Ov1StyleModel(nn.Module):
    """ViT + text encoder + contrastive loss + caption decoder on all visual tokens."""

    def __init__(self, config: Ov2Config, text_length: int = 77, num_captions: int = 1) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        config.keep_ratio = 1.0  # OpenVision (1) decodes from every visual token
        self.captioner = Ov2ForCaptioning(config)
        embed_dim = config.vision_config.hidden_size
        self.image_projection = nn.Linear(config.vision_config.hidden_size, embed_dim, bias=False)
        self.text_encoder = TextEncoder(config.decoder_config, text_length, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.text_length = text_length
        self.num_captions = num_captions

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor,
                text_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Caption loss on ``input_ids`` [B, T] + contrastive loss on each of ``text_ids`` ([B, L] each)."""
        if len(text_ids) != self.num_captions:
            raise ValueError(f"this baseline reads {self.num_captions} caption(s), got {len(text_ids)}")
        vision = self.captioner.vision_model(pixel_values)
        tokens = vision.last_hidden_state[:, 1:]  # [B, N, D], all of them
        caption = caption_loss(self.captioner, tokens, input_ids, labels)
        image = self.image_projection(vision.pooler_output)  # [B, P]
        texts = self.text_encoder(torch.cat(text_ids, dim=0)).chunk(len(text_ids), dim=0)  # one pass for all captions
        contrastive = sum(contrastive_loss(image, t, self.logit_scale) for t in texts) / len(texts)
        return {"loss": caption + contrastive, "caption_loss": caption, "contrastive_loss": contrastive}
