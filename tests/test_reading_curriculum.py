"""Reading curricula: today's task unchanged, easier ones as parameters, held-out words never trained on,
and the ``cpu-reading`` comparison at equal counted FLOPs."""

import hashlib
import json
import re

import pytest
import torch

from ov2_plugin.data.captions import SceneCaptions
from ov2_plugin.data.instructions import caption_records, instruction_records
from ov2_plugin.data.reading import (
    CURRICULA,
    SCENE_KINDS,
    ReadingCurriculum,
    curriculum_of,
    curriculum_words,
    make_reading_scene,
    mixed_kind,
    reading_kind,
    reading_words,
    scene_of,
)
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.experiments.recipes import load_comparison_recipe

CPU = CURRICULA["cpu"]

# sha256 of the snippet below as run on the code BEFORE reading curricula existed (commit 5e82fae, the
# generator of issue 28's starting point): captions and rendered bytes of reading scenes of both splits,
# of mixed scenes, and the reading questions' and mixed captions' records. Hard-coded, not recomputed.
TODAYS_SCENES_SHA256 = "46460e67296281c813f7800e7cc66ff3de6a3132ed0dd6ac2d5719f0f4e2ed63"


def test_todays_reading_scenes_are_unchanged_bit_for_bit():
    h = hashlib.sha256()
    for split in ("train", "held_out"):
        for i in range(40):
            s = make_reading_scene(0, i, split)
            h.update(s.caption.encode())
            h.update(s.render(64).tobytes())
    for i in range(20):
        s = scene_of("mixed", 3, i)
        h.update(s.caption.encode())
        h.update(s.render(48).tobytes())
    records = [*instruction_records(2, 30, scenes="reading", split="held_out"), *caption_records(0, 30, scenes="mixed")]
    h.update(json.dumps(records, sort_keys=True).encode())
    assert h.hexdigest() == TODAYS_SCENES_SHA256
    assert curriculum_of("mixed") == curriculum_of("reading") == curriculum_of("shapes") == ReadingCurriculum()
    assert curriculum_words(ReadingCurriculum()) == reading_words()  # the default vocabulary is all the words


def test_kinds_pair_each_curriculum_with_and_without_shapes():
    assert (reading_kind("mixed"), mixed_kind("reading"), reading_kind("shapes")) == ("reading", "mixed", "reading")
    assert (reading_kind("mixed-cpu"), mixed_kind("reading-cpu")) == ("reading-cpu", "mixed-cpu")
    assert scene_of("mixed-cpu", 4, 6) == make_scene(4, 6)
    assert scene_of("mixed-cpu", 4, 7) == scene_of("reading-cpu", 4, 7) == make_reading_scene(4, 7, "train", CPU)
    assert {"shapes", "reading", "mixed", "reading-cpu", "mixed-cpu"} <= set(SCENE_KINDS)
    with pytest.raises(ValueError, match="mixed-cpu"):
        scene_of("mixed-cpu-x", 0, 1)


def test_curriculum_vocabulary_is_a_fixed_subset_of_the_training_words():
    words, every = curriculum_words(CPU), reading_words()
    assert len(words["train"]) == CPU.vocab_size == 256 and list(words["train"]) == sorted(words["train"])
    assert set(words["train"]) <= set(every["train"]) and all(3 <= len(w) <= 4 for w in words["train"])
    # held-out words: the same hash split, every one of the curriculum's lengths, none of them trained on
    assert set(words["held_out"]) == {w for w in every["held_out"] if 3 <= len(w) <= 4}
    assert len(words["held_out"]) > 200 and not set(words["held_out"]) & set(every["train"])
    # the subset depends on the length and size only, not on the other settings (a smaller one is a prefix)
    other = ReadingCurriculum(vocab_size=256, letters=(3, 4), words_per_scene=(1,), font_share=(0.4, 0.5))
    assert curriculum_words(other)["train"] == words["train"]
    assert set(curriculum_words(ReadingCurriculum(vocab_size=100, letters=(3, 4)))["train"]) < set(words["train"])
    with pytest.raises(ValueError, match="vocab_size"):
        curriculum_words(ReadingCurriculum(vocab_size=10**6))
    with pytest.raises(ValueError, match="letters"):
        curriculum_words(ReadingCurriculum(letters=(2, 4)))


def test_curriculum_scenes_follow_their_settings():
    scenes = [scene_of("reading-cpu", 0, i) for i in range(400)]
    vocab = set(curriculum_words(CPU)["train"])
    assert {len(s.words) for s in scenes} == set(CPU.words_per_scene)
    assert {w for s in scenes for w in s.words} <= vocab and len({w for s in scenes for w in s.words}) > 200
    assert all(CPU.font_share[0] <= f <= CPU.font_share[1] for s in scenes for f, _, _ in s.layout)
    assert {len(s.clutter) for s in scenes} == set(range(CPU.clutter[0], CPU.clutter[1] + 1))
    assert scenes[5].render(64).tobytes() == scene_of("reading-cpu", 0, 5).render(64).tobytes()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


