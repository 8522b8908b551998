"""``ov2 caption IMAGE... --model DIR``: print a caption for each image.

Decoding is transformers' own ``generate``, so its standard options are flags here: beam search,
sampling, ``--repetition_penalty`` and ``--no_repeat_ngram_size`` (a small model shown photos
unlike its training data tends to repeat a word to the length limit; these stop that). Flags left
out take the model folder's ``generation_config.json``: for a model ``ov2 pretrain`` wrote, greedy
with ``LOOP_STOP``; for a converted release, the authors' caption demo (greedy, 64 new tokens).
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from transformers import CLIPImageProcessor, GenerationConfig

from .image_processing import make_image_processor, saved_image_processor
from .loading import load_captioner, load_image, resolve_model_path
from .tokenization import build_caption_tokenizer

# generate() options exposed as flags: name -> (type, help)
GENERATION_FLAGS = {
    "num_beams": (int, "beam search width (1: greedy or sampling)"),
    "do_sample": (bool, "sample instead of taking the most likely token"),
    "temperature": (float, "sampling temperature"),
    "top_k": (int, "sample from the k most likely tokens"),
    "top_p": (float, "sample from the smallest set of tokens whose probability reaches p"),
    "repetition_penalty": (float, "divide the scores of tokens already generated (1.0: off; 1.2-1.5 stops loops)"),
    "no_repeat_ngram_size": (int, "never repeat an n-gram of this size (0: off; models from ov2 pretrain save 4)"),
    "length_penalty": (float, "beam search: score / length**penalty"),
}


# Saved with every model ``ov2 pretrain`` writes. Why 4: the built-in training captions repeat
# n-grams of up to 3 word pieces ("... on the right and one yellow square on the right", a word
# listed twice in a reading scene) and never of 4 (6,000 captions, shapes and reading, counted with
# the caption tokenizer), so no caption like the training data's is blocked, while a token can no
# longer repeat more than 4 times in a row and any loop must change within 4 tokens.
# ``repetition_penalty`` is not used: it also penalises the counts and colours a correct scene
# caption repeats ("three orange squares and three orange diamonds").
LOOP_STOP = {"no_repeat_ngram_size": 4}


def save_generation_defaults(model, folder: str | os.PathLike) -> GenerationConfig:
    """Write ``folder/generation_config.json``: the model's own (greedy, 64 new tokens) plus ``LOOP_STOP``.
    The model in memory keeps its configuration (the run's own evaluation decodes as before)."""
    config = copy.deepcopy(model.generation_config)
    config.update(**LOOP_STOP)
    config.save_pretrained(folder)
    return config


def caption_images(model, images, max_new_tokens: int = 64, processor: CLIPImageProcessor | None = None, **generate_kwargs) -> list[str]:
    processor = processor or make_image_processor(model.config.vision_config)
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(model.dtype)
    ids = model.generate(pixel_values, max_new_tokens=max_new_tokens, **generate_kwargs)
    return build_caption_tokenizer().batch_decode(ids, skip_special_tokens=True)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="ov2 caption", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="folder written by 'ov2 pretrain' or 'ov2 convert'")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="random seed (sampling)")
    for name, (kind, help_text) in GENERATION_FLAGS.items():
        if kind is bool:
            parser.add_argument(f"--{name}", action="store_true", help=help_text)
        else:
            parser.add_argument(f"--{name}", type=kind, default=None, help=help_text)
    args = parser.parse_args(argv)
    images = [load_image(p) for p in args.images]  # fail on a bad path before loading the model
    model = load_captioner(args.model).eval()
    # ``is not``: 0 is a value (``--no_repeat_ngram_size 0`` turns the saved default off), False is an unset switch
    generate_kwargs = {name: v for name in GENERATION_FLAGS if (v := getattr(args, name)) is not None and v is not False}
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        captions = caption_images(model, images, args.max_new_tokens, saved_image_processor(resolve_model_path(args.model), model.config.vision_config), **generate_kwargs)
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    return captions
