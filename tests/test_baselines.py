"""The baseline objectives: each computes the loss it claims, trains in `ov2 pretrain`, and saves an
encoder that `ov2 probe` and `ov2 llava-build` take as they take OpenVision 2's."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from ov2_plugin import Ov2Config, Ov2ForCaptioning, Ov2VisionModel
from ov2_plugin.baselines import OpenVisionModel, build_objective_model, load_objective_model
from ov2_plugin.baselines.losses import contrastive_loss

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32,
             decoder_hidden_size=64, decoder_num_attention_heads=2, decoder_intermediate_size=128,
             decoder_num_hidden_layers=1)
OVERRIDES = ",".join(f"{k}={v}" for k, v in SMALL.items() if k != "image_size")


@pytest.fixture
def batch():
    torch.manual_seed(0)
    ids = torch.tensor([[1, 5000, 6000, 2, 0], [1, 7000, 2, 0, 0], [1, 8000, 9000, 10000, 2], [1, 3000, 2, 0, 0]])
    mask = (ids != 0).long()
    return torch.randn(4, 3, 32, 32), ids, mask, ids.masked_fill(mask == 0, -100)


def _small(objective, **kwargs):
    torch.manual_seed(0)
    return build_objective_model(objective, Ov2Config.from_preset("tiny", **SMALL), **kwargs).train()


def test_contrastive_losses_match_their_definitions():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-3.0)
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = 10.0 * image @ text.t()
    infonce = -(logits.log_softmax(1).diag().mean() + logits.log_softmax(0).diag().mean()) / 2
    assert torch.allclose(contrastive_loss("softmax", image, text, scale), infonce, atol=1e-5)
    z = logits + bias
    pairwise = -(F.logsigmoid(z.diag()).sum() + F.logsigmoid(-z).sum() - F.logsigmoid(-z.diag()).sum()) / 5
    assert torch.allclose(contrastive_loss("sigmoid", image, text, scale, bias), pairwise, atol=1e-5)


@pytest.mark.parametrize("objective", ["openvision", "clip", "coca"])
def test_contrastive_part_changes_with_the_text_tower(objective, batch):
    model = _small(objective)
    first = model(*batch[:2], attention_mask=batch[2], labels=batch[3])
    towers = {"coca": model.coca.text if objective == "coca" else None}.get(objective) or model.text_encoder
    with torch.no_grad():
        for p in towers.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    second = model(*batch[:2], attention_mask=batch[2], labels=batch[3])
    assert not torch.allclose(first.contrastive_loss, second.contrastive_loss)
    assert torch.allclose(first.loss, first.contrastive_loss + (first.caption_loss if first.caption_loss is not None else 0))
    if objective == "openvision":  # the caption part does not read the text tower
        assert torch.allclose(first.caption_loss, second.caption_loss)


def test_openvision_caption_part_is_ov2s_loss_on_all_tokens(batch):
    model = _small("openvision")
    pixels, ids, mask, labels = batch
    out = model(pixels, ids, attention_mask=mask, labels=labels)
    plain = Ov2ForCaptioning(model.captioner.config)
    plain.load_state_dict(model.captioner.state_dict())
    assert plain.config.keep_ratio == 1.0  # no token dropping: the caption loss is deterministic
    assert torch.allclose(out.caption_loss, plain.train()(pixels, ids, mask, labels).loss, atol=1e-5)
    logits = model.captioner.decoder(model.encoder(pixels).last_hidden_state[:, 1:], ids)
    manual = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(out.caption_loss, manual, atol=1e-4)


def test_clip_has_no_caption_part_and_ov2_has_no_text_tower(batch):
    clip = _small("clip")
    assert clip(*batch[:2]).caption_loss is None
    assert not any("text" in n for n, _ in Ov2ForCaptioning(Ov2Config.from_preset("tiny", **SMALL)).named_modules())
    assert clip.config.contrastive_loss == "sigmoid" and _small("openvision").config.contrastive_loss == "softmax"


def test_two_captions_through_the_text_encoder_as_bench_needs(batch):
    pixels, ids, _, labels = batch
    model = _small("openvision", num_captions=2, text_length=77)
    out = model(pixel_values=pixels, input_ids=ids, labels=labels, text_ids=[ids[:, :3], ids])
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="2 caption"):
        model(pixel_values=pixels, input_ids=ids, labels=labels, text_ids=[ids])
    assert isinstance(OpenVisionModel, type)


def test_coca_exports_open_clips_tower_exactly(batch):
    model = _small("coca").eval()
    encoder = model.encoder.eval()
    with torch.no_grad():
        _, tokens = model.coca.visual(batch[0])
        ours = encoder(batch[0])
    assert torch.allclose(tokens, ours.last_hidden_state[:, 1:], atol=1e-5)
    assert torch.allclose(model.coca.visual.ln_post(tokens.mean(1)), ours.pooler_output, atol=1e-5)
    assert not model.coca.visual.positional_embedding.requires_grad


@pytest.mark.parametrize("objective", ["openvision", "clip", "coca"])
def test_pretrain_saves_an_encoder_probe_and_llava_build_accept(objective, tmp_path, parts):
    from ov2_plugin.evaluation.scene_probe import main as probe_main
    from ov2_plugin.llava.build import main as build_main
    from ov2_plugin.pretrain import main as pretrain_main

    out = tmp_path / objective
    report = pretrain_main(["--objective", objective, "--preset", "tiny", "--config_overrides", OVERRIDES,
                            "--image_size", "32", "--output_dir", str(out), "--max_steps", "2",
                            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--save_strategy", "no",
                            "--eval_samples", "0", "--dataloader_num_workers", "0", "--logging_steps", "1"])
    assert report["objective"] == objective
    assert json.loads((out / "config.json").read_text())["model_type"] == "openvision2_vision"
    assert isinstance(Ov2VisionModel.from_pretrained(out), Ov2VisionModel)
    whole = load_objective_model(out)
    assert whole.config.objective == objective
    assert torch.equal(whole.encoder.state_dict()["layers.0.mlp.fc1.weight"],
                       Ov2VisionModel.from_pretrained(out).state_dict()["layers.0.mlp.fc1.weight"])
    probe = probe_main([str(out), "--train_scenes", "20", "--test_scenes", "10"])
    assert set(probe["towers"][str(out)]["patch"]) >= {"word", "count", "colour"}
    build_main(["--vision_tower", str(out), "--language_model", str(parts / "lm"), "--output_dir", str(tmp_path / "llava")])
    assert (tmp_path / "llava" / "config.json").is_file()


def test_coca_has_no_uninitialised_weights_under_full_determinism():
    """open_clip's CoCa leaves its decoder's text_projection as torch.empty; under deterministic
    algorithms new memory is NaN, so an uninitialised tensor would show here."""
    torch.use_deterministic_algorithms(True)
    try:
        model = _small("coca")
    finally:
        torch.use_deterministic_algorithms(False)
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert bad == []


def test_coca_reloads_with_its_causal_masks(tmp_path, batch):
    """open_clip keeps CoCa's causal masks as non-persistent buffers; a reloaded model (built on the
    meta device, then filled from the file) must rebuild them, or its text embeddings are garbage."""
    model = _small("coca").eval()
    model.save_pretrained(tmp_path)
    loaded = load_objective_model(tmp_path).eval()
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_text(batch[1]), model.embed_text(batch[1]))