@pytest.mark.parametrize("kind", [load_comparison_recipe("cpu-reading")["pretrain"]["scene_kind"], "mixed-cpu"])
def test_held_out_words_never_appear_in_curriculum_training_captions_or_questions(kind):
    from ov2_plugin.experiments.evaluation import held_out_questions

    held_out = set(reading_words()["held_out"])  # every held-out word, of any length
    words = curriculum_words(curriculum_of(kind))
    seen = set()
    data = SceneCaptions(400, 16, transform=lambda image: torch.zeros(1), kind=kind)  # what pretraining reads
    for i in range(len(data)):
        seen |= _words(data[i]["caption"])
    seen |= {w for i in range(3000) for w in _words(scene_of(kind, 0, i).caption)}  # the same, without pixels
    records = [*caption_records(0, 2000, scenes=mixed_kind(kind)), *instruction_records(0, 2000, scenes=mixed_kind(kind))]
    seen |= {w for r in records for turn in r["conversations"] for w in _words(turn["value"])}  # LLaVA's data
    assert len(seen & set(words["train"])) >= min(200, len(words["train"])) and not seen & held_out
    # the evaluation's seen-word questions draw training words, the unseen ones held-out words only
    questions = held_out_questions(300, kind)
    for task, split in (("letter_seen", "train"), ("letter_unseen", "held_out")):
        drawn = {w for t, r in questions if t == task for w in scene_of(r["scene_kind"], 1, int(r["id"].split("-")[1]),
                                                                      r["split"]).words}
        assert drawn and drawn <= set(words[split]), task


def test_cpu_reading_budgets_are_equal_counted_flops_within_one_percent():
    from ov2_plugin.experiments.objectives import count_flops

    recipe = load_comparison_recipe("cpu-reading")
    assert set(recipe["objectives"]) == {"caption", "openvision", "clip", "coca"}
    # The recipe's models, data (its curriculum) and counting, at a quarter of its batch so the test takes
    # seconds: per-step FLOPs scale with the batch, so the steps each objective gets hardly move.
    recipe["pretrain"]["batch"] = 8
    flops = count_flops(recipe)
    spent = {o: flops["steps"][o] * flops["step_flops"][o] for o in recipe["objectives"]}
    assert all(abs(s - flops["budget_flops"]) <= 0.01 * flops["budget_flops"] for s in spent.values()), spent
    assert flops["steps"]["caption"] == recipe["budget"]["steps"] and min(flops["steps"].values()) >= 100


def test_whole_word_probe_is_reported_beside_its_majority_answer(tmp_path):
    from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
    from ov2_plugin.evaluation.scene_probe import markdown_reading, probe_reading

    config = Ov2VisionConfig.from_preset("tiny", num_hidden_layers=1, hidden_size=48, num_attention_heads=1,
                                         intermediate_size=96, image_size=32)
    torch.manual_seed(0)
    Ov2VisionModel(config).save_pretrained(tmp_path / "random")
    make_image_processor(config).save_pretrained(tmp_path / "random")
    result = probe_reading({"r": tmp_path / "random"}, train_scenes=120, test_scenes=60, kind="mixed-cpu")
    assert result["settings"]["kind"] == "reading-cpu"
    assert set(result["majority"]) == {"reading_seen", "reading_unseen", "reading_word_seen"}
    assert 0 < result["majority"]["reading_word_seen"] < 0.2  # 256 words: no answer is common
    for view in ("patch", "pooled"):
        assert set(result["towers"]["r"][view]) == set(result["majority"])
        assert all(0.0 <= a <= 1.0 for a in result["towers"]["r"][view].values())
    assert "| reading_word_seen |" in markdown_reading(result)
    # the built-in task's vocabulary is too large to probe word by word: no such row there, as before
    default = probe_reading({"r": tmp_path / "random"}, train_scenes=60, test_scenes=30)
    assert set(default["majority"]) == {"reading_seen", "reading_unseen"}


def test_compare_tables_add_the_word_probe_only_where_runs_have_it():
    from ov2_plugin.experiments.report import PROBE_TASKS, markdown, probe_tasks, summarise

    def run(tasks):
        probe = {v: dict.fromkeys(tasks, 0.5) for v in ("patch", "pooled")}
        return {"seed0": {"caption": {"pretrain": {"steps": 1, "train_flops": 1e12, "wall_s": 1.0, "peak_mb": 1.0},
                                      "probe": probe}}}

    assert probe_tasks(run(PROBE_TASKS)) == PROBE_TASKS  # every other recipe: the table as it was
    with_word = run((*PROBE_TASKS, "reading_word_seen"))
    assert probe_tasks(with_word)[:3] == ("reading_seen", "reading_unseen", "reading_word_seen")
    table = markdown(summarise(with_word), load_comparison_recipe("cpu-reading"), {"reading_word_seen": 0.01})
    assert "probe reading_word_seen" in table and "| 0.010 |" in table


