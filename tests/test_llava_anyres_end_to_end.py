"""The anyres end-to-end run shrunk to a smoke test (the mechanics, not the numbers), and its built-in scenes."""

import json

from ov2_plugin.data.aspect_scenes import (
    ASPECTS,
    BIG_RADIUS,
    QUESTION_TYPES,
    SMALL_RADIUS,
    dialogue_records,
    make_aspect_scene,
)
from ov2_plugin.experiments.llava_anyres_end_to_end import VARIANTS, main


def test_quick_run_writes_every_variant_and_anyres_reads_more_image_tokens(tmp_path):
    results = main(["--quick", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["anyres"] == results["anyres"]
    for name, (arch, _, _) in VARIANTS.items():
        assert saved[name]["arch"] == arch
        assert set(saved[name]["per_type"]) == set(QUESTION_TYPES)
        assert all(0.0 <= acc <= 1.0 for acc in saved[name]["per_type"].values())
        assert (tmp_path / name / "stage2" / "merged" / "config.json").is_file()
    single, anyres = saved["single"], saved["anyres"]
    assert anyres["image_tokens_mean"] > max(saved[n]["image_tokens_mean"] for n in VARIANTS if n != "anyres")
    assert len(set(single["image_tokens_per_aspect"].values())) == 1  # one square, whatever the shape
    assert anyres["image_tokens_per_aspect"]["4:1"] > anyres["image_tokens_per_aspect"]["1:1"]
    table = (tmp_path / "results.md").read_text()
    assert "| small_shape |" in table and "image tokens per image (mean)" in table
    assert (tmp_path / "child.log").is_file()  # the controls ran beside anyres, in their own process


def test_scenes_are_whole_tiles_with_the_small_shape_apart_and_every_question_in_one_dialogue():
    for index in range(20):
        scene = make_aspect_scene(0, index)
        width, height = ASPECTS[scene.aspect]
        assert scene.render(16).size == (16 * width, 16 * height)
        assert scene.big.colour != scene.small.colour
        gap = ((scene.big.x - scene.small.x) ** 2 + (scene.big.y - scene.small.y) ** 2) ** 0.5
        assert gap > BIG_RADIUS + SMALL_RADIUS
    assert [make_aspect_scene(0, i).aspect for i in range(len(ASPECTS))] == list(ASPECTS)
    assert make_aspect_scene(0, 3) == make_aspect_scene(0, 3) != make_aspect_scene(1, 3)
    record = next(dialogue_records(0, 1))
    turns = record["conversations"]
    assert len(turns) == 2 * len(QUESTION_TYPES) and turns[0]["value"].startswith("<image>\n")
    assert sum(t["value"].count("<image>") for t in turns) == 1
