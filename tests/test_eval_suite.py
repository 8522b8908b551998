"""The offline benchmark suite: deterministic files, and questions that mean what they say."""

import filecmp
from collections import Counter

from ov2_plugin.data.scenes import COLOURS, SHAPES
from ov2_plugin.evaluation import metrics
from ov2_plugin.evaluation.suite import TASKS, build_items, write_suite


def _present(scene):
    return {(g.colour, g.shape) for g in scene.groups}


def _asked(question):  # "is there a red circle?" -> ("red", "circle")
    colour, shape = question.removeprefix("is there a ").rstrip("?").split()
    return colour, shape


def test_same_seed_writes_identical_files(tmp_path):
    a = write_suite(tmp_path / "a", seed=5, num_scenes=4)
    b = write_suite(tmp_path / "b", seed=5, num_scenes=4)
    assert a == b
    for sub in ("data", "vlmeval"):
        names = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert len(names) == len(TASKS)
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a" / sub, tmp_path / "b" / sub, names, shallow=False)
        assert mismatch == [] and errors == [] and len(match) == len(TASKS)
    for sub in ("lmms_eval", "lm_eval"):
        for yaml in (tmp_path / "a" / sub).glob("*.yaml"):
            other = (tmp_path / "b" / sub / yaml.name).read_text()
            assert yaml.read_text().replace(str(tmp_path / "a"), "ROOT") == other.replace(str(tmp_path / "b"), "ROOT")
    c = write_suite(tmp_path / "c", seed=6, num_scenes=4)
    assert not filecmp.cmp(tmp_path / "a/data/ov2_mme.parquet", tmp_path / "c/data/ov2_mme.parquet", shallow=False)
    assert c["seed"] == 6


def test_pope_negatives_are_absent_and_follow_their_strategy():
    items = build_items(seed=3, num_scenes=30)
    for strategy in ("random", "popular", "adversarial"):
        task = items[f"ov2_pope_{strategy}"]
        assert Counter(i.answer for i in task) == {"yes": 30, "no": 30}
        for item in task:
            asked = _asked(item.question)
            assert (asked in _present(item.scene)) == (item.answer == "yes")
            if strategy == "adversarial" and item.answer == "no":
                assert any(asked[0] == c or asked[1] == s for c, s in _present(item.scene))
    # popular negatives are concentrated on the suite's most frequent objects; random ones are spread
    popular = Counter(_asked(i.question) for i in items["ov2_pope_popular"] if i.answer == "no")
    random_ = Counter(_asked(i.question) for i in items["ov2_pope_random"] if i.answer == "no")
    assert len(popular) < len(random_)
    assert all(c in COLOURS and s in SHAPES for c, s in random_)


def test_mme_pairs_have_one_yes_and_one_no_per_image():
    items = build_items(seed=3, num_scenes=12)["ov2_mme"]
    pairs = {}
    for item in items:
        pairs.setdefault(item.question_id, []).append(item.answer)
    assert all(sorted(a) == ["no", "yes"] for a in pairs.values())
    assert {i.category for i in items} <= set(metrics.MME_PERCEPTION)
    # answering every question "yes" gets each pair half right: acc 50 + acc+ 0 per category
    scores = metrics.mme_scores([{**vars(i), "prediction": "yes"} for i in items])
    assert scores["perception"] == 50.0 * len({i.category for i in items})


def test_open_answers_have_ten_annotators_that_normalise_to_the_truth():
    items = build_items(seed=3, num_scenes=20)
    for task in ("ov2_text", "ov2_count", "ov2_colour", "ov2_position"):
        assert items[task], task
        for item in items[task]:
            assert len(item.answers) == 10
            assert metrics.vqa_accuracy(item.answer, item.answers) >= 0.6, (item.answer, item.answers)
    # count answers mix number words and digits: only the normalisation makes them agree
    assert any("2" in i.answers and "two" in i.answers for i in items["ov2_count"])


def test_choice_answer_names_the_present_shape():
    for item in build_items(seed=3, num_scenes=20)["ov2_choice"]:
        letter = "ABC".index(item.answer)
        assert item.choices[letter] in {g.shape for g in item.scene.groups}
        assert sum(c in {g.shape for g in item.scene.groups} for c in item.choices) == 1
