"""Builders shared by the tests/test_convert_*.py files: release folders made with open_clip
itself (random weights, nothing downloaded) and a reference caption decoder written from the
release's description, independent of our model code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from ov2_plugin.configuration import VISION_PRESETS


def release_vision_cfg(preset: str, image_size: int, **overrides) -> dict:
    """A ``vision_cfg`` with the released OpenVision 2 configs' semantics for one of our presets."""
    p = VISION_PRESETS[preset]
    cfg = dict(
        image_size=image_size,
        layers=p["num_hidden_layers"],
        width=p["hidden_size"],
        head_width=p["hidden_size"] // p["num_attention_heads"],
        mlp_ratio=p["intermediate_size"] / p["hidden_size"],
        patch_size=p["patch_size"],
        no_ln_pre=True,
        pool_type="avg",
        final_ln_after_pool=True,
        pos_embed_type="sin_cos_2d",
        norm_kwargs={"eps": 1e-6},
    )
    cfg.update(overrides)
    return cfg


def bigvision_table(grid: int, width: int) -> torch.Tensor:
    """big_vision's posemb_sincos_2d with a zero CLS row, written out here from its definition
    (not imported from our model) so the test checks our table too."""
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float32) / (width // 4 - 1))
    x = torch.einsum("m,d->md", x.flatten(), omega)
    y = torch.einsum("m,d->md", y.flatten(), omega)
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return torch.cat([torch.zeros(1, width), pe])


def build_open_clip_tower(vision_cfg: dict, embed_dim: int, seed: int = 0) -> torch.nn.Module:
    """open_clip's own VisionTransformer for ``vision_cfg``, random weights, big_vision positions.

    open_clip's ``sin_cos_2d`` is the MAE table, not big_vision's; the release's converter writes
    big_vision's table into ``positional_embedding``, so we do the same here. Biases and LayerNorm
    parameters get random values too (open_clip starts them at 0/1), so every tensor is tested.
    """
    from open_clip.model import _build_vision_tower

    torch.manual_seed(seed)
    tower = _build_vision_tower(embed_dim, dict(vision_cfg, output_tokens=True)).eval()
    grid = vision_cfg["image_size"] // vision_cfg["patch_size"]
    with torch.no_grad():
        for name, param in tower.named_parameters():
            if param.ndim == 1 and name != "class_embedding":
                param.add_(torch.randn_like(param) * 0.1)
        tower.positional_embedding.copy_(bigvision_table(grid, vision_cfg["width"]))
    return tower


def write_release(folder: Path, vision_cfg: dict, state: dict, embed_dim: int, preprocess_cfg: dict | None = None,
                  prefix: str = "", extra_model_cfg: dict | None = None) -> Path:
    """A release folder as published: open_clip_config.json + open_clip_pytorch_model.bin (torch.save)."""
    folder.mkdir(parents=True, exist_ok=True)
    pre = preprocess_cfg or {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear", "resize_mode": "squash"}
    model_cfg = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, **(extra_model_cfg or {})}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre}))
    torch.save({prefix + k: v.clone() for k, v in state.items()}, folder / "open_clip_pytorch_model.bin")
    return folder


def tower_state(tower: torch.nn.Module) -> dict:
    return {k: v for k, v in tower.state_dict().items()}


# ---------------------------------------------------------------- caption decoder reference


def random_decoder_release(width: int, layers: int, heads: int, mlp: int, vocab: int, image_width: int, seed: int = 1) -> tuple[dict, dict]:
    """(state dict in the assumed release naming, text_decoder_config.json content), random weights."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "image_projection": rnd(image_width, width),
        "token_embedding.weight": rnd(vocab, width, scale=0.5),
        "ln_final.weight": 1 + rnd(width, scale=0.1),
        "ln_final.bias": rnd(width, scale=0.1),
        "text_projection": rnd(width, vocab),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        state.update({
            p + "ln_1.weight": 1 + rnd(width, scale=0.1), p + "ln_1.bias": rnd(width, scale=0.1),
            p + "attn.in_proj_weight": rnd(3 * width, width), p + "attn.in_proj_bias": rnd(3 * width),
            p + "attn.out_proj.weight": rnd(width, width), p + "attn.out_proj.bias": rnd(width),
            p + "ln_2.weight": 1 + rnd(width, scale=0.1), p + "ln_2.bias": rnd(width, scale=0.1),
            p + "mlp.c_fc.weight": rnd(mlp, width), p + "mlp.c_fc.bias": rnd(mlp),
            p + "mlp.c_proj.weight": rnd(width, mlp), p + "mlp.c_proj.bias": rnd(width),
        })
    config = {"width": width, "layers": layers, "heads": heads, "mlp_ratio": mlp / width, "vocab_size": vocab,
              "context_length": 128, "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}
    return state, config


def reference_decoder_logits(image_tokens: torch.Tensor, ids: torch.Tensor, sd: dict, cfg: dict) -> torch.Tensor:
    """The released decoder as described: image projection (no bias) -> image tokens before the text
    embeddings, no positional embeddings -> pre-LN blocks (fused in_proj, out_proj, c_fc, c_proj with
    biases, tanh-GELU) under a prefix-LM mask -> final LN -> head (no bias) on text positions.
    Attention is written out (softmax of masked scores), not SDPA, to stay independent of our code."""
    width, heads, eps = cfg["width"], cfg["heads"], cfg["norm_kwargs"]["eps"]
    hd = width // heads
    img = image_tokens @ sd["image_projection"]  # [B, K, E]
    x = torch.cat([img, sd["token_embedding.weight"][ids]], dim=1)  # [B, K+T, E]
    b, n, _ = x.shape
    k_img = img.shape[1]
    row = torch.arange(n)[:, None]
    col = torch.arange(n)[None, :]
    allowed = (col < k_img) | ((row >= k_img) & (col <= row))  # image: bidirectional among itself; text: all image + causal
    for i in range(cfg["layers"]):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).split(width, dim=-1)
        q, k, v = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        attn = attn.transpose(1, 2).reshape(b, n, width)
        x = x + attn @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"], eps)
    return x[:, k_img:] @ sd["text_projection"]  # [B, T, V]
