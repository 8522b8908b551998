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


def write_hf_cache(cache: Path, repo_id: str, files: Path, revision: str = "0" * 40) -> Path:
    """The folder ``hf download REPO`` leaves in a Hugging Face cache (``HF_HUB_CACHE``):
    ``models--ORG--NAME/refs/main`` naming the revision, files under ``snapshots/REVISION/``."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(files, repo / "snapshots" / revision)
    return repo / "snapshots" / revision


def tower_state(tower: torch.nn.Module) -> dict:
    return {k: v for k, v in tower.state_dict().items()}


# ---------------------------------------------------------------- caption decoder reference


class ReferenceCaptionDecoder(torch.nn.Module):
    """The released caption decoder, written here from its published description (not from our
    model code): its ``state_dict()`` has the release's key names, so it both writes the fixture
    files and computes the reference logits.

    Image tokens -> ``image_projection`` (Linear, no bias) -> placed before the token embeddings,
    no positional embeddings -> pre-LN blocks (fused ``attn.in_proj_*`` q/k/v, ``attn.out_proj``,
    ``mlp.c_fc`` / ``mlp.c_proj``, tanh GELU, eps 1e-6, scale head_dim^-0.5) under a prefix-LM mask
    -> ``ln_final`` -> ``lm_head`` (Linear, no bias) on the text positions. Attention is written
    out as a softmax of masked scores.
    """

    def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, vocab_size: int, vision_width: int, seed: int = 1):
        super().__init__()
        nn = torch.nn
        self.width, self.num_heads = width, num_heads
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.image_projection = nn.Linear(vision_width, width, bias=False)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.ln_1, block.ln_2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            block.attn = nn.Module()
            block.attn.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
            block.attn.in_proj_bias = nn.Parameter(torch.empty(3 * width))
            block.attn.out_proj = nn.Linear(width, width)
            block.mlp = nn.Module()
            block.mlp.c_fc, block.mlp.c_proj = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)
            self.blocks.append(block)
        self.ln_final = nn.LayerNorm(width, eps=1e-6)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # every tensor random (LayerNorms near 1/0), so every tensor is tested
            for name, param in self.named_parameters():
                scale = 0.5 if "token_embedding" in name else 0.1 if "ln_" in name else 0.05
                param.copy_(torch.randn(param.shape, generator=g) * scale + (1.0 if name.endswith("ln_1.weight") or
                            name.endswith("ln_2.weight") or name == "ln_final.weight" else 0.0))

    def forward(self, image_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for ``ids`` [B, T] after ``image_tokens`` [B, K, vision_width]."""
        width, heads = self.width, self.num_heads
        hd = width // heads
        img = self.image_projection(image_tokens)
        x = torch.cat([img, self.token_embedding(ids)], dim=1)  # [B, K+T, E]
        b, n, _ = x.shape
        k_img = img.shape[1]
        row, col = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = (col < k_img) | ((row >= k_img) & (col <= row))  # image: among itself; text: image + causal
        for blk in self.blocks:
            h = blk.ln_1(x)
            q, k, v = (h @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias).split(width, dim=-1)
            q, k, v = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k, v))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            attn = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(b, n, width)
            x = x + blk.attn.out_proj(attn)
            x = x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(blk.ln_2(x)), approximate="tanh"))
        return self.lm_head(self.ln_final(x[:, k_img:]))

    @torch.no_grad()
    def greedy(self, image_tokens: torch.Tensor, steps: int, bos: int = 1, eos: int = 2, id_limit: int | None = None) -> list[int]:
        """Greedy caption of one image (re-running the whole prefix), argmax over ids < ``id_limit``."""
        ids = torch.tensor([[bos]])
        for _ in range(steps):
            logits = self(image_tokens, ids)[0, -1]
            nxt = int(logits[:id_limit].argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            if nxt == eos:
                break
        return ids[0, 1:].tolist()


def write_decoder_release(folder: Path, decoder: ReferenceCaptionDecoder, config: dict) -> None:
    """``caption_decoder.safetensors`` + ``text_decoder_config.json`` as every OpenVision 2 release has them."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, folder / "caption_decoder.safetensors")
    (folder / "text_decoder_config.json").write_text(json.dumps(config))


def decoder_release_config(width: int, depth: int, num_heads: int, mlp_dim: int, vocab_size: int, vision_width: int) -> dict:
    """A ``text_decoder_config.json``: the fields the authors' loader reads."""
    return dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, vocab_size=vocab_size,
                vision_width=vision_width, bos_id=1, eos_id=2)
