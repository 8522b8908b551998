"""The seven OpenVision 2 releases, each in its real file layout, converted and checked against
references written from the published facts: open_clip's own ``VisionTransformer`` for the encoder
and a reference prefix-LM decoder with the release's key names (``convert_fixtures``).

Width and depth are cut down so each geometry runs in seconds; the patch size, the image size
(so the token grid, 27 x 27 for So400M/14 at 384 px) and the 32000-row vocabulary never are.
The geometry table below is from the release configs, not from our presets.
"""

from __future__ import annotations

import json

import pytest
import torch
from convert_fixtures import (
    ReferenceCaptionDecoder,
    build_open_clip_tower,
    decoder_release_config,
    tower_state,
    write_decoder_release,
    write_release,
)

from ov2_plugin import Ov2Config, Ov2ForCaptioning
from ov2_plugin.convert import convert_release, export_release, load_state_dict_file
from ov2_plugin.convert.open_clip_layout import decoder_config_from_release, vision_config_from_open_clip

TOKENIZER_IDS = 30522  # BERT-base-uncased WordPiece with [bos]/[eos]; the decoders have 32000 rows
VOCAB = 32000

# name -> (image_size, patch, full width, depth, head width, mlp_ratio, decoder (width, depth, heads, mlp)).
# Head widths and mlp ratios as the authors' open_clip model configs write them (L 64, H 80, So400M 72
# with mlp_ratio 3.7362); g/14's config is not published: 16 heads of 88 and MLP 6144 as the paper's table.
RELEASES = {
    "large-patch14-224": (224, 14, 1024, 24, 64, 4.0, (768, 12, 12, 3072)),
    "large-patch14-336": (336, 14, 1024, 24, 64, 4.0, (768, 12, 12, 3072)),
    "huge-patch14-224": (224, 14, 1280, 32, 80, 4.0, (1024, 24, 16, 4096)),
    "huge-patch14-336": (336, 14, 1280, 32, 80, 4.0, (1024, 24, 16, 4096)),
    "huge-patch14-448": (448, 14, 1280, 32, 80, 4.0, (1024, 24, 16, 4096)),
    "so400m-patch14-384": (384, 14, 1152, 27, 72, 3.7362, (768, 12, 12, 3072)),  # decoder read from the file, never assumed
    "giant-patch14-224": (224, 14, 1408, 40, 88, 6144 / 1408, (1024, 24, 16, 4096)),
}
PRESET = {"large-patch14-224": "L/14-224", "large-patch14-336": "L/14-336", "huge-patch14-224": "H/14-224",
          "huge-patch14-336": "H/14-336", "huge-patch14-448": "H/14-448", "so400m-patch14-384": "So400M/14-384",
          "giant-patch14-224": "g/14-224"}
WIDTH, DEPTH, DEC_WIDTH = 128, 2, 128  # cut down: 2 heads of 64 as the releases' head width


def vision_cfg(image_size: int, patch: int, width: int, depth: int, mlp_ratio: float, head_width: int = 64) -> dict:
    """``model_cfg.vision_cfg`` as the releases write it."""
    cfg = dict(image_size=image_size, layers=depth, width=width, patch_size=patch, head_width=head_width, no_ln_pre=True,
               pool_type="avg", final_ln_after_pool=True, norm_kwargs={"eps": 1e-6})
    if mlp_ratio != 4.0:
        cfg["mlp_ratio"] = mlp_ratio
    return cfg


