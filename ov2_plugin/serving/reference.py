"""What a server should answer: Hugging Face ``generate`` on the same prompt, greedy, in this process.

The prompt is the folder's own chat template with one ``<image>`` item per image, as vLLM and ``transformers
serve`` render an OpenAI chat turn. ``add_special_tokens`` decides the BOS: ``transformers serve`` and the
training data (``ov2 llava-train``) put the tokenizer's BOS first; vLLM's chat endpoint adds none unless the
request says ``"add_special_tokens": true``, because it expects the chat template to write it, and ours does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    prompt_ids: list[int]
    output_ids: list[int]  # the new tokens only
    logprobs: list[float]  # each chosen token's log-probability under the raw logits (vLLM's default logprobs)
    text: str  # decoded without special tokens, as the servers return it
    seconds: float


def load(model_dir):
    """(model, processor) of a LLaVA folder of any arch, in eval mode."""
    from ..llava.build import load_llava

    model, processor = load_llava(model_dir)
    return model.eval(), processor


def generate(model, processor, images: list, question: str, max_new_tokens: int = 8,
             add_special_tokens: bool = False) -> Generation:
    """Greedy tokens for one user turn (``images`` are PIL images, in the order they appear)."""
    messages = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    # nested per prompt, as the servers' chat templating passes them: LLaVA-OneVision then gives each of several
    # images one square tile (a flat list would tile each as anyres, as for separate prompts)
    inputs = processor(images=[images] if images else None, text=text, return_tensors="pt",
                       add_special_tokens=add_special_tokens)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    seconds = time.perf_counter() - start
    new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, new)]
    decoded = processor.tokenizer.decode(new, skip_special_tokens=True)
    return Generation(inputs["input_ids"][0].tolist(), new, logprobs, decoded, seconds)
