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

from ..image_decoding import decode_image
from ..llava.archs import ARCHS
from ..llava.build import ADAPTER_CONFIG, load_llava, lora_base


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


ORIGINAL_MODEL_TYPE = "llava_llama"  # the config of llava-torch's LlavaLlamaForCausalLM


def check_model_dir(path: str | Path) -> Path:
    """The boundary check for ``--model``: an HF LLaVA, LLaVA-NeXT or LLaVA-OneVision folder (``ARCHS``), a LoRA
    adapter folder over one, or an original-LLaVA folder; else a message with the fix."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model folder {str(path)!r} does not exist; pass a LLaVA folder written by 'ov2 llava-build' or 'ov2 llava-train'."
        )
    config = path / "config.json"
    if not config.is_file() and (path / ADAPTER_CONFIG).is_file():
        lora_base(path)
        return path
    if not config.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; pass a LLaVA folder written by 'ov2 llava-build'.")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in (*ARCHS, ORIGINAL_MODEL_TYPE):
        raise ValueError(
            f"{str(path)!r} holds a {model_type!r} model, not a LLaVA ({', '.join(repr(a) for a in ARCHS)}, or the "
            f"original code's '{ORIGINAL_MODEL_TYPE}'); the evaluation adapters take LLaVA folders (build one with "
            f"'ov2 llava-build --arch {'|'.join(ARCHS)}')."
        )
    return path


def make_runner(pretrained: str | Path, device: str = "cpu", dtype: str = "float32", batch_size: int = 1,
                conv_template: str = "vicuna_v1") -> LlavaRunner | OriginalLlavaRunner:
    """The runner for the folder's kind: an HF LLaVA of any family in ``ARCHS`` (or a LoRA adapter over
    one) or original LLaVA.

    ``conv_template`` (a key of llava-torch's ``conv_templates``) only applies to original LLaVA,
    whose checkpoints do not record the template they were trained with; HF folders carry theirs.
    """
    path = check_model_dir(pretrained)
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == ORIGINAL_MODEL_TYPE:
        return OriginalLlavaRunner(path, device=device, dtype=dtype, conv_template=conv_template)
    return LlavaRunner(path, device=device, dtype=dtype, batch_size=batch_size)


class LlavaRunner:
    """Load an HF LLaVA, LLaVA-NeXT or LLaVA-OneVision folder (or a LoRA adapter folder over one) once; generate
    answers in batches and score continuations.

    ``batch_size`` questions are decoded together with left padding; ``generate`` is greedy. Anyres images of
    different sizes batch together: the processor expands each ``<image>`` to its own tile count and the
    model selects each image's tiles by ``image_sizes``, so a batch answers as its questions one by one.
    """

    def __init__(self, pretrained: str | Path, device: str = "cpu", dtype: str = "float32", batch_size: int = 1):
        path = check_model_dir(pretrained)
        self.device = torch.device(device)
        model, self.processor = load_llava(path, dtype=getattr(torch, dtype))
        self.model = model.to(self.device).eval()
        self.nested_images = ARCHS[self.model.config.model_type].multi_image  # OneVision: several images, a square each
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
        """The processor's batch. OneVision takes the images nested per prompt (prompts without one left out, as
        its image processor drops them): a prompt with several images gets one square tile each, its
        multi-image rule; the flat list it would otherwise get tiles every image as if alone."""
        decoded = [[decode_image(im) for im in ims] for ims in images]  # upright, transparency on white, 16-bit scaled
        if self.nested_images:
            given = [ims for ims in decoded if ims] or None
        else:
            given = [im for ims in decoded for im in ims] or None
        batch = self.processor(text=prompts, images=given, return_tensors="pt", padding=True)
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


class OriginalLlavaRunner:
    """An original-LLaVA (``llava-torch``) checkpoint, asked as LLaVA's own ``llava/eval`` scripts ask it.

    LLaVA's loader (``load_pretrained_model``; an ``ov2:`` tower is rebuilt through
    :func:`ov2_plugin.llava.original.install`), a conversation template, ``tokenizer_image_token``,
    ``process_images`` and greedy ``generate``. One question at a time (``batch_size`` 1): LLaVA's
    ``generate`` takes no attention mask, so left-padded batches would change the answers.
    """

    batch_size = 1

    def __init__(self, pretrained: str | Path, device: str = "cpu", dtype: str = "float32", conv_template: str = "vicuna_v1"):
        try:
            from llava.conversation import conv_templates
            from llava.model.builder import load_pretrained_model
        except ImportError as err:
            raise ImportError(
                f"{str(pretrained)!r} is an original-LLaVA checkpoint; reading it needs the original code: "
                "pip install --no-deps llava-torch==1.2.2.post1"
            ) from err
        from ..llava.original import install

        if conv_template not in conv_templates:
            raise ValueError(f"Unknown conv_template {conv_template!r}; LLaVA has {', '.join(sorted(conv_templates))}.")
        install()
        path = check_model_dir(pretrained)
        name = path.name if "llava" in path.name.lower() else f"llava-{path.name}"  # the loader picks LLaVA by name
        self.tokenizer, model, self.image_processor, _ = load_pretrained_model(str(path), None, name, device=device)
        self.model = model.to(dtype=getattr(torch, dtype)).eval()  # the loader always loads float16
        self.device = torch.device(device)
        self.template = conv_templates[conv_template]

    def prompt(self, question: str, num_images: int = 1) -> str:
        from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN

        image = DEFAULT_IMAGE_TOKEN
        if getattr(self.model.config, "mm_use_im_start_end", False):
            image = DEFAULT_IM_START_TOKEN + image + DEFAULT_IM_END_TOKEN
        conv = self.template.copy()
        conv.append_message(conv.roles[0], (image + "\n") * num_images + question)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def _inputs(self, text: str, images: list[Image.Image]) -> dict:
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.mm_utils import process_images, tokenizer_image_token

        ids = tokenizer_image_token(text, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].to(self.device)
        if not images:
            return {"input_ids": ids}
        images = [decode_image(im) for im in images]
        pixels = process_images(images, self.image_processor, self.model.config).to(self.device, self.model.dtype)
        return {"input_ids": ids, "images": pixels, "image_sizes": [im.size for im in images]}

    @torch.inference_mode()
    def generate(self, questions: list[str], images: list[list[Image.Image]], max_new_tokens: int = 16,
                 until: list[str] | None = None) -> list[str]:
        out = []
        for question, ims in zip(questions, images):
            inputs = self._inputs(self.prompt(question, len(ims)), ims)
            ids = self.model.generate(
                inputs.pop("input_ids"), **inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            out.append(_cut(self.tokenizer.decode(ids[0], skip_special_tokens=True), until).strip())
        return out

    @torch.inference_mode()
    def loglikelihood(self, question: str, images: list[Image.Image], continuation: str) -> tuple[float, bool]:
        """As :meth:`LlavaRunner.loglikelihood`; the continuation's tokens are the last ones, so
        the image token's expansion into patch features does not move them."""
        prompt = self.prompt(question, len(images))
        full = self._inputs(prompt + continuation, images)
        n_cont = full["input_ids"].shape[1] - self._inputs(prompt, [])["input_ids"].shape[1]
        if n_cont <= 0:
            return 0.0, True
        logits = self.model(**full).logits[0, -n_cont - 1 : -1].float()
        target = full["input_ids"][0, -n_cont:]
        total = torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum().item()
        return total, bool((logits.argmax(-1) == target).all())


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
