"""The quickstart's wiring: its recipe, the report, the sample captions (a few steps only)."""

import json

from ov2_plugin.pretrain import ModelArguments, build_model, parse_config_overrides
from ov2_plugin.quickstart import main, quickstart_arguments
from ov2_plugin.recipes import load_recipe


def test_quickstart_recipe_builds_the_small_tiny_model_with_token_dropping():
    m, d, t = quickstart_arguments("out")
    m, d, t, stages = load_recipe(d.recipe, m, d, t)
    model = build_model(m)
    assert (model.config.vision_config.hidden_size, model.config.vision_config.num_hidden_layers) == (128, 4)
    assert model.config.decoder_config.hidden_size == 128
    assert model.config.keep_ratio == 0.35 and model.config.vision_config.image_size == 64
    assert t.max_steps == 3000 and t.weight_decay == 0.2 and d.data == "scenes" and len(stages) == 1
    assert t.learning_rate == 7e-4 and t.unmasked_tuning == 0.5


def test_command_line_steps_win_over_the_recipe():
    m, d, t = quickstart_arguments("out", max_steps=7, eval_samples=3)
    _, d, t, _ = load_recipe(d.recipe, m, d, t)
    assert t.max_steps == 7 and d.eval_samples == 3


def test_config_overrides_parse_and_reach_the_model():
    assert parse_config_overrides("hidden_size=128, decoder_hidden_size=64,hidden_act=gelu") == {
        "hidden_size": 128, "decoder_hidden_size": 64, "hidden_act": "gelu"}
    model = build_model(ModelArguments(config_overrides="num_hidden_layers=1,decoder_num_hidden_layers=1"))
    assert len(model.vision_model.layers) == 1 and len(model.decoder.layers) == 1


def test_quickstart_runs_and_reports(tmp_path, capsys):
    metrics = main(["--output_dir", str(tmp_path), "--max_steps", "3", "--eval_samples", "4"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert 0.0 <= report["token_accuracy"] <= 1.0 and report["num_scenes"] == 4
    assert metrics["attributes_all_right"] == report["attributes_all_right"]
    assert (tmp_path / "sample_0.png").is_file()
    assert "Sample captions" in capsys.readouterr().out


def test_bf16_only_where_the_cpu_has_bf16_matmul_instructions(monkeypatch):
    # oneDNN reports bf16 support on any AVX-512 CPU, where it is emulated and slower than fp32
    import torch

    from ov2_plugin.devices import bf16_is_fast, resolve_bf16

    for avx512_bf16, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert bf16_is_fast("cpu") is expected
        assert quickstart_arguments("out")[2].bf16 is (expected or torch.cuda.is_available())
    assert bf16_is_fast("cuda")
    assert resolve_bf16("auto", "cuda") and resolve_bf16(True, "cpu") and resolve_bf16("true", "cpu")
    assert not resolve_bf16("false", "cuda") and not resolve_bf16(False, "cuda")
