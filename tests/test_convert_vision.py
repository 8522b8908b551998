"""Release (open_clip layout) -> ours: numerical parity against open_clip's own VisionTransformer,
round trip, preprocessing, and the errors for bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from convert_fixtures import (
    bigvision_table,
    build_open_clip_tower,
    release_vision_cfg,
    tower_state,
    write_hf_cache,
    write_release,
)
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from ov2_plugin import Ov2VisionModel
from ov2_plugin.convert import convert_release, export_release, load_state_dict_file
from ov2_plugin.convert.open_clip_layout import release_position_table
from ov2_plugin.data.scenes import make_scene

TINY_SIZE = 32
L14_SIZE = 56  # L/14 geometry (1024 wide, 24 layers, patch 14) at a small image: 4x4 patches keep it fast


def _compare(tower, model, proj, size, n=2):
    """Max abs differences (patch tokens, pooled) between open_clip's tower and our converted encoder."""
    torch.manual_seed(123)
    pixels = torch.randn(n, 3, size, size)
    with torch.no_grad():
        ref_pooled, ref_tokens = tower(pixels)  # pooled is after ``proj``; tokens are pre-norm patch tokens
        out = model(pixels)
    tokens_diff = (out.last_hidden_state[:, 1:] - ref_tokens).abs().max().item()
    pooled_diff = (out.pooler_output @ proj - ref_pooled).abs().max().item()
    return tokens_diff, pooled_diff


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    cfg = release_vision_cfg("tiny", TINY_SIZE)
    tower = build_open_clip_tower(cfg, embed_dim=96)
    folder = write_release(tmp_path_factory.mktemp("tiny_release"), cfg, tower_state(tower), embed_dim=96)
    return cfg, tower, folder


@pytest.fixture(scope="module")
def tiny_converted(tiny_release, tmp_path_factory):
    _, _, folder = tiny_release
    dst = tmp_path_factory.mktemp("tiny_converted")
    report = convert_release(folder, dst)
    return dst, report


def test_our_sincos_table_is_big_vision_table():
    assert torch.equal(release_position_table(7, 64), bigvision_table(7, 64))


def test_tiny_release_matches_open_clip_vision_transformer(tiny_release, tiny_converted):
    _, tower, _ = tiny_release
    dst, report = tiny_converted
    model = AutoModel.from_pretrained(dst).eval()
    assert isinstance(model, Ov2VisionModel)
    proj = load_file(dst / "open_clip_extra.safetensors")["proj"]
    tokens_diff, pooled_diff = _compare(tower, model, proj, TINY_SIZE)
    print(f"tiny @ {TINY_SIZE}px: patch tokens max abs diff {tokens_diff:.3g}, pooled {pooled_diff:.3g}")
    assert tokens_diff <= 1e-5 and pooled_diff <= 1e-5
    assert report.kept_aside == ["positional_embedding", "proj"]  # the stored table, written back on export
    assert model.config.hidden_act == "gelu" and model.config.layer_norm_eps == 1e-6


@pytest.fixture(scope="module")
def l14_release(tmp_path_factory):
    cfg = release_vision_cfg("L/14", L14_SIZE)
    tower = build_open_clip_tower(cfg, embed_dim=768)
    folder = write_release(tmp_path_factory.mktemp("l14_release"), cfg, tower_state(tower), embed_dim=768)
    return cfg, tower, folder


def test_l14_release_matches_open_clip_vision_transformer(l14_release, tmp_path):
    _, tower, folder = l14_release
    convert_release(folder, tmp_path / "l14")
    model = AutoModel.from_pretrained(tmp_path / "l14").eval()
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.intermediate_size,
            model.config.num_attention_heads, model.config.patch_size) == (1024, 24, 4096, 16, 14)
    proj = load_file(tmp_path / "l14" / "open_clip_extra.safetensors")["proj"]
    tokens_diff, pooled_diff = _compare(tower, model, proj, L14_SIZE)
    print(f"L/14 @ {L14_SIZE}px: patch tokens max abs diff {tokens_diff:.3g}, pooled {pooled_diff:.3g}")
    assert tokens_diff <= 1e-5 and pooled_diff <= 1e-5


