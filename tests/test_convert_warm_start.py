"""Warm starts from Hugging Face CLIPVisionModel / SiglipVisionModel folders (small, random
weights, built here): what is copied must compute what it computed there."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from ov2_plugin import Ov2VisionConfig, Ov2VisionModel
from ov2_plugin.convert import warm_start_from_hf
from ov2_plugin.convert.cli import main as convert_main

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32)


def _randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # LayerNorms and biases start at 1/0: move them
    return model.eval()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    model = _randomise(CLIPVisionModel(CLIPVisionConfig(**SMALL)))
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip")
    model = _randomise(SiglipVisionModel(SiglipVisionConfig(**SMALL)))
    model.save_pretrained(folder)
    return folder, model


def _blocks_agree(ours: Ov2VisionModel, encoder, atol=1e-5) -> float:
    """Run the same token sequence through our blocks and the source encoder's blocks."""
    x = torch.randn(2, 17, SMALL["hidden_size"])
    with torch.no_grad():
        ref = encoder(inputs_embeds=x).last_hidden_state
        for layer in ours.layers:
            x = layer(x)
    return (x - ref).abs().max().item()


def test_clip_warm_start_copies_blocks_and_reports_the_rest(clip_folder):
    folder, clip = clip_folder
    model, report = warm_start_from_hf(folder)
    assert model.config.hidden_act == "quick_gelu" and model.config.layer_norm_eps == 1e-5
    assert len(report.copied) == len(model.state_dict()) and not report.not_copied
    assert set(report.source_unused) == {
        "embeddings.position_embedding.weight", "pre_layrnorm.weight", "pre_layrnorm.bias"
    }
    assert "pre-LN" in report.source_unused["pre_layrnorm.weight"]
    src = getattr(clip, "vision_model", clip)  # transformers 5 puts the modules on the model itself
    q, k, v = (src.encoder.layers[1].self_attn.__getattr__(f"{n}_proj").weight for n in "qkv")
    assert torch.equal(model.layers[1].self_attn.qkv.weight, torch.cat([q, k, v]))
    assert torch.equal(model.embeddings.class_embedding, src.embeddings.class_embedding)
    assert _blocks_agree(model.eval(), src.encoder) <= 1e-5
    assert "copied 28 tensors" in report.summary()  # patch conv, CLS, 2 x 12 block tensors, final LN


def test_siglip_warm_start_reports_class_token_patch_bias_and_head(siglip_folder):
    folder, siglip = siglip_folder
    model, report = warm_start_from_hf(folder)
    assert model.config.hidden_act == "gelu_pytorch_tanh" and model.config.layer_norm_eps == 1e-6
    assert report.not_copied == {"embeddings.class_embedding": "no embeddings.class_embedding in the source"}
    assert "embeddings.patch_embedding.bias" in report.source_unused
    assert any(k.startswith("head.") for k in report.source_unused)
    src = getattr(siglip, "vision_model", siglip)
    assert torch.equal(model.embeddings.patch_embedding.weight, src.embeddings.patch_embedding.weight)
    assert _blocks_agree(model.eval(), src.encoder) <= 1e-5


def test_warm_start_into_other_shapes_reports_each_mismatch(siglip_folder):
    folder, _ = siglip_folder
    target = Ov2VisionConfig(**{**SMALL, "intermediate_size": 96})
    model, report = warm_start_from_hf(folder, config=target)
    assert report.not_copied["layers.0.mlp.fc1.weight"] == "shape (128, 64) in the source, (96, 64) here"
    assert "layers.0.self_attn.qkv.weight" in report.copied


def test_ov2_convert_warm_start_writes_model_processor_and_report(clip_folder, tmp_path):
    folder, _ = clip_folder
    summary = convert_main([str(folder), str(tmp_path / "out"), "--image_size", "48"])
    assert "warm start from clip" in summary
    model = Ov2VisionModel.from_pretrained(tmp_path / "out")
    assert model.config.image_size == 48
    assert json.loads((tmp_path / "out" / "warm_start_report.json").read_text())["source_type"] == "clip"
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


def test_warm_start_refuses_other_model_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="holds a 'bert' model; a warm start takes"):
        warm_start_from_hf(tmp_path)
