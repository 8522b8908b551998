import pytest
import torch

from ov2_plugin import Ov2Config, Ov2VisionConfig, Ov2VisionModel
from ov2_plugin.configuration import VISION_PRESETS


def expected_encoder_params(c: Ov2VisionConfig) -> int:
    """Count of the release's layout: patch conv (no bias), CLS, blocks, final LN; no pre-LN, no pos table."""
    d, m = c.hidden_size, c.intermediate_size
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    return c.num_channels * c.patch_size**2 * d + d + c.num_hidden_layers * block + 2 * d


@pytest.mark.parametrize("name", list(VISION_PRESETS))
def test_preset_parameter_count_matches_release_layout(name):
    config = Ov2VisionConfig.from_preset(name)
    with torch.device("meta"):
        model = Ov2VisionModel(config)
    assert sum(p.numel() for p in model.parameters()) == expected_encoder_params(config)


def test_l14_encoder_has_the_released_parameter_count():
    with torch.device("meta"):
        model = Ov2VisionModel(Ov2VisionConfig.from_preset("L/14"))
    assert sum(p.numel() for p in model.parameters()) == 302_914_560


def test_published_sizes():
    sizes = {n: (c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["num_attention_heads"]) for n, c in VISION_PRESETS.items()}
    assert sizes["L/14"] == (1024, 24, 4096, 16)
    assert sizes["So400M/14"] == (1152, 27, 4304, 16)
    assert sizes["H/14"] == (1280, 32, 5120, 16)
    assert sizes["g/14"] == (1408, 40, 6144, 16)
    dec = Ov2Config.from_preset("L/14").decoder_config
    assert (dec.hidden_size, dec.num_hidden_layers, dec.intermediate_size, dec.num_attention_heads, dec.vocab_size) == (768, 12, 3072, 12, 30522)


def test_clip_style_attribute_names():
    c = Ov2VisionConfig.from_preset("B/16")
    assert c.image_size // c.patch_size == 14
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (768, 12, 12, 3072)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown vision preset 'L/16'.*L/14"):
        Ov2VisionConfig.from_preset("L/16")
    with pytest.raises(ValueError, match="Unknown model preset"):
        Ov2Config.from_preset("huge")


# The seven released OpenVision 2 encoders (UCSC-VLAA/openvision2-vit-NAME-vision-only), from the
# release's own configs: (preset, width, depth, patch, image size, patch grid).
RELEASES = [
    ("L/14-224", 1024, 24, 14, 224, 16), ("L/14-336", 1024, 24, 14, 336, 24),
    ("H/14-224", 1280, 32, 14, 224, 16), ("H/14-336", 1280, 32, 14, 336, 24), ("H/14-448", 1280, 32, 14, 448, 32),
    ("So400M/14-384", 1152, 27, 14, 384, 27), ("g/14-224", 1408, 40, 14, 224, 16),
]


@pytest.mark.parametrize("preset,width,depth,patch,size,grid", RELEASES)
def test_released_geometries_are_presets(preset, width, depth, patch, size, grid):
    config = Ov2VisionConfig.from_preset(preset)
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size, config.image_size) == (width, depth, patch, size)
    assert config.num_patches_per_side == grid  # floor(size / patch): So400M/14 at 384 px keeps 27 x 27 = 729


def test_each_encoder_gets_the_decoder_its_release_ships():
    assert Ov2Config.from_preset("L/14-336").decoder_config.hidden_size == 768  # L decoder
    for name in ("H/14", "H/14-448", "g/14"):
        dec = Ov2Config.from_preset(name).decoder_config  # H decoder: 1024 wide, 24 layers, 16 heads, MLP 4096
        assert (dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads, dec.intermediate_size) == (1024, 24, 16, 4096)


def test_image_size_not_a_multiple_of_the_patch_is_legal():
    assert Ov2VisionConfig.from_preset("L/14", image_size=200).num_patches_per_side == 14
    with pytest.raises(ValueError, match="smaller than patch_size 14"):
        Ov2VisionConfig.from_preset("L/14", image_size=10)


def test_config_round_trip(tmp_path):
    config = Ov2Config.from_preset("tiny", keep_ratio=0.25)
    config.save_pretrained(tmp_path)
    loaded = Ov2Config.from_pretrained(tmp_path)
    assert loaded.keep_ratio == 0.25
    assert loaded.vision_config.hidden_size == config.vision_config.hidden_size
    assert loaded.decoder_config.eos_token_id == 2
