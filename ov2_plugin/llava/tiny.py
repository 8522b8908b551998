"""Small language models made on the spot, for tests and the offline end-to-end run.

No language model can be downloaded here, so the pipeline is exercised with a randomly
initialised Llama and a word-level tokenizer built from a word list. One token per word keeps
short answers to one or two tokens, which a tiny model learns in minutes.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
PUNCTUATION = tuple(".,:;?!\"'()-")


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A case-preserving whitespace-and-punctuation word tokenizer: ids 0-4 are the special tokens.

    Each word is in the vocabulary as given, lower-cased, capitalised and upper-cased, so "Which"
    or "USER" in a prompt is known and an upper-case option letter survives decoding, as
    multiple-choice parsers need. Words outside the list map to ``<unk>``; punctuation marks are always in the vocabulary and
    a BOS is prepended when ``add_special_tokens`` is on. ``<image>`` is a special token, so LLaVA's
    processors never split it.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    forms = {form for w in words for form in (w, w.lower(), w.capitalize(), w.upper())}
    for word in [*PUNCTUATION, *sorted(forms)]:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides) -> LlamaConfig:
    """A Llama config small enough for a CPU test (hidden 64, 2 layers by default)."""
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=max(1, hidden_size // 32),
        num_key_value_heads=max(1, hidden_size // 32),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**(kwargs | overrides))
