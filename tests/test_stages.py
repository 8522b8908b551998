"""Resolution stages from a recipe: 32 px then 64 px on the tiny preset, the second from the first's weights."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ov2_plugin.modeling_captioner import Ov2ForCaptioning
from ov2_plugin.pretrain import ModelArguments, main, weights_fingerprint
from ov2_plugin.recipes import builtin_recipes, load_recipe, read_recipe

RECIPE = """
model: {preset: tiny}
data: {data: scenes, train_samples: 64, eval_samples: 8}
train: {learning_rate: 2.0e-3, logging_steps: 1, save_steps: 100}
stages:
  - {name: low, image_size: 32, samples: 16, per_device_train_batch_size: 8}
  - {name: high, image_size: 64, samples: 8, per_device_train_batch_size: 4, learning_rate: 1.0e-3}
"""

FLAGS = ["--use_cpu", "true", "--dataloader_num_workers", "0", "--seed", "0", "--report_to", "none"]


def test_two_stage_recipe_runs_end_to_end_and_stage_two_starts_from_stage_one(tmp_path):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    main(["--recipe", str(recipe), "--output_dir", str(out), *FLAGS])
    report = json.loads((out / "report.json").read_text())
    low, high = report["stages"]
    assert (low["image_size"], low["steps"], high["image_size"], high["steps"]) == (32, 2, 64, 2)
    stage1 = Ov2ForCaptioning.from_pretrained(out / "stage1-low")
    assert high["start_weights"] == weights_fingerprint(stage1)  # no re-init, no weight surgery
    final = Ov2ForCaptioning.from_pretrained(out)
    assert final.config.vision_config.image_size == 64
    assert weights_fingerprint(final) not in (high["start_weights"], low["start_weights"])  # stage 2 trained
    assert load_file(out / "model.safetensors").keys() == load_file(out / "stage1-low" / "model.safetensors").keys()
    assert len(report["loss_history"]) == 4 and "token_accuracy" in report

    # A rerun with resume skips finished stages instead of training them again.
    main(["--recipe", str(recipe), "--output_dir", str(out), "--resume_from_checkpoint", "latest", *FLAGS])
    again = json.loads((out / "report.json").read_text())
    assert [s.get("skipped_as_done") for s in again["stages"]] == [True, True]


@pytest.mark.parametrize("name", builtin_recipes())
def test_builtin_recipes_parse_into_stages(name):
    assert "stages" in read_recipe(name)
    from ov2_plugin.pretrain import DataArguments, PretrainArguments

    model, data, train, stages = load_recipe(name, ModelArguments(), DataArguments(), PretrainArguments(output_dir="x"))
    assert stages and all(s.name for s in stages)
    if len(stages) > 1:  # resolution stages: sized by samples, low resolution first
        assert all(s.image_size for s in stages) and all(s.samples for s in stages)
        assert stages[0].image_size < stages[-1].image_size


def test_recipe_errors_name_the_problem(tmp_path):
    from ov2_plugin.pretrain import DataArguments, PretrainArguments

    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {image_size: 32, batch: 8}\n")
    with pytest.raises(ValueError, match="unknown keys \\['batch'\\]"):
        load_recipe(str(bad), ModelArguments(), DataArguments(), PretrainArguments(output_dir="x"))
    with pytest.raises(FileNotFoundError, match="smoke"):
        load_recipe("no-such-recipe", ModelArguments(), DataArguments(), PretrainArguments(output_dir="x"))


def test_command_line_flags_win_over_the_recipe_even_when_they_equal_the_default():
    from ov2_plugin.pretrain import PretrainArguments, explicit_flags, parse_args

    default_lr = PretrainArguments(output_dir="x").learning_rate
    argv = ["--recipe", "quickstart", "--output_dir", "x", "--learning_rate", str(default_lr), "--keep_ratio=0.35"]
    assert {"learning_rate", "keep_ratio"} <= explicit_flags(argv)  # both the "--a b" and "--a=b" forms
    model, data, train = parse_args(argv)
    _, _, given, _ = load_recipe("quickstart", model, data, train, explicit_flags(argv))
    assert given.learning_rate == default_lr
    _, _, from_recipe, _ = load_recipe("quickstart", model, data, train)  # Python API: only non-defaults win
    assert from_recipe.learning_rate == read_recipe("quickstart")["train"]["learning_rate"] != default_lr
