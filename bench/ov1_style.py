"""The OpenVision-1-style baseline: OpenVision 2's captioner plus a CLIP text encoder and a contrastive loss.

Written here, from our own modules, so that it runs on exactly the same kernels and takes the
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
from torch.nn import functional as F

from ov2_plugin import Ov2Config, Ov2ForCaptioning
from ov2_plugin.modeling_vision import Ov2Block


class TextEncoder(nn.Module):
    """Causal text transformer pooled at the last non-pad token, as CLIP's text tower."""

    def __init__(self, config: Ov2Config, text_length: int, embed_dim: int) -> None:
        super().__init__()
        dec = config.decoder_config
        self.embed_tokens = nn.Embedding(dec.vocab_size, dec.hidden_size)
        self.position = nn.Parameter(torch.randn(text_length, dec.hidden_size) * 0.01)
        self.layers = nn.ModuleList([Ov2Block(dec) for _ in range(dec.num_hidden_layers)])
        self.norm = nn.LayerNorm(dec.hidden_size, eps=dec.layer_norm_eps)
        self.projection = nn.Linear(dec.hidden_size, embed_dim, bias=False)
        self.pad_token_id = dec.pad_token_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] -> text embeddings [B, P]."""
        t = ids.shape[1]
        x = self.embed_tokens(ids) + self.position[:t]  # [B, L, E]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        for layer in self.layers:
            x = layer(x, causal)
        last = (ids != self.pad_token_id).sum(1).clamp(min=1) - 1  # [B] end-of-text position
        pooled = self.norm(x[torch.arange(ids.shape[0], device=ids.device), last])  # [B, E]
        return self.projection(pooled)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (CLIP's loss) on L2-normalised embeddings."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.exp() * image @ text.t()  # [B, B]
    target = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def caption_loss(captioner: Ov2ForCaptioning, tokens: torch.Tensor, input_ids: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """The caption loss exactly as ``Ov2ForCaptioning`` computes it (chunked head or plain, per its switch)."""
    if captioner.fused_head_loss:
        return captioner.decoder.loss(tokens, input_ids, labels)
    logits = captioner.decoder(tokens, input_ids)  # [B, T, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


class Ov1StyleModel(nn.Module):
    """ViT + text encoder + contrastive loss + caption decoder on all visual tokens."""

    def __init__(self, config: Ov2Config, text_length: int = 77, num_captions: int = 1) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        config.keep_ratio = 1.0  # OpenVision (1) decodes from every visual token
        self.captioner = Ov2ForCaptioning(config)
        embed_dim = config.vision_config.hidden_size
        self.image_projection = nn.Linear(config.vision_config.hidden_size, embed_dim, bias=False)
        self.text_encoder = TextEncoder(config, text_length, embed_dim)
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
