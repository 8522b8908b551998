"""The OpenVision 2 vision encoder: a plain ViT, as a Hugging Face ``PreTrainedModel``.

Shape of the forward pass (B batch, N patches, D width):
pixels [B, 3, H, W] -> patch conv (no bias) [B, N, D] + sin-cos table -> CLS first [B, 1+N, D]
-> pre-LN blocks -> ``last_hidden_state`` (not normed; the captioner reads its patch tokens)
-> ``pooler_output`` = LayerNorm(mean of patch tokens).
There is no LayerNorm before the first block, as in the release.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from .activation_checkpointing import set_checkpointing
from .configuration import Ov2Config, Ov2DecoderConfig, Ov2VisionConfig

logger = logging.get_logger(__name__)


@functools.lru_cache(maxsize=16)
def sincos_2d_table(grid_h: int, grid_w: int, width: int, temperature: float = 10000.0) -> torch.Tensor:
    """big_vision's fixed 2-D sin-cos table [grid_h*grid_w, width], row-major over the grid.

    Computed rather than stored so that any resolution works without weight surgery.
    """
    y, x = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32), indexing="ij")
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / (quarter - 1))
    x = x.flatten()[:, None] * omega[None, :]
    y = y.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


class Ov2Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, computed by SDPA."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: Cache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, T, head_dim]
        if cache is not None:  # caption generation: keys/values of earlier positions come from the cache
            k, v = cache.update(k, v, layer_idx)  # [B, heads, past + T, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # scale head_dim^-0.5
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class Ov2MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Ov2Block(GradientCheckpointingLayer):
    """Pre-LN transformer block, shared by the encoder and the caption decoder."""

    def __init__(self, config: Ov2VisionConfig | Ov2DecoderConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Ov2Attention(config.hidden_size, config.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Ov2MLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: Cache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), attn_mask, cache, layer_idx)
        return x + self.mlp(self.layer_norm2(x))


class Ov2PreTrainedModel(PreTrainedModel):
    """Shared base: weight init, SDPA and gradient-checkpointing flags for the whole family."""

    config_class = Ov2Config
    base_model_prefix = "ov2"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Ov2Block"]
    # Which blocks ``activation_checkpointing_enable()`` (the Trainer's ``--gradient_checkpointing``)
    # recomputes: "all" (every block, transformers' meaning), "encoder" (the ViT) or "decoder".
    checkpointing_scope: str = "all"
    # The one attention kernel these blocks run (``F.scaled_dot_product_attention``, which picks flash or
    # memory-efficient kernels itself on a GPU). "eager" asks for the same numbers, so it is served too.
    supported_attention = ("sdpa", "eager")

    def _check_and_adjust_attn_implementation(self, attn_implementation: str | None, is_init_check: bool = False,
                                              allow_all_kernels: bool = False) -> str:
        """Any requested implementation runs as SDPA here, never an error.

        transformers hands a model-wide string (``attn_implementation="flash_attention_2"``, as LLaVA-OneVision
        recipes pass it) to every sub-model, the vision tower included; it would refuse what it does not
        declare. The language model keeps what was asked for; this tower says once that it uses SDPA.
        """
        if attn_implementation is not None and attn_implementation not in self.supported_attention:
            logger.warning_once(
                f"The OpenVision 2 tower has no {attn_implementation!r} attention; it runs SDPA (the language model "
                f"keeps {attn_implementation!r}). To say so explicitly, pass attn_implementation="
                f"{{'text_config': {attn_implementation!r}, 'vision_config': 'sdpa'}}."
            )
        return "sdpa"

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None,
                                    every_n_layers: int = 1) -> None:
        """transformers' hook; the choice of blocks is ``activation_checkpointing.set_checkpointing``'s."""
        set_checkpointing(self, self.checkpointing_scope if enable else "none", every_n_layers,
                          gradient_checkpointing_func)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """big_vision's ViT initialisation (the code the OpenVision release trains with).

        Dense layers Xavier-uniform, the patch embedding LeCun-normal (Flax's default for a conv),
        biases zero; embeddings and the CLS token normal with ``initializer_range``. Why not
        Hugging Face's usual normal(0.02) everywhere: on the quickstart model it learns shapes
        much more slowly (same 1200 steps, held-out scenes all right: 28 % with it, 41 % with this).
        """
        std = getattr(self.config, "initializer_range", None)
        if std is None:
            std = self.config.vision_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # fan-in from the layer, not its weight: under ZeRO-3 a rank holds an empty shard of it
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            nn.init.trunc_normal_(module.weight, std=fan_in**-0.5)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Ov2VisionEmbeddings):
            nn.init.normal_(module.class_embedding, std=std)


class Ov2VisionEmbeddings(nn.Module):
    def __init__(self, config: Ov2VisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h, w = pixel_values.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"Image size {h}x{w} is smaller than the patch size {self.patch_size}; resize it first.")
        # A size that is not a multiple of the patch keeps the floor grid (the last rows and
        # columns are never read), as open_clip and the release do: 384 px / patch 14 -> 27 x 27.
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, D, gh, gw]
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        x = x + sincos_2d_table(gh, gw, x.shape[-1]).to(x.device, x.dtype)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # the CLS position is a zero row
        return torch.cat([cls, x], dim=1)  # [B, 1+N, D]


class Ov2VisionModel(Ov2PreTrainedModel):
    """The encoder alone: what LLaVA-style pipelines use as their vision tower."""

    config_class = Ov2VisionConfig
    base_model_prefix = "vision_model"

    def __init__(self, config: Ov2VisionConfig) -> None:
        super().__init__(config)
        self.embeddings = Ov2VisionEmbeddings(config)
        self.layers = nn.ModuleList([Ov2Block(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def _kept_hidden_states(self, selection: bool | int | list[int] | None) -> set[int]:
        count = len(self.layers) + 1
        if selection is None or isinstance(selection, bool):
            return set(range(count)) if selection else set()
        indices = [selection] if isinstance(selection, int) else list(selection)
        bad = [i for i in indices if not -count <= i < count]
        if bad:
            raise IndexError(f"Hidden state index {bad[0]} is out of range: this tower has {count} (embeddings + "
                             f"{count - 1} layers); pick a vision_feature_layer in [-{count}, {count - 1}].")
        return {i % count for i in indices}

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode images.

        ``output_hidden_states`` may be a bool or, as transformers' LLaVA passes it, a layer
        index or a list of them. Indices count the embedding output first, so ``hidden_states[-2]``
        means what it means for CLIP; with indices only those states are kept (the rest are None),
        as CLIP does: keeping all 25 states of an L/14 at 336 px took 2.8x CLIP's forward memory.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        keep = self._kept_hidden_states(output_hidden_states)
        x = self.embeddings(pixel_values)
        hidden_states = [x if 0 in keep else None]
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            hidden_states.append(x if i in keep else None)
        pooled = self.post_layernorm(x[:, 1:].mean(dim=1))
        out = BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled, hidden_states=tuple(hidden_states) if keep else None
        )
        if return_dict is False:
            return out.to_tuple()
        return out
