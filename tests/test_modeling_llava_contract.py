"""Our encoder as the vision tower of transformers' own LlavaForConditionalGeneration."""

import torch
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from ov2_plugin import Ov2VisionConfig, Ov2VisionModel

IMAGE_TOKEN = 5


def tiny_llava(strategy: str = "default", layer: int | list[int] = -2) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    vision = Ov2VisionConfig.from_preset("tiny", image_size=32)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                         vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    return LlavaForConditionalGeneration(config).eval()


def prompt(num_image_tokens: int) -> torch.Tensor:
    return torch.tensor([[1] + [IMAGE_TOKEN] * num_image_tokens + [7, 8, 9]])


def test_llava_builds_our_tower_from_vision_config():
    model = tiny_llava()
    assert isinstance(model.model.vision_tower, Ov2VisionModel)


def test_llava_forward_and_generate_with_our_tower():
    model = tiny_llava()
    pixels = torch.randn(1, 3, 32, 32)
    ids = prompt(16)  # default strategy drops CLS: 16 patch features at 32 px / patch 8
    out = model(input_ids=ids, pixel_values=pixels)
    assert out.logits.shape == (1, ids.shape[1], 64)
    generated = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 4)


def test_llava_reads_the_requested_layer_and_strategy():
    model = tiny_llava(strategy="full", layer=-2)
    pixels = torch.randn(1, 3, 32, 32)
    feats = model.get_image_features(pixel_values=pixels)
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats
    tower_out = model.model.vision_tower(pixels, output_hidden_states=True)
    expected = model.model.multi_modal_projector(tower_out.hidden_states[-2])  # CLS kept with "full"
    torch.testing.assert_close(feats.reshape(expected.shape), expected)
