"""The end-to-end LLaVA comparison, shrunk to a smoke test: the mechanics, not the numbers."""

import json

import pytest

from ov2_plugin.data.instructions import QUESTION_TYPES
from ov2_plugin.evaluation.scene_probe import ATTRIBUTES
from ov2_plugin.experiments.llava_end_to_end import main


def test_end_to_end_quick_runs_both_pipelines_and_writes_tables(tmp_path):
    results = main(["--quick", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pretrained"] == results["pretrained"]
    for name in ("pretrained", "random"):
        assert set(saved[name]["per_type"]) <= set(QUESTION_TYPES) and saved[name]["per_type"]
        assert all(0.0 <= acc <= 1.0 for acc in saved[name]["per_type"].values())
        assert (tmp_path / name / "stage2" / "adapter_model.safetensors").is_file()
        assert (tmp_path / name / "stage1" / "projector.safetensors").is_file()
        probe = saved[name]["probe"]  # each tower was also probed without the language model
        assert set(probe["patch"]) == set(probe["pooled"]) == set(probe["majority"]) == set(ATTRIBUTES)
    table = (tmp_path / "results.md").read_text()
    assert "| **all** |" in table and "| colour |" in table
    assert (tmp_path / "random.log").is_file()  # the control pipeline ran beside this one, in its own process


def test_output_dir_holds_one_run(tmp_path):
    """Shared inputs are reused from the folder, so other settings or foreign files must stop the run."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        main(["--quick", "--output_dir", str(out)])
    (out / "eval.json").unlink()
    main(["--quick", "--output_dir", str(out), "--only", "random"])
    assert (out / "random" / "eval.json").is_file() and not (out / "results.json").exists()
    with pytest.raises(ValueError, match="other settings"):
        main(["--quick", "--output_dir", str(out), "--set", "seed=1"])


def test_seed_redraws_the_language_model_and_the_random_tower(tmp_path):
    from safetensors.torch import load_file

    from ov2_plugin.experiments.llava_end_to_end import QUICK, random_tower
    from ov2_plugin.experiments.llava_pipeline import make_language_model
    from ov2_plugin.image_processing import make_image_processor
    from ov2_plugin.modeling_vision import Ov2VisionConfig, Ov2VisionModel

    tower, config = tmp_path / "tower", Ov2VisionConfig.from_preset("tiny", image_size=32)
    Ov2VisionModel(config).save_pretrained(tower)
    make_image_processor(config).save_pretrained(tower)

    def weights(seed: int, again: str = "") -> tuple[dict, dict]:
        out = tmp_path / f"{seed}{again}"
        make_language_model(out / "lm", {**QUICK, "seed": seed})
        random_tower(tower, out / "tower", seed)
        return load_file(out / "lm" / "model.safetensors"), load_file(out / "tower" / "model.safetensors")

    first, same, other = weights(0), weights(0, "again"), weights(1)
    for part in (0, 1):
        assert all(first[part][k].equal(same[part][k]) for k in first[part])
        assert not all(first[part][k].equal(other[part][k]) for k in first[part])