def test_budget_sweep_pretrains_probes_and_tabulates_each_budget(tmp_path, monkeypatch):
    """The sweep's flow on the micro recipe, with each pretraining replaced by saving the untrained model
    (the real one is ``ov2 compare``'s ``run_pretrain``, tested there), so this takes seconds."""
    from ov2_plugin.experiments import reading_budget

    def fake_pretrain(recipe, objective, seed, steps, step_flops, tower):
        from transformers import set_seed

        from ov2_plugin.experiments.objectives import model_arguments
        from ov2_plugin.image_processing import make_image_processor
        from ov2_plugin.pretrain import build_model

        set_seed(seed)
        model = build_model(model_arguments(recipe, objective))
        model.save_pretrained(tower)  # a whole captioner and its processor, as run_pretrain writes
        make_image_processor(model.config.vision_config).save_pretrained(tower)
        return {"steps": steps, "step_flops": step_flops, "train_flops": step_flops * steps, "wall_s": 0.1,
                "train_loss": 9.0}

    monkeypatch.setattr(reading_budget, "in_child", lambda fn, *args: fn(*args))
    monkeypatch.setattr(reading_budget, "run_pretrain", fake_pretrain)
    out = tmp_path / "sweep"
    argv = ["--recipe", "micro", "--scene_kind", "mixed-cpu", "--steps", "2", "1", "--probe_scenes", "40", "20",
            "--output_dir", str(out)]
    result = reading_budget.main(argv)
    assert list(result["towers"]) == ["random", "steps1", "steps2"]
    assert result["towers"]["steps2"]["pretrain"]["train_flops"] == 2 * result["towers"]["steps1"]["pretrain"]["train_flops"] > 0
    assert set(result["majority"]) == {"reading_seen", "reading_unseen", "reading_word_seen"}
    captions = result["towers"]["steps2"]["captions"]  # the captioner's own reading, counted from its greedy captions
    assert captions["scenes"] == 100 and 0 <= captions["seen"]["word_named"] <= captions["seen"]["first_letter"] <= 1
    assert "captions" not in result["towers"]["random"]  # the untrained tower has no decoder to caption with
    table = (out / "reading_budget.md").read_text()
    assert "| steps2 | 2 |" in table and "| majority answer |" in table
    assert json.loads((out / "reading_budget.json").read_text())["recipe"]["pretrain"]["scene_kind"] == "mixed-cpu"
    mtime = (out / "steps2" / "probe.json").stat().st_mtime_ns
    reading_budget.main(argv)  # a rerun redoes nothing that finished
    assert (out / "steps2" / "probe.json").stat().st_mtime_ns == mtime


def test_llava_data_of_the_recipe_shows_its_curriculum(tmp_path):
    from ov2_plugin.experiments.evaluation import _record_scene, make_llava_data

    cfg = {"stage1_scenes": 6, "stage2_scenes": 6}
    make_llava_data(tmp_path, cfg, 32, "mixed-cpu")
    records = json.loads((tmp_path / "instructions_0.json").read_text())
    reading = [r for r in records if r.get("scene_kind") == "mixed-cpu" and r["question_type"] == "letter"]
    assert reading and all((tmp_path / r["image"]).is_file() for r in records)
    scene = scene_of("mixed-cpu", 0, int(reading[0]["id"].split("-")[1]))
    assert reading[0]["conversations"][1]["value"] == scene.words[0][0] and scene.words[0] in curriculum_words(CPU)["train"]
    assert _record_scene({**reading[0], "split": "held_out"}).words[0] in curriculum_words(CPU)["held_out"]


def test_spelled_captions_name_each_letter_and_no_word():
    scene = scene_of("reading-s32", 0, 1)
    assert scene.caption == f'the word "{" ".join(scene.words[0])}" is written in {scene.colour}.'
    plain = scene_of("reading-w32", 0, 1)  # the same words and pictures, captions unspelled
    assert plain.words == scene.words and plain.caption == f'the word "{scene.words[0]}" is written in {scene.colour}.'
    assert plain.render(64).tobytes() == scene.render(64).tobytes()


def test_reading_ceiling_trains_the_tower_on_the_word_and_scores_new_scenes(tmp_path):
    from ov2_plugin.experiments import reading_ceiling

    result = reading_ceiling.main(["--recipe", "micro", "--scene_kind", "reading-w32", "--steps", "2", "--eval_every", "1",
                                   "--readout", "token_ln", "--output_dir", str(tmp_path)])
    assert [p["step"] for p in result["curve"]] == [1, 2] and result["words"] == 32 and result["readout"] == "token_ln"
    assert all(0 <= p["word_accuracy"] <= 1 for p in result["curve"]) and 0 < result["majority"] < 1
    assert json.loads((tmp_path / "reading_ceiling.json").read_text())["curve"] == result["curve"]
    with pytest.raises(ValueError, match="no limited vocabulary"):
        reading_ceiling.main(["--recipe", "micro", "--scene_kind", "reading", "--steps", "1", "--output_dir", str(tmp_path)])
