"""Vision + caption-decoder release -> our captioner: parity with a reference decoder written from
the release's description, round trip, bad input, and use by the rest of the stack (``AutoModel``,
``LlavaConfig(vision_config=...)``, ``ov2 caption``)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from convert_fixtures import (
    ReferenceCaptionDecoder,
    build_open_clip_tower,
    decoder_release_config,
    release_vision_cfg,
    tower_state,
    write_decoder_release,
    write_release,
)
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from ov2_plugin import Ov2ForCaptioning, Ov2VisionModel
from ov2_plugin.convert import convert_release, export_release
from ov2_plugin.tokenization import build_caption_tokenizer

SIZE = 32
DEC = dict(width=96, depth=2, num_heads=3, mlp_dim=384, vocab_size=32000)  # the release's 32000 rows


@pytest.fixture(scope="module")
def captioner_release(tmp_path_factory):
    cfg = release_vision_cfg("tiny", SIZE)
    tower = build_open_clip_tower(cfg, embed_dim=96)
    folder = write_release(tmp_path_factory.mktemp("cap_release"), cfg, tower_state(tower), embed_dim=96)
    decoder = ReferenceCaptionDecoder(**DEC, vision_width=cfg["width"]).eval()
    write_decoder_release(folder, decoder, decoder_release_config(**DEC, vision_width=cfg["width"]))
    dst = tmp_path_factory.mktemp("cap_converted")
    report = convert_release(folder, dst)
    return tower, decoder, folder, dst, report


def _copy(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    return bad


def test_converted_captioner_matches_reference_decoder_forward(captioner_release):
    tower, decoder, _, dst, report = captioner_release
    assert report.kind == "captioner"
    model = AutoModel.from_pretrained(dst).eval()
    assert isinstance(model, Ov2ForCaptioning)
    torch.manual_seed(7)
    pixels = torch.randn(2, 3, SIZE, SIZE)
    ids = torch.randint(3, 32000, (2, 9))
    with torch.no_grad():
        _, ref_tokens = tower(pixels)  # open_clip's patch tokens, before the final norm
        ref = decoder(ref_tokens, ids)
        ours = model(pixel_values=pixels, input_ids=ids).logits
    diff = (ours - ref).abs().max().item()
    print(f"captioner (tiny encoder + 2-layer decoder): logits max abs diff {diff:.3g} (logit scale {ref.abs().max().item():.3g})")
    assert ours.shape == ref.shape == (2, 9, 32000)
    assert diff <= 1e-4 * ref.abs().max().item()


def test_greedy_generation_matches_reference_greedy_within_the_tokenizer(captioner_release):
    tower, decoder, _, dst, _ = captioner_release
    model = Ov2ForCaptioning.from_pretrained(dst).eval()
    assert model.config.decoder_config.tokenizer_vocab_size == len(build_caption_tokenizer()) == 30522
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model.generate(pixels, max_new_tokens=6)[0].tolist()
        _, tokens = tower(pixels)
    expected = decoder.greedy(tokens, 6, id_limit=30522)
    assert ours[: len(expected)] == expected
    assert max(ours) < 30522


def test_captioner_round_trip_is_bit_identical(captioner_release, tmp_path):
    _, decoder, folder, dst, _ = captioner_release
    export_release(dst, tmp_path / "export")
    exported = load_file(tmp_path / "export" / "caption_decoder.safetensors")
    original = load_file(folder / "caption_decoder.safetensors")
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    for name in ("open_clip_config.json", "text_decoder_config.json"):
        assert (tmp_path / "export" / name).read_bytes() == (folder / name).read_bytes()
    convert_release(tmp_path / "export", tmp_path / "back")
    a = Ov2ForCaptioning.from_pretrained(dst).state_dict()
    b = Ov2ForCaptioning.from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ov2_caption_runs_on_converted_release(captioner_release, tmp_path, capsys):
    from ov2_plugin.cli import main

    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    *_, dst, _ = captioner_release
    image = tmp_path / "astronaut.jpg"  # a real photo
    Image.fromarray(skimage_data.astronaut()).save(image, quality=90)
    argv = ["caption", str(image), "--model", str(dst), "--max_new_tokens", "6", "--num_beams", "2", "--no_repeat_ngram_size", "1"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{image}\t")
    model = Ov2ForCaptioning.from_pretrained(dst).eval()
    pixels = AutoImageProcessor.from_pretrained(dst)(Image.open(image), return_tensors="pt")["pixel_values"]
    ids = model.generate(pixels, max_new_tokens=6, num_beams=2, no_repeat_ngram_size=1)
    assert len(set(ids[0].tolist()) - {0}) == len([i for i in ids[0].tolist() if i != 0])  # no id twice
    assert line == f"{image}\t{build_caption_tokenizer().batch_decode(ids, skip_special_tokens=True)[0]}"


def test_converted_encoder_is_a_llava_vision_tower(captioner_release, tmp_path):
    """The encoder of a converted release drops into HF LLaVA through ``LlavaConfig(vision_config=...)``."""
    *_, dst, _ = captioner_release
    vision = Ov2ForCaptioning.from_pretrained(dst).vision_model.eval()
    vision.save_pretrained(tmp_path / "vision")
    vision_config = AutoConfig.from_pretrained(tmp_path / "vision")
    text_config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=2, vocab_size=300)
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config, image_token_id=299,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    llava = LlavaForConditionalGeneration(config).eval()
    tower = llava.model.vision_tower
    assert isinstance(tower, Ov2VisionModel)
    tower.load_state_dict(AutoModel.from_pretrained(tmp_path / "vision").state_dict())
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        features = llava.model.get_image_features(pixel_values=pixels)
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        features = features[0] if isinstance(features, (list, tuple)) else features
        expected = llava.model.multi_modal_projector(vision(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
    assert torch.allclose(features.reshape(expected.shape), expected, atol=1e-6)


# ---------------------------------------------------------------- bad input: one line naming the file and field


def test_decoder_key_mismatch_is_listed(captioner_release, tmp_path):
    _, decoder, folder, _, _ = captioner_release
    from safetensors.torch import save_file

    bad = _copy(folder, tmp_path)
    state = {k: v for k, v in decoder.state_dict().items() if k != "ln_final.bias"}
    state["lm_head.bias"] = torch.zeros(3)
    save_file(state, bad / "caption_decoder.safetensors")
    with pytest.raises(ValueError, match=r"Missing keys: ln_final\.bias\. Unexpected keys: lm_head\.bias\."):
        convert_release(bad, tmp_path / "out")


@pytest.mark.parametrize("missing", ["text_decoder_config.json", "caption_decoder.safetensors"])
def test_half_a_decoder_is_refused_naming_the_missing_file(captioner_release, tmp_path, missing):
    folder = captioner_release[2]
    bad = _copy(folder, tmp_path)
    (bad / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"but no {missing}; the caption decoder needs both"):
        convert_release(bad, tmp_path / "out")


def test_weights_without_open_clip_config_name_the_missing_file(captioner_release, tmp_path):
    bad = _copy(captioner_release[2], tmp_path)
    (bad / "open_clip_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no open_clip_config.json .*incomplete"):
        convert_release(bad, tmp_path / "out")


def test_decoder_config_missing_a_field_names_file_and_field(captioner_release, tmp_path):
    bad = _copy(captioner_release[2], tmp_path)
    cfg = json.loads((bad / "text_decoder_config.json").read_text())
    del cfg["num_heads"]
    (bad / "text_decoder_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"^text_decoder_config\.json lacks the field\(s\) num_heads;"):
        convert_release(bad, tmp_path / "out")


def test_unknown_decoder_config_field_is_reported_not_fatal(captioner_release, tmp_path):
    bad = _copy(captioner_release[2], tmp_path)
    cfg = json.loads((bad / "text_decoder_config.json").read_text())
    (bad / "text_decoder_config.json").write_text(json.dumps({**cfg, "rope_theta": 10000}))
    report = convert_release(bad, tmp_path / "out")
    assert any("unknown field(s) rope_theta" in note for note in report.notes)


def test_decoder_for_another_encoder_width_is_refused(captioner_release, tmp_path):
    bad = _copy(captioner_release[2], tmp_path)
    cfg = json.loads((bad / "text_decoder_config.json").read_text())
    (bad / "text_decoder_config.json").write_text(json.dumps({**cfg, "vision_width": 1280}))
    with pytest.raises(ValueError, match=r"text_decoder_config\.json: vision_width 1280 does not match the encoder's width 192"):
        convert_release(bad, tmp_path / "out")


def test_decoder_shape_mismatch_names_the_config_field(captioner_release, tmp_path):
    bad = _copy(captioner_release[2], tmp_path)
    cfg = json.loads((bad / "text_decoder_config.json").read_text())
    (bad / "text_decoder_config.json").write_text(json.dumps({**cfg, "vocab_size": 30522}))
    with pytest.raises(ValueError, match=r"embed_tokens\.weight: checkpoint \(32000, 96\) vs config \(30522, 96\).*vocab_size"):
        convert_release(bad, tmp_path / "out")
