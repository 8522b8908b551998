"""The three frameworks, run for real and offline on a slice of the built-in suite via ``ov2 eval``.

lmms-eval through its own CLI (``--include_path``, our entry-point model), lm-eval through
``simple_evaluate``, VLMEvalKit through ``infer_data_job`` + ``evaluate(judge=exact_matching)``.
The model is a random-weights tiny LLaVA whose output head can only say "yes" or "no", and
says either depending on the input: a real model whose answers are short and mixed, so the
scores are neither all 0 nor all 1 and a wiring mistake in any framework shows up.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ov2_plugin.evaluation import metrics
from ov2_plugin.evaluation.cli import evaluate, parse_args
from ov2_plugin.evaluation.runner import LlavaRunner, build_tiny_llava

TASKS = ["ov2_pope_random", "ov2_mme", "ov2_choice"]
ANSWER_WORDS = ("yes", "no")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Tiny random LLaVA whose head says "yes" or "no" depending on the input.

    A random model's last hidden state is nearly the same for every prompt, so its greedy answer
    is constant. Here the "yes" / "no" rows of the head are +/- the direction along which the
    suite's prompts differ most (first principal component, orthogonal to their mean); every
    other row is zero, so the first token is always one of the two and varies with the input.
    """
    from ov2_plugin.evaluation.suite import DEFAULT_SEED, build_items

    path = build_tiny_llava(tmp_path_factory.mktemp("model") / "tiny", seed=0)
    runner = LlavaRunner(path)
    items = [i for t in TASKS for i in build_items(DEFAULT_SEED, 3)[t]]
    states = []
    with torch.no_grad():
        for item in items:
            batch = runner._inputs([runner.prompt(item.question)], [[item.scene.render(64)]])
            states.append(runner.model(**batch, output_hidden_states=True).hidden_states[-1][0, -1])
    h = torch.stack(states)
    h = h / h.norm(dim=-1, keepdim=True)
    mean = h.mean(0)
    direction = torch.linalg.svd(h - mean, full_matrices=False).Vh[0]
    direction -= (direction @ mean) / (mean @ mean) * mean
    yes, no = runner.tokenizer.convert_tokens_to_ids(["yes", "no"])
    model = runner.model
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[yes] = 100 * direction
        model.lm_head.weight[no] = -100 * direction
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def results(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "results"
    args = parse_args(["--model", str(model_dir), "--out", str(out), "--tasks", ",".join(TASKS), "--num_scenes", "3",
                       "--batch_size", "4", "--device", "cpu", "--max_new_tokens", "1"])
    evaluate(args)
    return out


def _suite_docs(out: Path, task: str) -> pd.DataFrame:
    return pd.read_parquet(out / "suite" / "data" / f"{task}.parquet", columns=["index", "question_id", "answer", "category"])


def _predictions(out: Path, task: str) -> dict[str, list[str]]:
    """Each framework's answer per document, in document order."""
    lmms = [json.loads(x) for x in next((out / "lmms_eval").rglob(f"*samples_{task}.jsonl")).read_text().splitlines()]
    lm = [json.loads(x) for x in (out / "lm_eval" / f"samples_{task}.jsonl").read_text().splitlines()]
    tsv = {"ov2_pope_random": "OV2Suite_POPE_random", "ov2_mme": "OV2Suite_MME", "ov2_choice": "OV2Suite_MCQ_choice"}[task]
    vl = pd.read_excel(out / "vlmeval" / f"ov2_llava_{tsv}.xlsx")
    return {
        "lmms_eval": [x["filtered_resps"] if isinstance(x["filtered_resps"], str) else x["filtered_resps"][0]
                      for x in sorted(lmms, key=lambda x: x["doc_id"])],
        "lm_eval": [x["prediction"] for x in sorted(lm, key=lambda x: x["doc_id"])],
        "vlmeval": [str(p) for p in vl.sort_values("index")["prediction"]],
    }


def test_outputs_written(results):
    report = json.loads((results / "results.json").read_text())
    assert report["frameworks"] == ["lmms_eval", "vlmeval", "lm_eval"]
    assert {r["task"] for r in report["table"]} == set(TASKS)
    assert "| ov2_mme | perception |" in (results / "results.md").read_text()
    assert (results / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(results.parent.glob(".results.*"))  # the staging folder is gone


def test_all_frameworks_ask_the_same_questions_and_get_the_same_answers(results):
    for task in TASKS:
        preds = _predictions(results, task)
        n = len(_suite_docs(results, task))
        assert len(preds["lmms_eval"]) == n
        assert preds["lmms_eval"] == preds["lm_eval"] == preds["vlmeval"], task
        assert set(preds["lmms_eval"]) <= set(ANSWER_WORDS)
    answers = [p for t in TASKS for p in _predictions(results, t)["lmms_eval"]]
    assert set(answers) == {"yes", "no"}  # mixed answers, so the scores below are not trivial


def test_scores_agree_across_frameworks_and_with_our_metrics(results):
    table = json.loads((results / "results.json").read_text())["table"]
    for row in table:
        values = [row[f] for f in ("lmms_eval", "lm_eval", "vlmeval")]
        assert max(values) - min(values) < 1e-6, row
    by_key = {(r["task"], r["metric"]): r["lmms_eval"] for r in table}
    docs = _suite_docs(results, "ov2_pope_random")
    pope = metrics.pope_scores(_predictions(results, "ov2_pope_random")["lmms_eval"], docs["answer"])
    assert by_key[("ov2_pope_random", "accuracy")] == pytest.approx(100 * pope["accuracy"])
    assert by_key[("ov2_pope_random", "F1")] == pytest.approx(100 * pope["f1"])
    docs = _suite_docs(results, "ov2_mme")
    records = [{**d, "prediction": p} for d, p in zip(docs.to_dict("records"), _predictions(results, "ov2_mme")["lmms_eval"])]
    assert by_key[("ov2_mme", "perception")] == pytest.approx(metrics.mme_scores(records)["perception"])
    assert 0 < by_key[("ov2_mme", "perception")] < 200 * len(set(docs["category"]))


def test_batched_generation_and_loglikelihood(model_dir):
    from ov2_plugin.data.scenes import make_scene

    images = [[make_scene(1, i).render(64)] for i in range(5)]
    questions = [f"is there a red {s}?" for s in ("circle", "square", "triangle", "diamond", "circle")]
    single = LlavaRunner(model_dir, batch_size=1).generate(questions, images, max_new_tokens=3)
    runner = LlavaRunner(model_dir, batch_size=4)
    assert runner.generate(questions, images, max_new_tokens=3) == single
    # loglikelihood = summed log-softmax of the continuation tokens, greedy flag from the argmax
    logp_yes, greedy_yes = runner.loglikelihood(questions[0], images[0], " yes")
    logp_no, greedy_no = runner.loglikelihood(questions[0], images[0], " no")
    assert logp_yes <= 0 and logp_no <= 0  # the sharp head can put ~all mass on one word: log p = 0.0
    assert greedy_yes != greedy_no and (logp_yes > logp_no) == greedy_yes
    first = runner.generate(questions[:1], images[:1], max_new_tokens=1)[0]
    assert (greedy_yes, greedy_no) == (first == "yes", first == "no")


def test_vlmeval_run_py_config_gives_the_same_answers_and_scores(results, model_dir, tmp_path):
    """VLMEvalKit's own ``run.py --config`` (the way eval/README.md documents) on the suite's TSVs."""
    config = {
        "model": {"ov2_llava": {"class": "Ov2LlavaVLM", "model_path": str(model_dir), "device": "cpu", "max_new_tokens": 1}},
        "data": {"OV2Suite_POPE_random": {"class": "ImageYORNDataset", "dataset": "OV2Suite_POPE_random"}},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "LMUData": str(results / "suite" / "vlmeval"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ov2_plugin.evaluation.vlmeval_model", "--config", str(tmp_path / "config.json"),
           "--work-dir", str(tmp_path / "work"), "--judge", "exact_matching"]
    subprocess.run(cmd, env=env, cwd=tmp_path, check=True)
    out = tmp_path / "work" / "ov2_llava"
    answers = pd.read_excel(out / "ov2_llava_OV2Suite_POPE_random.xlsx").sort_values("index")
    assert [str(p) for p in answers["prediction"]] == _predictions(results, "ov2_pope_random")["vlmeval"]
    score = pd.read_csv(out / "ov2_llava_OV2Suite_POPE_random_score.csv")
    table = json.loads((results / "results.json").read_text())["table"]
    expected = next(r["vlmeval"] for r in table if (r["task"], r["metric"]) == ("ov2_pope_random", "accuracy"))
    assert float(score["acc"][0]) == pytest.approx(expected)
