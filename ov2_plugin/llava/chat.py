"""The chat formats LLaVA families train and answer in, as data: one description per format gives both the
Jinja chat template saved with the processor (inference) and the text pieces the training data is cut into,
so the two can never disagree.

- ``vicuna`` (LLaVA-1.5 and LLaVA-NeXT's Vicuna/Llama models): ``USER: <image>\\nQ ASSISTANT: A</s>``;
- ``chatml`` (LLaVA-OneVision's ``qwen_1_5`` conversation, Qwen2 language models):
  ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<image>\\nQ<|im_end|>\\n``
  ``<|im_start|>assistant\\nA<|im_end|>\\n``.
An answer ends with ``answer_end``; ``{eos}`` there is the tokenizer's end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    name: str
    user_open: str  # before a user turn's content
    user_close: str  # after it
    assistant_open: str  # the generation prompt: what precedes an answer
    answer_open: str  # between the generation prompt and the answer's text
    answer_end: str  # after the answer ("{eos}": the tokenizer's EOS)
    system_open: str = ""
    system_close: str = ""
    default_system: str = ""  # rendered when the conversation brings no system message
    special_tokens: tuple[str, ...] = ()  # tokens the tokenizer must hold whole

    def prompt(self, question: str, first: bool = True) -> str:
        """A user turn and the generation prompt, exactly as :meth:`jinja` renders them (``first``: with the
        default system text before it)."""
        system = f"{self.system_open}{self.default_system}{self.system_close}" if first and self.default_system else ""
        return f"{system}{self.user_open}{question}{self.user_close}{self.assistant_open}"

    def answer(self, text: str, eos: str) -> str:
        return f"{self.answer_open}{text}{self.answer_end.format(eos=eos)}"

    def jinja(self) -> str:
        """transformers' chat template. Content may be a string or HF's list of ``{"type": "image"|"text"}``
        items; an image item renders as ``<image>\\n``, as LLaVA's data puts it."""
        content = (
            "{% if message['content'] is string %}{{ message['content'] }}"
            "{% else %}{% for item in message['content'] %}"
            "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
            "{% endfor %}{% endif %}"
        )
        system_text = "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}"
        default = ""
        if self.default_system:
            default = (f"{{% if messages[0]['role'] != 'system' %}}{_lit(self.system_open + self.default_system)}"
                       f"{_lit(self.system_close)}{{% endif %}}")
        answer_end = _lit(self.answer_end).replace("{eos}", "' + eos_token + '")
        return (
            default
            + "{% for message in messages %}"
            + f"{{% if message['role'] == 'system' %}}{_lit(self.system_open)}{system_text}{_lit(self.system_close)}"
            + f"{{% elif message['role'] == 'user' %}}{_lit(self.user_open)}{content}{_lit(self.user_close)}"
            + f"{{% else %}}{_lit(self.assistant_open + self.answer_open)}{content}{answer_end}"
            + "{% endif %}{% endfor %}"
            + f"{{% if add_generation_prompt %}}{_lit(self.assistant_open)}{{% endif %}}"
        )


def _lit(text: str) -> str:
    """``text`` as a Jinja expression that prints it verbatim (newlines and quotes escaped)."""
    if not text:
        return ""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "{{ '" + escaped + "' }}"


VICUNA = ChatFormat(
    "vicuna", user_open="USER: ", user_close=" ", assistant_open="ASSISTANT:", answer_open=" ", answer_end="{eos}",
    system_close=" ",
)
CHATML = ChatFormat(
    "chatml", user_open="<|im_start|>user\n", user_close="<|im_end|>\n", assistant_open="<|im_start|>assistant\n",
    answer_open="", answer_end="<|im_end|>\n", system_open="<|im_start|>system\n", system_close="<|im_end|>\n",
    default_system="You are a helpful assistant.", special_tokens=("<|im_start|>", "<|im_end|>"),
)
CHAT_FORMATS = {f.name: f for f in (VICUNA, CHATML)}
