"""OpenVision 2 as the vision tower of LLaVA: Hugging Face LLaVA, LLaVA-NeXT and LLaVA-OneVision (``build``,
``archs``), the original
haotian-liu LLaVA code (``original``), staged training and LoRA (``train``).

Public entry points are imported lazily by their users; this module pulls in only transformers.
"""

from .archs import ARCHS
from .build import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    build_llava,
    llava_arch,
    load_llava,
    make_processor,
    num_image_tokens,
    save_llava,
)
from .tiny import build_word_tokenizer, tiny_llama_config

__all__ = [
    "ARCHS",
    "CHAT_TEMPLATE",
    "IMAGE_TOKEN",
    "build_llava",
    "build_word_tokenizer",
    "llava_arch",
    "load_llava",
    "make_processor",
    "num_image_tokens",
    "save_llava",
    "tiny_llama_config",
]