def test_round_trip_ours_to_open_clip_layout_to_ours_is_bit_identical(tiny_converted, tmp_path):
    dst, _ = tiny_converted
    export_release(dst, tmp_path / "export")
    exported = load_state_dict_file(tmp_path / "export" / "open_clip_pytorch_model.bin")
    convert_release(tmp_path / "export", tmp_path / "back")
    a = Ov2VisionModel.from_pretrained(dst).state_dict()
    b = Ov2VisionModel.from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(load_file(dst / "open_clip_extra.safetensors")["proj"], exported["proj"])
    assert json.loads((tmp_path / "export" / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]["no_ln_pre"] is True


def test_exported_release_loads_into_open_clip_and_matches(tiny_release, tiny_converted, tmp_path):
    """The export is a state dict open_clip's own tower accepts with strict=True and reproduces."""
    cfg, tower, _ = tiny_release
    dst, _ = tiny_converted
    export_release(dst, tmp_path / "export", use_safetensors=True)
    fresh = build_open_clip_tower(cfg, embed_dim=96, seed=5)
    fresh.load_state_dict(load_file(tmp_path / "export" / "open_clip_model.safetensors"), strict=True)
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(fresh(pixels)[0], tower(pixels)[0])


def test_converted_preprocessing_matches_open_clip_transform(tiny_converted):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    dst, _ = tiny_converted
    ours = AutoImageProcessor.from_pretrained(dst)
    theirs = image_transform_v2(
        PreprocessCfg(size=TINY_SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear", resize_mode="squash"),
        is_train=False,
    )
    image = make_scene(0, 3).render(80).crop((0, 0, 80, 60))  # not square: squash must not crop
    a = ours(image, return_tensors="pt")["pixel_values"][0]
    b = theirs(image)
    assert a.shape == b.shape == (3, TINY_SIZE, TINY_SIZE)
    diff = (a - b).abs()
    # Same resize, same normalisation: PIL's bilinear output differs at most by one 8-bit level
    # (1/255/std) on a few pixels between the two code paths; everything else is equal to float eps.
    one_level = 1 / 255 / 0.224
    assert diff.max().item() <= one_level * 1.01
    assert (diff > 1e-5).float().mean().item() < 0.01


def test_release_preprocessing_defaults_apply_when_the_release_names_none(tiny_release):
    """A config without preprocess_cfg runs as the releases do (ImageNet mean/std, bilinear, squash),
    never open_clip's OpenAI-CLIP defaults; compared with open_clip's own transform so configured."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from ov2_plugin.convert.open_clip_layout import vision_config_from_open_clip
    from ov2_plugin.convert.release import release_image_processor

    cfg, _, _ = tiny_release
    config = vision_config_from_open_clip({"vision_cfg": cfg}, None)
    assert config.image_mean == [0.485, 0.456, 0.406] and config.image_std == [0.229, 0.224, 0.225]
    ours = release_image_processor(config, None)
    theirs = image_transform_v2(PreprocessCfg(size=TINY_SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                              interpolation="bilinear", resize_mode="squash"), is_train=False)
    image = make_scene(0, 3).render(80).crop((0, 0, 80, 60))
    a, b = ours(image, return_tensors="pt")["pixel_values"][0], theirs(image)
    assert a.shape == b.shape == (3, TINY_SIZE, TINY_SIZE)
    assert (a - b).abs().max().item() <= 1 / 255 / 0.224 * 1.01  # at most one 8-bit level, as above
    assert ((a - b).abs() > 1e-5).float().mean().item() < 0.01


def test_caption_demo_preprocessing_is_an_option(tiny_release, tmp_path):
    """--resize_mode shortest: the authors' caption demo (shorter side to the size, bilinear, centre
    crop, ImageNet mean/std), written out here from its description."""
    import numpy as np
    from PIL import Image

    cfg, tower, _ = tiny_release
    folder = write_release(tmp_path / "rel", cfg, tower_state(tower), embed_dim=96)
    convert_release(folder, tmp_path / "out", resize_mode="shortest")
    ours = AutoImageProcessor.from_pretrained(tmp_path / "out")
    image = make_scene(0, 3).render(90).crop((0, 0, 90, 60))
    w, h = image.size
    s = TINY_SIZE / min(w, h)
    resized = image.resize((round(w * s), round(h * s)), Image.BILINEAR)
    left, top = (resized.width - TINY_SIZE) // 2, (resized.height - TINY_SIZE) // 2
    crop = np.asarray(resized.crop((left, top, left + TINY_SIZE, top + TINY_SIZE)), np.float32) / 255
    expected = torch.from_numpy((crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).permute(2, 0, 1).float()
    got = ours(image, return_tensors="pt")["pixel_values"][0]
    assert got.shape == expected.shape == (3, TINY_SIZE, TINY_SIZE)
    assert (got - expected).abs().max().item() <= 1 / 255 / 0.224 * 1.01


def test_openvision1_clip_release_converts_vision_tower_and_reports_text_tower(tiny_release, tmp_path):
    cfg, tower, _ = tiny_release
    state = {f"visual.{k}": v for k, v in tower_state(tower).items()}
    state.update({"text.token_embedding.weight": torch.zeros(10, 8), "logit_scale": torch.tensor(1.0)})
    folder = tmp_path / "ov1"
    write_release(folder, cfg, state, embed_dim=96, extra_model_cfg={"text_cfg": {"width": 8}})
    report = convert_release(folder, tmp_path / "out")
    assert report.not_converted == ["logit_scale", "text.token_embedding.weight"]
    model = Ov2VisionModel.from_pretrained(tmp_path / "out").eval()
    proj = load_file(tmp_path / "out" / "open_clip_extra.safetensors")["proj"]
    assert max(_compare(tower, model, proj, TINY_SIZE)) <= 1e-5


def test_hf_hub_name_resolves_through_the_hugging_face_cache(tiny_release, tmp_path, monkeypatch):
    """hf-hub:org/name finds what 'hf download' left in HF_HUB_CACHE (models--org--name/snapshots/REV)."""
    import huggingface_hub

    cfg, tower, _ = tiny_release
    release = write_release(tmp_path / "release", cfg, tower_state(tower), embed_dim=96)
    write_hf_cache(tmp_path / "hub", "UCSC-VLAA/tiny-vision-only", release)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    convert_release("hf-hub:UCSC-VLAA/tiny-vision-only", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_hf_hub_name_missing_names_the_command_that_fills_the_cache(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        convert_release("hf-hub:UCSC-VLAA/not-here", tmp_path / "out")
    msg = str(err.value)
    assert "nothing is downloaded" in msg and "'hf download UCSC-VLAA/not-here'" in msg and str(tmp_path / "hub") in msg


def test_cli_convert_reads_hf_home_from_the_environment(tiny_release, tmp_path):
    """The CLI in a fresh process, with only HF_HOME set, as a user who ran 'hf download' would have it."""
    import os
    import subprocess
    import sys

    cfg, tower, _ = tiny_release
    release = write_release(tmp_path / "release", cfg, tower_state(tower), embed_dim=96)
    write_hf_cache(tmp_path / "hf_home" / "hub", "UCSC-VLAA/tiny-vision-only", release)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "ov2_plugin.cli", "convert", "hf-hub:UCSC-VLAA/tiny-vision-only",
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ---------------------------------------------------------------- bad inputs


def _tiny_release_variant(tmp_path, tiny_release, cfg_overrides=None, edit=None, **kw):
    cfg, tower, _ = tiny_release
    state = tower_state(tower)
    if edit:
        state = edit(dict(state))
    return write_release(tmp_path / "bad", dict(cfg, **(cfg_overrides or {})), state, embed_dim=96, **kw)


def test_wrong_architecture_is_refused_naming_the_settings(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, {"no_ln_pre": False, "pool_type": "tok"})
    with pytest.raises(ValueError, match="not an OpenVision") as err:
        convert_release(folder, tmp_path / "out")
    assert "no_ln_pre=False" in str(err.value) and "pool_type='tok'" in str(err.value)


def test_missing_key_is_listed(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, edit=lambda s: {k: v for k, v in s.items() if k != "transformer.resblocks.1.mlp.c_fc.bias"})
    with pytest.raises(ValueError, match=r"Missing keys: transformer\.resblocks\.1\.mlp\.c_fc\.bias\."):
        convert_release(folder, tmp_path / "out")


def test_unexpected_key_is_listed(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, edit=lambda s: {**s, "ln_pre.weight": torch.ones(192), "ln_pre.bias": torch.zeros(192)})
    with pytest.raises(ValueError, match=r"Unexpected keys: ln_pre\.bias, ln_pre\.weight\."):
        convert_release(folder, tmp_path / "out")


def test_wrong_image_size_is_named_in_shape_error(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, {"image_size": 64})  # weights are for 32 px
    with pytest.raises(ValueError, match="Shape mismatch: positional_embedding") as err:
        convert_release(folder, tmp_path / "out")
    assert "image size 32" in str(err.value) and "image size 64" in str(err.value) and "wrong preset or image size" in str(err.value)


def test_wrong_preset_is_named_in_shape_error(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, {"mlp_ratio": 2.0})
    with pytest.raises(ValueError, match=r"mlp\.c_fc\.weight: checkpoint \(768, 192\) vs config \(384, 192\)") as err:
        convert_release(folder, tmp_path / "out")
    assert "wrong preset" in str(err.value)


def test_layer_count_mismatch_lists_missing_blocks(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, {"layers": 8})
    with pytest.raises(ValueError, match=r"Missing keys: transformer\.resblocks\.6\.attn\.in_proj_bias") as err:
        convert_release(folder, tmp_path / "out")
    assert "6 layers" in str(err.value) and "8 layers" in str(err.value)


def test_open_clip_mae_position_table_is_refused(tiny_release, tmp_path):
    cfg, _, _ = tiny_release
    mae_tower = build_open_clip_tower(cfg, embed_dim=96)
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    with torch.no_grad():  # what open_clip's own pos_embed_type='sin_cos_2d' stores
        mae_tower.positional_embedding.copy_(torch.from_numpy(get_2d_sincos_pos_embed(192, 4, cls_token=True)).float())
    folder = write_release(tmp_path / "mae", cfg, tower_state(mae_tower), embed_dim=96)
    with pytest.raises(ValueError, match="open_clip's own sin_cos_2d"):
        convert_release(folder, tmp_path / "out")


def test_learned_position_table_is_refused(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release, edit=lambda s: {**s, "positional_embedding": torch.randn(17, 192) * 0.02})
    with pytest.raises(ValueError, match="CLS row is not zero"):
        convert_release(folder, tmp_path / "out")


class _Payload:
    """Unpickling this would create a file: proof that pickled code is never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pickle_with_code_is_refused_and_never_run(tiny_release, tmp_path):
    folder = _tiny_release_variant(tmp_path, tiny_release)
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(str(marker))}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_release(folder, tmp_path / "out")
    assert not marker.exists()


