"""Task functions and YAML templates of the offline suite, for lmms-eval and lm-eval.

The lmms-eval tasks score with lmms-eval's *own* functions (``textvqa_process_results``,
``pope_process_results`` + ``pope_aggregate_*``, ``mme_process_results`` +
``mme_aggregate_results``), imported when called, so the lmms-eval numbers are lmms-eval's.
The lm-eval tasks score with :mod:`ov2_plugin.evaluation.metrics`, which reproduces them
exactly; agreement between the two runs is then a check on the adapters, not on the metrics.
The suite writes a ``utils.py`` next to the YAMLs that re-exports this module, so ``!function
utils.<name>`` resolves wherever the suite was written.
"""

from __future__ import annotations

import copy
from pathlib import Path

from . import metrics

MAX_NEW_TOKENS = 16

# ---------------------------------------------------------------- shared by both frameworks


def doc_to_visual(doc: dict) -> list:
    """The image as stored: the adapters decode it (``decode_image``: EXIF, transparency, 16 bit)."""
    return [doc["image"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The bare question: the adapters wrap it in the model's chat template with the image."""
    return doc["question"]


# ---------------------------------------------------------------- lmms-eval (its own scoring)


def lmms_vqa_process_results(doc: dict, results: list[str]) -> dict:
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    # it normalises doc["answers"] in place; the document must stay intact for other tasks
    return {"exact_match": textvqa_process_results(copy.deepcopy(doc), results)["exact_match"]}


def lmms_pope_process_results(doc: dict, results: list[str]) -> dict:
    from lmms_eval.tasks.pope.utils import pope_process_results

    return pope_process_results(doc, results)


def _pope(name: str):
    def aggregate(results: list) -> float:
        from lmms_eval.tasks.pope import utils

        return getattr(utils, f"pope_aggregate_{name}")(results)

    aggregate.__name__ = f"lmms_pope_{name}"
    return aggregate


lmms_pope_accuracy = _pope("accuracy")
lmms_pope_precision = _pope("precision")
lmms_pope_recall = _pope("recall")
lmms_pope_f1_score = _pope("f1_score")
lmms_pope_yes_ratio = _pope("yes_ratio")


def lmms_mme_process_results(doc: dict, results: list[str]) -> dict:
    from lmms_eval.tasks.mme.utils import mme_process_results

    return mme_process_results(doc, results)


def lmms_mme_aggregate(results: list) -> float:
    from lmms_eval.tasks.mme.utils import mme_aggregate_results

    return mme_aggregate_results(results)


def choice_process_results(doc: dict, results: list[str]) -> dict:
    """SEED-Bench's rule (first character of the answer, case-blind), via our metric."""
    return {"mc_accuracy": float(metrics.mc_letter_accuracy([results[0]], [doc["answer"]]))}


# ---------------------------------------------------------------- lm-eval (our metrics)


def vqa_process_results(doc: dict, results: list[str]) -> dict:
    return {"vqa_accuracy": metrics.vqa_accuracy(results[0], doc["answers"])}


POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_process_results(doc: dict, results: list[str]) -> dict:
    record = {"prediction": results[0], "answer": doc["answer"]}
    return {f"pope_{k}": record for k in POPE_KEYS}


def _pope_ours(key: str):
    def aggregate(records: list[dict]) -> float:
        return metrics.pope_scores([r["prediction"] for r in records], [r["answer"] for r in records])[key]

    aggregate.__name__ = f"pope_{key}"
    return aggregate


pope_accuracy, pope_precision, pope_recall, pope_f1, pope_yes_ratio = (_pope_ours(k) for k in POPE_KEYS)


def mme_process_results(doc: dict, results: list[str]) -> dict:
    return {"mme_perception": {"question_id": doc["question_id"], "category": doc["category"],
                               "prediction": results[0], "answer": doc["answer"]}}


def mme_perception(records: list[dict]) -> float:
    return metrics.mme_scores(records)["perception"]


# ---------------------------------------------------------------- YAML templates


def _header(task: str, parquet: Path, generation: str) -> str:
    return (
        f"task: {task}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {Path(parquet).resolve()}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_text: !function utils.doc_to_text\n"
        "doc_to_target: answer\n"
        f"{generation}"
    )


def _metrics(entries: list[tuple[str, str]]) -> str:
    lines = ["metric_list:"]
    for metric, aggregation in entries:
        lines += [f"  - metric: {metric}", f"    aggregation: {aggregation}", "    higher_is_better: true"]
    return "\n".join(lines) + "\nmetadata:\n  version: 1.0\n"


LMMS_METRICS = {
    "vqa": ("lmms_vqa_process_results", [("exact_match", "mean")]),
    "pope": ("lmms_pope_process_results", [(f"pope_{k}", f"!function utils.lmms_pope_{k}")
                                           for k in ("accuracy", "precision", "recall", "f1_score", "yes_ratio")]),
    "mme": ("lmms_mme_process_results", [("mme_perception_score", "!function utils.lmms_mme_aggregate")]),
    "choice": ("choice_process_results", [("mc_accuracy", "mean")]),
}
LM_EVAL_METRICS = {
    "vqa": ("vqa_process_results", [("vqa_accuracy", "mean")]),
    "pope": ("pope_process_results", [(f"pope_{k}", f"!function utils.pope_{k}") for k in POPE_KEYS]),
    "mme": ("mme_process_results", [("mme_perception", "!function utils.mme_perception")]),
    "choice": ("choice_process_results", [("mc_accuracy", "mean")]),
}


def lmms_eval_yaml(task: str, kind: str, parquet: Path) -> str:
    process, entries = LMMS_METRICS[kind]
    generation = (
        "doc_to_visual: !function utils.doc_to_visual\n"
        f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n  temperature: 0\n  do_sample: false\n  num_beams: 1\n"
        f"process_results: !function utils.{process}\n"
    )
    return _header(task, parquet, generation) + _metrics(entries)


def lm_eval_yaml(task: str, kind: str, parquet: Path) -> str:
    process, entries = LM_EVAL_METRICS[kind]
    generation = (
        "doc_to_image: !function utils.doc_to_visual\n"
        f"generation_kwargs:\n  max_gen_toks: {MAX_NEW_TOKENS}\n  do_sample: false\n  until: []\n"
        f"process_results: !function utils.{process}\n"
    )
    return _header(task, parquet, generation) + _metrics(entries)