def make_release(folder, name: str, seed: int = 0):
    """(open_clip tower, reference decoder) written to ``folder`` in the release's layout."""
    size, patch, _, _, _, ratio, _ = RELEASES[name]
    cfg = vision_cfg(size, patch, WIDTH, DEPTH, ratio)
    tower = build_open_clip_tower(cfg, embed_dim=64, seed=seed)
    write_release(folder, cfg, tower_state(tower), embed_dim=64)
    mlp = 4 * DEC_WIDTH
    decoder = ReferenceCaptionDecoder(DEC_WIDTH, DEPTH, 2, mlp, VOCAB, WIDTH, seed=seed + 1).eval()
    with torch.no_grad():  # make the ids the tokenizer lacks win the argmax often, so the limit is exercised
        decoder.lm_head.weight[TOKENIZER_IDS:] *= 4
    write_decoder_release(folder, decoder, decoder_release_config(DEC_WIDTH, DEPTH, 2, mlp, VOCAB, WIDTH))
    return tower, decoder


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_converts_and_matches_the_references(name, tmp_path):
    size, patch, *_ = RELEASES[name]
    grid = size // patch
    tower, decoder = make_release(tmp_path / "release", name)
    report = convert_release(tmp_path / "release", tmp_path / "ours")
    assert report.kind == "captioner"
    model = Ov2ForCaptioning.from_pretrained(tmp_path / "ours").eval()
    assert model.config.vision_config.image_size == size
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, size, size)
    ids = torch.randint(3, VOCAB, (1, 7))
    with torch.no_grad():
        _, ref_tokens = tower(pixels)
        ours_tokens = model.encode_image(pixels)
        ref_logits = decoder(ref_tokens, ids)
        ours_logits = model(pixel_values=pixels, input_ids=ids).logits
        ours_caption = model.generate(pixels, max_new_tokens=8)[0].tolist()
    assert ours_tokens.shape == ref_tokens.shape == (1, grid * grid, WIDTH)
    token_diff = (ours_tokens - ref_tokens).abs().max().item()
    logit_rel = ((ours_logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
    print(f"{name}: {grid}x{grid} tokens, patch tokens max abs diff {token_diff:.2g}, logits max rel diff {logit_rel:.2g}")
    assert token_diff <= 1e-5
    assert logit_rel <= 1e-4
    unrestricted = decoder.greedy(ref_tokens, 8)
    expected = decoder.greedy(ref_tokens, 8, id_limit=TOKENIZER_IDS)
    assert max(unrestricted) >= TOKENIZER_IDS  # the release's own greedy would return ids the tokenizer lacks
    assert ours_caption[: len(expected)] == expected and max(ours_caption) < TOKENIZER_IDS


@pytest.mark.parametrize("name", ["so400m-patch14-384", "huge-patch14-448"])
def test_release_round_trip_writes_the_same_files(name, tmp_path):
    make_release(tmp_path / "release", name)
    convert_release(tmp_path / "release", tmp_path / "ours")
    export_release(tmp_path / "ours", tmp_path / "back")
    for file_name in ("open_clip_config.json", "text_decoder_config.json"):
        assert (tmp_path / "back" / file_name).read_bytes() == (tmp_path / "release" / file_name).read_bytes()
    for file_name in ("open_clip_pytorch_model.bin", "caption_decoder.safetensors"):
        a = load_state_dict_file(tmp_path / "release" / file_name)
        b = load_state_dict_file(tmp_path / "back" / file_name)
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), file_name


@pytest.mark.parametrize("name", list(RELEASES))
def test_full_size_release_configs_parse_to_the_presets(name):
    """The full-size configs (no weights): our converter reads each release as its named preset."""
    size, patch, width, depth, head_width, ratio, (dw, dd, dh, dm) = RELEASES[name]
    ours = vision_config_from_open_clip({"vision_cfg": vision_cfg(size, patch, width, depth, ratio, head_width)}, None)
    preset = Ov2Config.from_preset(PRESET[name]).vision_config
    for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "patch_size", "image_size"):
        assert getattr(ours, field) == getattr(preset, field), field
    assert ours.layer_norm_eps == 1e-6 and ours.hidden_act == "gelu"  # no act_kwargs: open_clip's exact GELU
    dec, unknown = decoder_config_from_release(decoder_release_config(dw, dd, dh, dm, VOCAB, width), width, TOKENIZER_IDS)
    assert (dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads, dec.intermediate_size) == (dw, dd, dh, dm)
    assert dec.hidden_act == "gelu_pytorch_tanh" and dec.layer_norm_eps == 1e-6 and dec.tokenizer_vocab_size == TOKENIZER_IDS
    assert unknown == []
    if name != "so400m-patch14-384":  # which decoder the So400M release ships is not published
        preset_dec = Ov2Config.from_preset(PRESET[name]).decoder_config
        assert (preset_dec.hidden_size, preset_dec.num_hidden_layers) == (dw, dd)


