"""lm-eval model ``ov2_llava``: a multimodal ``LM`` for LLaVA models with an OpenVision 2 tower.

lm-eval (0.4.13) has no entry-point group for models: importing this module registers the
class with ``@register_model``, after which ``lm_eval.simple_evaluate(model="ov2_llava",
model_args="pretrained=DIR", tasks=[...])`` works (``ov2 eval --framework lm_eval`` does
exactly that). Multimodal requests carry their images in ``aux_arguments["visual"]``; lm-eval
only sends ``generate_until`` to models with ``MULTIMODAL = True``.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from .runner import default_device, make_runner


@register_model("ov2_llava")
class Ov2LlavaLM(LM):
    MULTIMODAL = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32",
                 batch_size: int | str | None = 1, conv_template: str = "vicuna_v1", **kwargs) -> None:
        super().__init__()
        batch = int(batch_size) if str(batch_size or 1).isdigit() else 1  # lm-eval may pass "auto"
        self.runner = make_runner(pretrained, device or default_device(), dtype, batch, conv_template)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="ov2_llava generate", disable=disable_tqdm):
            context, gen_kwargs, aux = req.args
            images = list((aux or {}).get("visual") or [])
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 32))
            # The prompt is the task's text; images go in front of it through the chat template.
            question = context.replace("<image>", "").strip()
            out.append(self.runner.generate([question], [images], max_new, until)[0])
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc="ov2_llava loglikelihood", disable=disable_tqdm):
            context, continuation, *aux = req.args
            images = list((aux[0] if aux else {}).get("visual") or [])
            out.append(self.runner.loglikelihood(context.replace("<image>", "").strip(), images, continuation))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("ov2_llava scores image-grounded answers; rolling perplexity is not supported.")
