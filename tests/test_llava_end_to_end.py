"""The end-to-end LLaVA comparison, shrunk to a smoke test: the mechanics, not the numbers."""

import json

from ov2_plugin.data.instructions import QUESTION_TYPES
from ov2_plugin.llava.end_to_end import main


def test_end_to_end_quick_runs_both_pipelines_and_writes_tables(tmp_path):
    results = main(["--quick", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pretrained"] == results["pretrained"]
    for name in ("pretrained", "random"):
        assert set(saved[name]["per_type"]) <= set(QUESTION_TYPES) and saved[name]["per_type"]
        assert all(0.0 <= acc <= 1.0 for acc in saved[name]["per_type"].values())
        assert (tmp_path / name / "stage2" / "adapter_model.safetensors").is_file()
        assert (tmp_path / name / "stage1" / "projector.safetensors").is_file()
    assert "| **all** |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "random.log").is_file()  # the control pipeline ran beside this one, in its own process