def test_eps_is_the_releases_whatever_norm_kwargs_says(tmp_path):
    """The authors' open_clip builds every OpenVision 2 LayerNorm with eps 1e-6; without norm_kwargs too."""
    cfg = vision_cfg(224, 14, 1024, 24, 4.0)
    del cfg["norm_kwargs"]  # OpenVision 2: 1e-6 without norm_kwargs
    assert vision_config_from_open_clip({"vision_cfg": cfg}, None).layer_norm_eps == 1e-6
    # an OpenVision 1 release (text tower) runs in upstream open_clip: norm_kwargs, else torch's 1e-5
    assert vision_config_from_open_clip({"vision_cfg": cfg, "text_cfg": {"width": 768}}, None).layer_norm_eps == 1e-5


def test_384_px_patch_14_gives_729_tokens_in_both_llava_towers(tmp_path, parts):
    """A converted So400M/14-384 release as the vision tower of HF LLaVA (ov2 llava-build) and of the
    original LLaVA code: 27 x 27 = 729 image tokens in both."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ov2_plugin.llava.build import main as llava_build

    make_release(tmp_path / "release", "so400m-patch14-384")
    convert_release(tmp_path / "release", tmp_path / "ours")
    llava_build(["--vision_tower", str(tmp_path / "ours"), "--language_model", str(parts / "lm"),
                 "--output_dir", str(tmp_path / "llava")])
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    assert llava.config.image_seq_length == 729
    from PIL import Image

    batch = processor(images=Image.new("RGB", (500, 400), "white"), text="<image>\nwhat?", return_tensors="pt")
    assert batch["pixel_values"].shape[-2:] == (384, 384)
    assert int((batch["input_ids"] == llava.config.image_token_id).sum()) == 729
    with torch.no_grad():
        features = llava.model.get_image_features(pixel_values=batch["pixel_values"])
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    features = features[0] if isinstance(features, (list, tuple)) else features
    assert features.reshape(-1, features.shape[-1]).shape[0] == 729

    pytest.importorskip("llava.model.multimodal_encoder.builder", reason="llava-torch is installed by `make setup`")
    import types

    from ov2_plugin.llava.original import Ov2VisionTower, install

    install()
    tower = Ov2VisionTower(f"ov2:{tmp_path / 'ours'}", types.SimpleNamespace(mm_vision_select_layer=-2,
                                                                                 mm_vision_select_feature="patch"))
    assert tower.num_patches == 729 and tower.num_patches_per_side == 27
    out = tower(tower.image_processor.preprocess(Image.new("RGB", (500, 400)), return_tensors="pt")["pixel_values"])
    assert out.shape == (1, 729, WIDTH)


def test_release_decoder_config_from_the_authors_loader_fields_only(tmp_path):
    """A text_decoder_config.json with just the fields the authors' loader reads converts (pad id and
    eps take their decoder's defaults), and its bos/eos ids are the generation's."""
    make_release(tmp_path / "release", "large-patch14-224")
    cfg = json.loads((tmp_path / "release" / "text_decoder_config.json").read_text())
    assert set(cfg) == {"width", "depth", "num_heads", "mlp_dim", "vocab_size", "vision_width", "bos_id", "eos_id"}
    convert_release(tmp_path / "release", tmp_path / "ours")
    model = Ov2ForCaptioning.from_pretrained(tmp_path / "ours")
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    assert (tmp_path / "ours" / "generation_config.json").is_file()
