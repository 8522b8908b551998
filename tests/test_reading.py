"""The reading task: thousands of words, a held-out split never in training captions, and questions."""

import re

import torch

from ov2_plugin.data.captions import SceneCaptions
from ov2_plugin.data.instructions import caption_records, instruction_records, reading_vocabulary
from ov2_plugin.data.reading import TEMPLATE_WORDS, make_reading_scene, reading_words, scene_of
from ov2_plugin.data.scenes import make_scene


def test_vocabulary_is_large_and_split_once():
    words = reading_words()
    assert len(words["train"]) > 5000 and len(words["held_out"]) > 500
    assert not set(words["train"]) & set(words["held_out"])
    assert not (set(words["train"]) | set(words["held_out"])) & TEMPLATE_WORDS


def test_held_out_words_never_appear_in_training_captions():
    held_out = set(reading_words()["held_out"])
    seen = set()
    for kind in ("reading", "mixed", "shapes"):
        data = SceneCaptions(600, 32, transform=lambda im: torch.zeros(1), kind=kind)
        for i in range(len(data)):
            seen |= set(re.findall(r"[a-z]+", data[i]["caption"]))
    seen |= {w for r in caption_records(0, 300, scenes="mixed") for w in re.findall(r"[a-z]+", r["conversations"][1]["value"])}
    assert seen and not seen & held_out
    # ... and the held-out split does draw them, many different ones
    drawn = {w for i in range(300) for w in make_reading_scene(1, i, "held_out").words}
    assert drawn <= held_out and len(drawn) > 200


def test_scenes_vary_and_repeat_exactly():
    a, b = make_reading_scene(0, 5), make_reading_scene(0, 5)
    assert a == b and list(a.render(48).getdata()) == list(b.render(48).getdata())
    scenes = [make_reading_scene(0, i) for i in range(200)]
    assert {len(s.words) for s in scenes} == {1, 2, 3}
    assert len({s.colour for s in scenes}) >= 6 and len({s.background for s in scenes}) > 150
    assert all(s.clutter for s in scenes)
    assert all(w.upper() and f'"{w}"' in s.caption for s in scenes for w in s.words)


def test_existing_scenes_are_unchanged_and_mixed_interleaves():
    assert scene_of("shapes", 3, 7) == make_scene(3, 7)
    assert scene_of("mixed", 3, 8) == make_scene(3, 8)
    assert scene_of("mixed", 3, 9) == make_reading_scene(3, 9)
    shapes = list(instruction_records(0, 3))
    assert all("scene_kind" not in r and r["image"].startswith("scenes/0_") for r in shapes)


def test_reading_question_asks_the_first_letter_with_a_known_answer():
    records = [r for r in instruction_records(2, 20, scenes="reading", split="held_out")]
    assert {r["question_type"] for r in records} == {"letter"}
    vocab = set(reading_vocabulary())
    for r in records:
        scene = make_reading_scene(2, int(r["id"].split("-")[1]), "held_out")
        assert r["conversations"][1]["value"] == scene.words[0][0] and r["conversations"][1]["value"] in vocab
        assert set(re.findall(r"[a-z]+", r["conversations"][0]["value"])) <= vocab


def test_a_random_tower_reads_at_chance_through_ov2_probe(tmp_path):
    from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
    from ov2_plugin.cli import main as cli

    config = Ov2VisionConfig.from_preset("tiny", num_hidden_layers=2)  # 64 px, as the recipes read
    torch.manual_seed(0)
    Ov2VisionModel(config).save_pretrained(tmp_path / "random")
    make_image_processor(config).save_pretrained(tmp_path / "random")
    assert cli(["probe", str(tmp_path / "random"), "--task", "reading", "--train_scenes", "300",
                "--test_scenes", "200", "--output_dir", str(tmp_path / "probe")]) == 0
    import json

    result = json.loads((tmp_path / "probe" / "probe_reading.json").read_text())
    for view in ("patch", "pooled"):
        for split in ("reading_seen", "reading_unseen"):
            assert result["towers"][str(tmp_path / "random")][view][split] < result["majority"][split] + 0.06
