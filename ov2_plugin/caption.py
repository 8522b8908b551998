"""``ov2 caption IMAGE... --model DIR``: print a caption for each image.

Decoding is transformers' own ``generate``, so its standard options are flags here: beam search,
sampling, ``--repetition_penalty`` and ``--no_repeat_ngram_size`` (a small model shown photos
unlike its training data tends to repeat a word to the length limit; these stop that).
"""

from __future__ import annotations

import argparse

import torch
from transformers import CLIPImageProcessor

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
    "no_repeat_ngram_size": (int, "never repeat an n-gram of this size"),
    "length_penalty": (float, "beam search: score / length**penalty"),
}


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
    generate_kwargs = {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) not in (None, False)}
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        captions = caption_images(model, images, args.max_new_tokens, saved_image_processor(resolve_model_path(args.model), model.config.vision_config), **generate_kwargs)
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    return captions