def test_not_a_release_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        convert_release(tmp_path / "empty", tmp_path / "out")


def test_cli_convert_reports_errors_as_one_line(tmp_path, capsys):
    from ov2_plugin.cli import main

    (tmp_path / "src").mkdir()
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "ov2 convert: error: Do not know how to convert" in capsys.readouterr().err


def test_cli_convert_and_reverse_round_trip(tiny_release, tmp_path, capsys):
    from ov2_plugin.cli import main

    _, _, folder = tiny_release
    assert main(["convert", str(folder), str(tmp_path / "ours")]) == 0
    assert "converted tensors: 76" in capsys.readouterr().out  # conv1, CLS, 6 x 12 block tensors, ln_post x 2
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "release"), "--reverse"]) == 0
    a = load_state_dict_file(folder / "open_clip_pytorch_model.bin")
    b = load_state_dict_file(tmp_path / "release" / "open_clip_pytorch_model.bin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # release -> ours -> release, bit-identical


def test_load_vision_model_accepts_hf_hub_name_of_converted_folder(tiny_converted, tmp_path, monkeypatch):
    import huggingface_hub

    from ov2_plugin.loading import load_vision_model

    dst, _ = tiny_converted
    write_hf_cache(tmp_path / "hub", "org/converted", dst)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_vision_model("hf-hub:org/converted")
    assert torch.equal(model.post_layernorm.weight, Ov2VisionModel.from_pretrained(dst).post_layernorm.weight)
