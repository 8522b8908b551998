"""The input-pipeline benchmark writes one row per (source, target, decode) with the fields the README's table uses."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("skimage")
pytest.importorskip("webdataset")


def test_input_pipeline_bench_writes_its_rows(tmp_path, monkeypatch):
    from bench import input_pipeline

    monkeypatch.setattr(input_pipeline, "GPU_RESULTS", {})  # the FLOP count of L/14 is the slow part; not needed here
    input_pipeline.main(["--source-size", "256", "--target-size", "32", "--images", "12", "--repeats", "1",
                         "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "input_pipeline.json").read_text())["rows"]
    assert [(r["source_px"], r["target_px"], r["decode"]) for r in rows] == [(256, 32, "full"), (256, 32, "reduced")]
    full, reduced = rows
    assert full["mean_abs_diff_vs_full"] == 0 and 0 < reduced["mean_abs_diff_vs_full"] < 0.01
    assert all(r["images_per_cpu_s"] > 0 and r["decode_crop_only_per_cpu_s"] > 0 for r in rows)
