"""The text tower of the contrastive baselines: a causal transformer, CLIP style.

Token + learned position embeddings, OpenVision 2's pre-LN blocks (same kernels as the decoder),
the end-of-text position pooled (the last non-pad token: captions end with ``[eos]``), final
LayerNorm, linear projection to the shared embedding. Sized like the caption decoder.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import Ov2DecoderConfig
from ..modeling_vision import Ov2Block


class TextEncoder(nn.Module):
    def __init__(self, config: Ov2DecoderConfig, text_length: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Parameter(torch.randn(text_length, config.hidden_size) * 0.01)
        self.layers = nn.ModuleList([Ov2Block(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.hidden_size, embed_dim, bias=False)
        self.pad_token_id = config.pad_token_id
        self.text_length = text_length

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] (right-padded) -> text embeddings [B, P]; captions longer than ``text_length`` are cut."""
        ids = ids[:, : self.text_length]
        t = ids.shape[1]
        x = self.embed_tokens(ids) + self.position[:t]  # [B, L, E]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()  # pads come last: never seen
        for layer in self.layers:
            x = layer(x, causal)
        last = (ids != self.pad_token_id).sum(1).clamp(min=1) - 1  # [B] end-of-text position
        pooled = self.norm(x[torch.arange(ids.shape[0], device=ids.device), last])  # [B, E]
        return self.projection(pooled)
