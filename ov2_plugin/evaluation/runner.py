"""One way to ask a LLaVA + OpenVision 2 model questions, shared by the three framework adapters.

All three adapters (lmms-eval, VLMEvalKit, lm-eval) hand their requests to :class:`LlavaRunner`,
so the prompt (the checkpoint's own chat template), preprocessing and greedy decoding are the
same whichever framework asks: the scores can then only differ by each framework's scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_model_dir(path: str | Path) -> Path:
    """The boundary check for ``--model``: an existing HF LLaVA folder, else a message with the fix."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model folder {str(path)!r} does not exist; pass a LLaVA folder written by 'ov2 llava-build' or 'ov2 llava-train'."
        )
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; pass a LLaVA folder written by 'ov2 llava-build'.")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "llava":
        raise ValueError(
            f"{str(path)!r} holds a {model_type!r} model, not an HF LLaVA ('llava'); the evaluation adapters "
            "take LLaVA folders (build one with 'ov2 llava-build')."
        )
    return path


class LlavaRunner:
    """Load an HF LLaVA folder once; generate answers in batches and score continuations.

    ``batch_size`` questions are decoded together with left padding; ``generate`` is greedy.
    """

    def __init__(self, pretrained: str | Path, device: str = "cpu", dtype: str = "float32", batch_size: int = 1):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        import ov2_plugin  # noqa: F401  (registers the OpenVision 2 tower with transformers)

        path = check_model_dir(pretrained)
        self.device = torch.device(device)
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only batching: prompts end together
        self.batch_size = max(1, int(batch_size))

    def prompt(self, question: str, num_images: int = 1) -> str:
        """The user turn with ``num_images`` images before the question, ready for the answer."""
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if self.processor.chat_template:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return "<image>\n" * num_images + question

    def _inputs(self, prompts: list[str], images: list[list[Image.Image]]):
        flat = [im.convert("RGB") for ims in images for im in ims]
        batch = self.processor(text=prompts, images=flat or None, return_tensors="pt", padding=True)
        return batch.to(self.device)

    @torch.inference_mode()
    def generate(self, questions: list[str], images: list[list[Image.Image]], max_new_tokens: int = 16,
                 until: list[str] | None = None) -> list[str]:
        """Greedy answers, one per question, cut at the first of the ``until`` strings."""
        out: list[str] = []
        for start in range(0, len(questions), self.batch_size):
            qs, ims = questions[start : start + self.batch_size], images[start : start + self.batch_size]
            batch = self._inputs([self.prompt(q, len(i)) for q, i in zip(qs, ims)], ims)
            ids = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            texts = self.tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(_cut(t, until).strip() for t in texts)
        return out

    @torch.inference_mode()
    def loglikelihood(self, question: str, images: list[Image.Image], continuation: str) -> tuple[float, bool]:
        """log p(continuation | image, question) and whether greedy decoding would produce it."""
        prompt = self.prompt(question, len(images))
        full = self._inputs([prompt + continuation], [images])
        n_prompt = self._inputs([prompt], [images])["input_ids"].shape[1]
        logits = self.model(**full).logits[0, n_prompt - 1 : -1].float()  # positions predicting the continuation
        target = full["input_ids"][0, n_prompt:]
        if target.numel() == 0:
            return 0.0, True
        logprobs = torch.log_softmax(logits, dim=-1)
        total = logprobs.gather(1, target[:, None]).sum().item()
        return total, bool((logits.argmax(-1) == target).all())


def _cut(text: str, until: list[str] | None) -> str:
    for stop in until or ():
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def build_tiny_llava(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random-weights LLaVA (tiny OpenVision 2 tower at ``image_size`` px, a 2-layer Llama,
    a word tokenizer of the built-in vocabulary) saved to ``out_dir``: the fixture for tests and
    smoke runs when no trained model is at hand. Built with the LLaVA integration's builder."""
    from ..configuration import Ov2VisionConfig
    from ..data.instructions import vocabulary
    from ..llava import build_llava, build_word_tokenizer, save_llava, tiny_llama_config
    from ..modeling_vision import Ov2VisionModel

    torch.manual_seed(seed)
    tower = Ov2VisionModel(Ov2VisionConfig.from_preset("tiny", image_size=image_size))
    words = [*vocabulary(), "shape", "written", "colour", "word"]
    tokenizer = build_word_tokenizer(words)
    model, processor = build_llava(tower, tiny_llama_config(len(tokenizer)), tokenizer=tokenizer)
    return save_llava(model, processor, out_dir)
