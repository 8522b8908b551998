"""Vision + caption-decoder release -> our captioner: parity with a reference forward written
from the released decoder's description, round trip, and use by the rest of the stack
(``AutoModel``, ``LlavaConfig(vision_config=...)``, ``ov2 caption``)."""

from __future__ import annotations

import json

import pytest
import torch
from convert_fixtures import (
    build_open_clip_tower,
    random_decoder_release,
    reference_decoder_logits,
    release_vision_cfg,
    tower_state,
    write_release,
)
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from ov2_plugin import Ov2ForCaptioning, Ov2VisionModel
from ov2_plugin.convert import convert_release, export_release
from ov2_plugin.data.scenes import make_scene

SIZE = 32
DEC = dict(width=96, layers=2, heads=3, mlp=384, vocab=30522)  # the real tokenizer's vocabulary, for ov2 caption


@pytest.fixture(scope="module")
def captioner_release(tmp_path_factory):
    cfg = release_vision_cfg("tiny", SIZE)
    tower = build_open_clip_tower(cfg, embed_dim=96)
    folder = write_release(tmp_path_factory.mktemp("cap_release"), cfg, tower_state(tower), embed_dim=96)
    dec_state, dec_cfg = random_decoder_release(**DEC, image_width=cfg["width"])
    save_file(dec_state, folder / "caption_decoder.safetensors")
    (folder / "text_decoder_config.json").write_text(json.dumps(dec_cfg))
    dst = tmp_path_factory.mktemp("cap_converted")
    report = convert_release(folder, dst)
    return tower, dec_state, dec_cfg, folder, dst, report


def test_converted_captioner_matches_reference_decoder_forward(captioner_release):
    tower, dec_state, dec_cfg, _, dst, report = captioner_release
    assert report.kind == "captioner"
    model = AutoModel.from_pretrained(dst).eval()
    assert isinstance(model, Ov2ForCaptioning)
    torch.manual_seed(7)
    pixels = torch.randn(2, 3, SIZE, SIZE)
    ids = torch.randint(3, 30522, (2, 9))
    with torch.no_grad():
        _, ref_tokens = tower(pixels)  # open_clip's patch tokens, before the final norm
        ref = reference_decoder_logits(ref_tokens, ids, dec_state, dec_cfg)
        ours = model(pixel_values=pixels, input_ids=ids).logits
    diff = (ours - ref).abs().max().item()
    print(f"captioner (tiny encoder + 2-layer decoder): logits max abs diff {diff:.3g} (logit scale {ref.abs().max().item():.3g})")
    assert ours.shape == ref.shape == (2, 9, 30522)
    assert diff <= 1e-5


def test_greedy_generation_matches_reference_greedy_decode(captioner_release):
    tower, dec_state, dec_cfg, _, dst, _ = captioner_release
    model = Ov2ForCaptioning.from_pretrained(dst).eval()
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model.generate(pixels, max_new_tokens=6)[0].tolist()
        _, tokens = tower(pixels)
        ids = torch.tensor([[1]])  # BOS
        for _ in range(6):
            nxt = reference_decoder_logits(tokens, ids, dec_state, dec_cfg)[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if nxt.item() == 2:
                break
    assert ours[: ids.shape[1] - 1] == ids[0, 1:].tolist()


def test_captioner_round_trip_is_bit_identical(captioner_release, tmp_path):
    _, dec_state, _, _, dst, _ = captioner_release
    export_release(dst, tmp_path / "export")
    exported = load_file(tmp_path / "export" / "caption_decoder.safetensors")
    assert exported.keys() == dec_state.keys() and all(torch.equal(exported[k], dec_state[k]) for k in dec_state)
    convert_release(tmp_path / "export", tmp_path / "back")
    a = Ov2ForCaptioning.from_pretrained(dst).state_dict()
    b = Ov2ForCaptioning.from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ov2_caption_runs_on_converted_release(captioner_release, tmp_path, capsys):
    from ov2_plugin.cli import main
    from ov2_plugin.tokenization import build_caption_tokenizer

    *_, dst, _ = captioner_release
    image = tmp_path / "scene.png"
    make_scene(0, 1).render(64).save(image)
    assert main(["caption", str(image), "--model", str(dst), "--max_new_tokens", "5"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{image}\t")
    model = Ov2ForCaptioning.from_pretrained(dst).eval()
    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(dst)(make_scene(0, 1).render(64), return_tensors="pt")["pixel_values"]
    expected = build_caption_tokenizer().batch_decode(model.generate(pixels, max_new_tokens=5), skip_special_tokens=True)[0]
    assert line == f"{image}\t{expected}"


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


def test_decoder_key_mismatch_is_listed(captioner_release, tmp_path):
    _, dec_state, dec_cfg, folder, _, _ = captioner_release
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    state = {k: v for k, v in dec_state.items() if k != "ln_final.bias"}
    state["lm_head.bias"] = torch.zeros(3)
    save_file(state, bad / "caption_decoder.safetensors")
    with pytest.raises(ValueError, match=r"Missing keys: ln_final\.bias\. Unexpected keys: lm_head\.bias\."):
        convert_release(bad, tmp_path / "out")


def test_decoder_without_its_config_is_refused(captioner_release, tmp_path):
    *_, folder, _, _ = captioner_release
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "text_decoder_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no text_decoder_config.json"):
        convert_release(bad, tmp_path / "out")


def test_decoder_shape_mismatch_names_the_config_field(captioner_release, tmp_path):
    *_, folder, _, _ = captioner_release
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    cfg = json.loads((bad / "text_decoder_config.json").read_text())
    (bad / "text_decoder_config.json").write_text(json.dumps({**cfg, "vocab_size": 32000}))
    with pytest.raises(ValueError, match=r"embed_tokens\.weight: checkpoint \(30522, 96\) vs config \(32000, 96\).*vocab_size"):
        convert_release(bad, tmp_path / "out")
