"""lmms-eval model ``ov2_llava``: LLaVA models with an OpenVision 2 vision tower.

Registered through the ``lmms_eval.models`` entry point (``MANIFEST`` below, named in
pyproject.toml), so with this package installed::

    lmms-eval --model ov2_llava --model_args pretrained=DIR,batch_size=8 --tasks textvqa_val,pope

works with no change to lmms-eval. Answers come from :class:`~ov2_plugin.evaluation.runner.LlavaRunner`
(the checkpoint's chat template, greedy decoding), so lmms-eval, VLMEvalKit and lm-eval ask the
same model the same way. Original-LLaVA (``llava-torch``) checkpoints work too, through LLaVA's
own loader and conversation template (``conv_template=vicuna_v1`` by default).
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from .runner import default_device, make_runner

MANIFEST = ModelManifest(model_id="ov2_llava", simple_class_path="ov2_plugin.evaluation.lmms_eval_model.Ov2Llava")


class Ov2Llava(lmms):
    """``generate_until`` in batches of ``batch_size``; ``loglikelihood`` one request at a time."""

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32",
                 batch_size: int | str | None = 1, conv_template: str = "vicuna_v1", **kwargs) -> None:
        super().__init__()
        unknown = sorted(k for k, v in kwargs.items() if v is not None)
        if unknown:
            raise ValueError(
                f"ov2_llava does not know the model_args {unknown}; use pretrained, device, dtype, batch_size, conv_template."
            )
        batch = int(batch_size) if str(batch_size or 1).isdigit() else 1  # lmms-eval may pass "auto"
        self.runner = make_runner(pretrained, device or default_device(), dtype, batch, conv_template)
        self.batch_size_per_gpu = self.runner.batch_size

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        # Same generation settings in a batch: group requests by their gen_kwargs, keep the order.
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        pbar = tqdm(total=len(requests), desc="ov2_llava generate", disable=self.rank != 0)
        step = self.runner.batch_size
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                questions, images = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    questions.append(context)
                    images.append(list(doc_to_visual(self._doc(task, split, doc_id)) or []))
                answers = self.runner.generate(questions, images, int(gen_kwargs.get("max_new_tokens", 32)), until)
                for i, answer in zip(chunk, answers):
                    results[i] = answer
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), answer)
                pbar.update(len(chunk))
        pbar.close()
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc="ov2_llava loglikelihood", disable=self.rank != 0):
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            out.append(self.runner.loglikelihood(context, list(doc_to_visual(doc) or []), continuation))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("ov2_llava answers single-turn tasks; multi-round generation is not supported.")
