"""Differential tests: our metric functions against lmms-eval's own scoring functions.

A few hundred generated prediction/answer pairs, heavy on the normalisation traps (number
words, articles, punctuation, "Yes." vs "yes", percentages, contractions, full-width text):
every one must score exactly as lmms-eval scores it.
"""

import copy
import random

import pytest

from ov2_plugin.evaluation import metrics

BASE = [
    "two", "2", "Two.", "TWO", "two cats", "2 cats", "none", "zero", "0", "ten", "10", "eleven", "11",
    "the cat", "a cat", "an apple", "Cat!", "cat", "cat.", '"cat"', "(cat)", "cat;dog", "cat/dog", "cat - dog",
    "yes", "Yes", "Yes.", "YES", " yes ", "yes, it is", "no", "No.", "no!", "No, there isn't", "y", "n", "nope",
    "10%", "0.1", "10.5%", "0.105", "3,000", "3000", "3.000", "1.5", "1.50", "1.58", "-2", "-2.05", "0.0", "1e3",
    "dont", "don't", "its", "it's", "couldnt've", "somebody'd", "ive", "im", "Im", "yall", "let's", "lets",
    "New York", "new-york", "U.S.", "e.g. red", "mr. smith", "1,2,3", "a", "A", "b)", "C. circle", "(d)",
    "", " ", "red\nblue", "red\tblue", "ｃａｔ", "ＣＡＴ", "cat dog", "what?", "red, green", "3.14", "pi",
]


def _cases(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        truth = rng.choice(BASE)
        answers = [truth if rng.random() < 0.6 else rng.choice(BASE) for _ in range(10)]
        pred = truth if rng.random() < 0.3 else rng.choice(BASE)
        cases.append((pred, answers))
    return cases


CASES = _cases(400)


def test_normalize_answer_equals_evalai_processor_of_lmms_eval():
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    processor = EvalAIAnswerProcessor()
    texts = BASE + [p for p, _ in CASES] + [" ".join(a[:3]) for _, a in CASES] + ["." * 40 + "a.b", "1.2.3." * 12]
    for text in texts:
        assert metrics.normalize_answer(text) == processor(text), text


def test_vqa_accuracy_equals_textvqa_process_results():
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    seen = set()
    for pred, answers in CASES:
        theirs = textvqa_process_results({"answers": list(answers), "question_id": 0}, [pred])["exact_match"]
        ours = metrics.vqa_accuracy(pred, answers)
        assert ours == theirs, (pred, answers)
        seen.add(round(ours, 3))
    assert len(seen) >= 4  # the cases reach partial credit, not only 0 and 1


def test_pope_scores_equal_lmms_eval_aggregates():
    from lmms_eval.tasks.pope import utils

    rng = random.Random(1)
    for _ in range(20):
        gts = [rng.choice(["yes", "no"]) for _ in range(30)]
        preds = [rng.choice(["yes", "no", "Yes", "Yes.", " no ", "maybe", "No"]) for _ in range(30)]
        records = [utils.pope_process_results({"answer": g, "question_id": i}, [p])["pope_accuracy"]
                   for i, (g, p) in enumerate(zip(gts, preds))]
        ours = metrics.pope_scores(preds, gts)
        assert ours["accuracy"] == utils.pope_aggregate_accuracy(records)
        assert ours["precision"] == utils.pope_aggregate_precision(records)
        assert ours["recall"] == utils.pope_aggregate_recall(records)
        assert ours["f1"] == utils.pope_aggregate_f1_score(records)
        assert ours["yes_ratio"] == utils.pope_aggregate_yes_ratio(records)


def test_mme_scores_equal_lmms_eval_aggregate():
    from lmms_eval.tasks.mme import utils

    rng = random.Random(2)
    categories = ["existence", "count", "OCR", "commonsense_reasoning", "code_reasoning"]
    preds_pool = ["yes", "No", "Yes.", "y", "n", "no, it is not", "yesterday", "maybe", "", "nope"]
    for _ in range(10):
        records = []
        for c in categories:
            for image in range(6):
                for gt in ("Yes", "No"):
                    records.append({"question_id": f"{c}/{image}.png", "category": c, "answer": gt,
                                    "prediction": rng.choice(preds_pool)})
        processed = [utils.mme_process_results(copy.deepcopy(r), [r["prediction"]]) for r in records]
        perception = [v for p in processed for k, v in p.items() if k == "mme_perception_score"]
        cognition = [v for p in processed for k, v in p.items() if k == "mme_cognition_score"]
        ours = metrics.mme_scores(records)
        assert ours["perception"] == pytest.approx(utils.mme_aggregate_results(perception), abs=1e-9)
        assert ours["cognition"] == pytest.approx(utils.mme_aggregate_results(cognition), abs=1e-9)
    for text in preds_pool + ["Yes", "YES.", "no."]:
        assert metrics.parse_yes_no(text) == utils.parse_pred_ans(text)


def test_mc_letter_accuracy_equals_seedbench():
    from lmms_eval.tasks.seedbench.utils import seed_aggregation_result, seed_process_result

    rng = random.Random(3)
    pool = ["A", "b", "C.", "D) circle", "(a)", " c ", "B. square", "", "answer: A", "a"]
    for _ in range(20):
        preds = [rng.choice(pool) for _ in range(12)]
        gts = [rng.choice("ABCD") for _ in range(12)]
        records = [seed_process_result({"answer": g, "data_type": "image", "question_id": i}, [p])["seed_all"]
                   for i, (p, g) in enumerate(zip(preds, gts))]
        assert metrics.mc_letter_accuracy(preds, gts) == seed_aggregation_result(records)
