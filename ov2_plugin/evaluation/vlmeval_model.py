"""VLMEvalKit (``vlmeval``, PyPI ``ms-vlmeval``) model for LLaVA models with an OpenVision 2 tower.

Two documented ways to run it, neither patches VLMEvalKit:

* the public API: ``infer_data_job(Ov2LlavaVLM(model_path=DIR), work_dir, "ov2_llava", dataset)``
  then ``dataset.evaluate(pred_file, model="exact_matching")``; :func:`evaluate` does both for
  official benchmark names (``MME``, ``POPE``, ``TextVQA_VAL``, ``SEEDBench_IMG``, ...) and for
  the offline suite's TSVs (``OV2Suite_*`` in ``$LMUData``).
* VLMEvalKit's own ``run.py``: ``python -m ov2_plugin.evaluation.vlmeval_model --config cfg.json``
  registers the class in ``vlmeval.vlm`` (``run.py --config`` builds models from there by class
  name) and hands the arguments to ``vlmeval.run.main``. See ``eval/vlmeval/`` for configs.

The suite's datasets reuse VLMEvalKit's scoring classes: yes/no (POPE / MME rating chosen by the
name), VQA (``TextVQA`` in the name selects VQA accuracy) and custom multiple choice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import torch

from ..loading import load_image
from .runner import make_runner
from .suite import TASKS, VLMEVAL_NAMES

_grad_enabled = torch.is_grad_enabled()
from vlmeval.dataset import CustomMCQDataset, ImageVQADataset, ImageYORNDataset, build_dataset  # noqa: E402
from vlmeval.smp import LMUDataRoot, load  # noqa: E402
from vlmeval.vlm.base import BaseModel  # noqa: E402

# Importing vlmeval.vlm switches autograd off for the whole process; give it back, so that
# training in the same process (a notebook, a test run) still gets gradients.
torch.set_grad_enabled(_grad_enabled)

REQUIRED_COLUMNS = {"index", "question", "answer"}


def _load_suite_tsv(dataset: str) -> pd.DataFrame:
    path = Path(LMUDataRoot()) / f"{dataset}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write the suite with 'ov2 eval suite --out DIR' and set LMUData=DIR/vlmeval.")
    data = load(str(path))
    missing = sorted(REQUIRED_COLUMNS - set(data.columns))
    if not {"image", "image_path"} & set(data.columns):
        missing.append("image")
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; a benchmark TSV needs index, image, question, answer.")
    return data


class SuiteYesNo(ImageYORNDataset):
    """A yes/no TSV of the suite; VLMEvalKit picks POPE or MME rating from the name."""

    def load_data(self, dataset):
        return _load_suite_tsv(dataset)


class SuiteVQA(ImageVQADataset):
    """An open-answer TSV of the suite; ``TextVQA`` in the name selects VQA accuracy (10 annotators)."""

    def load_data(self, dataset):
        return _load_suite_tsv(dataset)


class SuiteMCQ(CustomMCQDataset):
    """The multiple-choice TSV, checked for its columns before VLMEvalKit reads it."""

    def load_data(self, dataset):
        data = _load_suite_tsv(dataset)
        if not {"A", "B"} <= set(data.columns):
            raise ValueError(f"{dataset}.tsv has no option columns A, B; a multiple-choice TSV needs them.")
        return data


SUITE_CLASSES = {"vqa": SuiteVQA, "pope": SuiteYesNo, "mme": SuiteYesNo, "choice": SuiteMCQ}


def _official(name: str) -> bool:
    from vlmeval.dataset import DATASET_CLASSES

    return any(name in cls.supported_datasets() for cls in DATASET_CLASSES)


def make_dataset(name: str):
    """A suite TSV by its ``OV2Suite_*`` name, else VLMEvalKit's own dataset of that name.

    A TSV of another name in ``$LMUData`` is checked for its columns first: VLMEvalKit would
    only warn and return nothing for one without them.
    """
    if name in VLMEVAL_NAMES:
        return SUITE_CLASSES[TASKS[VLMEVAL_NAMES[name]][0]](dataset=name)
    if not _official(name) and (Path(LMUDataRoot()) / f"{name}.tsv").is_file():
        _load_suite_tsv(name)
    dataset = build_dataset(name)
    if dataset is None:
        raise ValueError(f"VLMEvalKit knows no dataset {name!r} and there is no {name}.tsv in {LMUDataRoot()}.")
    return dataset


class Ov2LlavaVLM(BaseModel):
    """``generate_inner(message)``: images and text of one message -> the model's greedy answer."""

    INSTALL_REQ = False
    INTERLEAVE = False

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 16,
                 conv_template: str = "vicuna_v1", **kwargs):
        super().__init__()
        self.runner = make_runner(model_path, device, dtype, conv_template=conv_template)
        self.max_new_tokens = int(max_new_tokens)

    def use_custom_prompt(self, dataset) -> bool:
        # The suite's questions are asked exactly as in lmms-eval and lm-eval (bare question);
        # public benchmarks keep VLMEvalKit's own prompts.
        return dataset in VLMEVAL_NAMES

    def build_prompt(self, line, dataset=None):
        paths = self.dump_image(line, dataset)
        return [*({"type": "image", "value": p} for p in paths), {"type": "text", "value": str(line["question"])}]

    def generate_inner(self, message, dataset=None) -> str:
        images = [load_image(m["value"]) for m in message if m["type"] == "image"]  # the training decoder
        text = "\n".join(m["value"] for m in message if m["type"] == "text")
        return self.runner.generate([text], [images], self.max_new_tokens)[0]


def evaluate(model: Ov2LlavaVLM, dataset, work_dir: str | Path, model_name: str = "ov2_llava") -> dict:
    """Infer with VLMEvalKit's ``infer_data_job`` and score with ``--judge exact_matching``.

    ``dataset``: a name (see :func:`make_dataset`) or a VLMEvalKit dataset object."""
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import get_pred_file_path

    work_dir = str(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    dataset = make_dataset(dataset) if isinstance(dataset, str) else dataset
    infer_data_job(model, work_dir=work_dir, model_name=model_name, dataset=dataset, verbose=False, api_nproc=1)
    pred_file = get_pred_file_path(work_dir, model_name, dataset.dataset_name, use_env_format=True)
    score = dataset.evaluate(pred_file, model="exact_matching", nproc=1)
    return {"predictions": pred_file, "score": score.to_dict(orient="list") if isinstance(score, pd.DataFrame) else score}


def register() -> None:
    """Make ``Ov2LlavaVLM`` visible to ``run.py --config`` (it looks classes up in ``vlmeval.vlm``)."""
    import vlmeval.vlm

    vlmeval.vlm.Ov2LlavaVLM = Ov2LlavaVLM


def main(argv: list[str] | None = None) -> None:
    """VLMEvalKit's ``run.py`` with our class registered: same flags (``--config``, ``--judge``...)."""
    from vlmeval.run import main as run_main

    register()
    sys.argv = ["run.py", *(sys.argv[1:] if argv is None else argv)]
    run_main()


if __name__ == "__main__":
    main()
