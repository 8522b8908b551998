"""The evaluation adapters on a LoRA adapter folder of ``ov2 llava-train``, and ``ov2 eval`` when
lmms-eval fails inside (it logs the error and exits 0)."""

import json
import shutil

import pytest
import torch

from ov2_plugin.cli import main as ov2
from ov2_plugin.data.instructions import write_dataset
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.evaluation.runner import LlavaRunner, build_tiny_llava, check_model_dir, make_runner
from ov2_plugin.llava.train import main as train_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LLaVA and a LoRA run over it: the adapter folder, its merged model, the base."""
    root = tmp_path_factory.mktemp("eval-lora")
    base = build_tiny_llava(root / "base")
    data = write_dataset(root / "data", "instructions", seed=0, num_scenes=2, image_size=32)
    train_main(["--model_name_or_path", str(base), "--data_path", str(data), "--lora_enable", "true",
                "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--learning_rate", "5e-2",
                "--mm_projector_lr", "5e-2", "--max_steps", "2", "--per_device_train_batch_size", "4",
                "--merge_lora", "true", "--use_cpu", "true", "--seed", "0", "--output_dir", str(root / "lora")])
    return root


def test_adapter_folder_loads_through_its_base_as_the_merged_model(trained):
    adapter = trained / "lora"
    assert not (adapter / "config.json").exists() and (adapter / "adapter_config.json").is_file()
    assert check_model_dir(adapter) == adapter
    runner, merged = make_runner(adapter), make_runner(adapter / "merged")
    assert isinstance(runner, LlavaRunner)
    base = make_runner(trained / "base").model.state_dict()
    weights, reference = runner.model.state_dict(), merged.model.state_dict()
    assert weights.keys() == reference.keys()
    for name, weight in weights.items():
        torch.testing.assert_close(weight, reference[name], rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(weights[n], base[n]) for n in weights if "q_proj" in n)  # the adapter did apply
    images = [[make_scene(5, i).render(32)] for i in range(2)]
    questions = ["how many circles are there?", "what colour are the squares?"]
    assert runner.generate(questions, images, 4) == merged.generate(questions, images, 4)


def test_adapter_without_its_base_names_merge_lora(trained, tmp_path, capsys):
    moved = tmp_path / "adapter"
    shutil.copytree(trained / "lora", moved, ignore=shutil.ignore_patterns("merged"))
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(FileNotFoundError, match="LoRA adapter.*--merge_lora true"):
        check_model_dir(moved)
    shutil.copytree(trained / "lora" / "merged", moved / "merged")
    assert ov2(["eval", "--model", str(moved), "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ov2 eval: error:" in err[0] and f"pass '{moved / 'merged'}' instead" in err[0]
    assert not (tmp_path / "results").exists()


def test_lmms_eval_scores_the_adapter_folder(trained, tmp_path):
    out = tmp_path / "results"
    ov2(["eval", "--model", str(trained / "lora"), "--framework", "lmms_eval", "--tasks", "ov2_count",
         "--num_scenes", "4", "--limit", "3", "--batch_size", "2", "--device", "cpu", "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    assert "exact_match" in result["raw"]["lmms_eval"]["ov2_count"]


def test_failure_inside_lmms_eval_exits_non_zero(tmp_path, capfd):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava"}))  # passes the check, has no weights
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        ov2(["eval", "--model", str(model), "--framework", "lmms_eval", "--tasks", "ov2_count", "--num_scenes", "2",
             "--limit", "1", "--device", "cpu", "--out", str(out)])
    assert stop.value.code == 1
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ov2 eval: lmms-eval failed (exit 0, no results written; error: ") and "model.safetensors" in last
    assert not out.exists()
