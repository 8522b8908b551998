"""Linear probes of a tower on the built-in scenes: targets, the ridge fit, and the command."""

import json

import torch

from ov2_plugin.data.scenes import ObjectGroup, Scene
from ov2_plugin.evaluation.scene_probe import main, ridge_probe, scene_targets


def test_targets_name_what_each_question_asks():
    scene = Scene((ObjectGroup("circle", "red", (3,)), ObjectGroup("square", "blue", (1, 7))), word="cat", word_place="top")
    t = scene_targets(scene)
    assert t["word"] == 1  # "cat" is the first word; 0 is "no word"
    assert (t["presence/circle"], t["presence/square"], t["presence/triangle"]) == (1, 1, 0)
    assert (t["count/circle"], t["count/square"], t["count/diamond"]) == (1, 2, 0)
    assert t["colour/circle"] == 1 and t["colour/square"] == 3  # red, blue in COLOURS order, after "none"
    assert t["position/circle"] == 1  # cell 3 is the left column
    assert t["position/square"] == 0  # two squares: the position question is not asked


def test_ridge_probe_reads_a_linear_code_and_not_noise():
    torch.manual_seed(0)
    n, width = 400, 64
    labels = {"word": torch.randint(0, 13, (n,)), "count/circle": torch.randint(1, 4, (n,))}
    code = torch.randn(13, width)
    features = code[labels["word"]] + 0.1 * torch.randn(n, width)
    train, test = slice(0, 300), slice(300, n)
    split = lambda y, s: {k: v[s] for k, v in y.items()}  # noqa: E731
    acc = ridge_probe(features[train], split(labels, train), features[test], split(labels, test))
    assert acc["word"] > 0.95  # the word is written linearly into the features
    assert acc["count/circle"] < 0.6  # the count is not in them at all: chance is 1/3


def test_probe_command_writes_tables_for_each_tower(tmp_path):
    from ov2_plugin.image_processing import make_image_processor
    from ov2_plugin.modeling_vision import Ov2VisionConfig, Ov2VisionModel

    config = Ov2VisionConfig.from_preset("tiny", image_size=32)
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)  # two different towers
        Ov2VisionModel(config).save_pretrained(tmp_path / name)
        make_image_processor(config).save_pretrained(tmp_path / name)
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--train_scenes", "60", "--test_scenes", "30",
          "--output_dir", str(tmp_path / "probe")])
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert set(saved["towers"]) == {str(tmp_path / "a"), str(tmp_path / "b")}
    for views in saved["towers"].values():
        assert all(0.0 <= acc <= 1.0 for view in views.values() for acc in view.values())
    assert "| colour |" in (tmp_path / "probe" / "probe.md").read_text()
