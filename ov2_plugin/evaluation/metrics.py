"""The benchmark metrics of the OpenVision 2 evaluation, defined as lmms-eval scores them.

Why our own copy: the three frameworks are optional extras (``pip install ov2-plugin[eval]``)
and their scoring functions are tied to their document dicts and loggers, but ``ov2 eval``
must score results in the base install and the lm-eval adapter needs the same numbers as
lmms-eval. Each function names the lmms-eval function it reproduces; ``tests/test_eval_metrics.py``
checks, on a few hundred generated cases, that the outputs are exactly equal, quirks included.

- :func:`normalize_answer`: the EvalAI answer processor (VQA / TextVQA).
- :func:`vqa_accuracy`: VQA accuracy over 10 annotators, leave-one-out averaged.
- :func:`pope_scores`: POPE accuracy, precision, recall, F1, yes-ratio.
- :func:`mme_scores`: MME perception / cognition totals (acc + acc+ per category).
- :func:`mc_letter_accuracy`: multiple choice answered with a letter (SEED-Bench style).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

# ---------------------------------------------------------------- EvalAI answer normalisation

# Canonical contractions of the VQA evaluation. The lookup keys are the forms without one
# apostrophe (the EvalAI table maps "dont" -> "don't", "couldnt've" -> "couldn't've", ...).
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock 'ow's'at oughtn't shan't she'd've "
    "should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()

NUMBER_WORDS = ("none", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NUMBER_MAP = {w: str(max(0, i - 1)) for i, w in enumerate(NUMBER_WORDS)}  # none and zero -> "0"
ARTICLES = frozenset(("a", "an", "the"))
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _contraction_keys(word: str) -> list[str]:
    """The spellings the table accepts for ``word``: each with one of its apostrophes dropped."""
    quotes = [i for i, c in enumerate(word) if c == "'"]
    keys = {word[:i] + word[i + 1 :] for i in quotes}
    return sorted(keys)


CONTRACTIONS = {key: word for word in _CONTRACTED for key in _contraction_keys(word)}
CONTRACTIONS["somebody'd"] = "somebodyd"  # the EvalAI table has this one entry backwards; kept for equal scores


def _tokenize_word(text: str) -> str:
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _strip_punctuation(text: str) -> str:
    out = text
    strip_all = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # Decided on the input text, not the running result: the processor does the same.
        out = out.replace(p, "" if (p + " " in text or " " + p in text or strip_all) else " ")
    # The processor passes re.UNICODE (= 32) as the *count* of re.sub: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=32)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """EvalAI's answer processing, as ``lmms_eval...vqa_eval_metric.EvalAIAnswerProcessor()(text)``."""
    text = _tokenize_word(text).replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_strip_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the annotators' answers (10 in VQAv2 / TextVQA).

    For each annotator, the other annotators' answers that equal the prediction count 1/3 each,
    capped at 1; the result is the mean over annotators (``textvqa_process_results``).
    """
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if not gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


# ---------------------------------------------------------------- yes/no benchmarks


def pope_scores(predictions: Iterable[str], answers: Iterable[str]) -> dict[str, float]:
    """POPE metrics as lmms-eval's ``pope_aggregate_*``: the prediction is only lower-cased and
    stripped, so "Yes." is neither yes nor no. Precision/recall/F1 treat "yes" as positive;
    yes-ratio is the share of "yes" among the ground-truth answers."""
    tp = fp = fn = yes = no = correct = total = 0
    for pred, gt in zip(predictions, answers):
        pred, gt = pred.lower().strip(), gt.lower().strip()
        if gt not in ("yes", "no"):
            raise ValueError(f"POPE answers must be 'yes' or 'no', got {gt!r}; fix the benchmark file.")
        total += 1
        correct += pred == gt
        tp += gt == "yes" and pred == "yes"
        fp += gt == "no" and pred == "yes"
        fn += gt == "yes" and pred == "no"
        yes += gt == "yes"
        no += gt == "no"
    precision = tp / (tp + fp) if tp + fp else 0
    recall = tp / (tp + fn) if tp + fn else 0
    return {
        "accuracy": correct / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0,
        "yes_ratio": yes / (yes + no) if yes + no else 0,
    }


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no(prediction: str) -> str:
    """MME's answer parsing (``mme.utils.parse_pred_ans``): yes / no / other, looking at the first 4 characters."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(records: Iterable[dict]) -> dict[str, float]:
    """MME totals from records with ``question_id`` (the image: its two questions form a pair),
    ``category``, ``prediction`` and ``answer``.

    Per category: mean over images of acc (share of the pair right) x100 + acc+ (both right)
    x100; perception / cognition = sum over their categories (``mme_aggregate_results``).
    Categories that are not MME cognition ones count as perception, as in lmms-eval.
    """
    pairs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        gt = r["answer"].lower().strip().replace(".", "")
        pairs[r["category"]][r["question_id"]].append(float(parse_yes_no(r["prediction"]) == gt))
    per_category = {}
    for category, images in pairs.items():
        total = 0.0
        for qid, scores in images.items():
            if len(scores) != 2:
                raise ValueError(f"MME scores pairs of questions; image {qid!r} of {category!r} has {len(scores)}.")
            total += sum(scores) / 2 * 100.0 + (sum(scores) == 2) * 100.0
        per_category[category] = total / len(images)
    cognition = sum(v for c, v in per_category.items() if c in MME_COGNITION)
    perception = sum(v for c, v in per_category.items() if c not in MME_COGNITION)
    return {"perception": perception, "cognition": cognition, **{f"category/{c}": v for c, v in per_category.items()}}


# ---------------------------------------------------------------- multiple choice


def mc_letter(prediction: str) -> str:
    """The answered option as SEED-Bench's lmms-eval task reads it: the first character."""
    pred = prediction.strip()
    return pred[0] if len(pred) > 1 else pred


def mc_letter_accuracy(predictions: Iterable[str], answers: Iterable[str]) -> float:
    """Share of predictions whose letter equals the answer letter, case-blind (``seed_aggregation_result``)."""
    results = [mc_letter(p).lower().strip() == a.lower().strip() for p, a in zip(predictions, answers)]
    if not results:
        raise ValueError("No multiple-choice predictions to score.")
    return sum(results) / len(results)
