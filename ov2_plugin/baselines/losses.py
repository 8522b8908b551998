"""Contrastive losses and the caption loss shared by the baselines.

Shapes: B batch, P embedding width, T caption tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..modeling_captioner import Ov2ForCaptioning


def softmax_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: image [B, P] and text [B, P] (normalised here), scalar log-temperature."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.float().exp() * image @ text.t()  # [B, B]
    target = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def sigmoid_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                             logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise loss: every (image, text) pair is a binary match / no-match, summed over
    the B texts and averaged over the B images (Zhai et al., 2023)."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.float().exp() * image @ text.t() + logit_bias.float()  # [B, B]
    sign = 2 * torch.eye(image.shape[0], device=image.device) - 1  # +1 on the diagonal, -1 elsewhere
    return -F.logsigmoid(sign * logits).sum() / image.shape[0]


def caption_loss(captioner: Ov2ForCaptioning, tokens: torch.Tensor, input_ids: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """The caption loss exactly as ``Ov2ForCaptioning`` computes it (chunked head or plain, per its switch).

    tokens [B, N, D] patch tokens, input_ids / labels [B, T] (labels -100 where ignored).
    """
    if captioner.fused_head_loss:
        return captioner.decoder.loss(tokens, input_ids, labels)
    logits = captioner.decoder(tokens, input_ids)  # [B, T, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
