"""``ov2 caption IMAGE... --model DIR``: print a caption for each image."""

from __future__ import annotations

import argparse

import torch

from .image_processing import make_image_processor
from .loading import load_captioner, load_image
from .tokenization import build_caption_tokenizer


def caption_images(model, images, num_beams: int = 1, max_new_tokens: int = 64) -> list[str]:
    processor = make_image_processor(model.config.vision_config)
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(model.dtype)
    ids = model.generate(pixel_values, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return build_caption_tokenizer().batch_decode(ids, skip_special_tokens=True)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="ov2 caption", description=__doc__)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="folder written by 'ov2 pretrain' or 'ov2 convert'")
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args(argv)
    images = [load_image(p) for p in args.images]  # fail on a bad path before loading the model
    model = load_captioner(args.model).eval()
    with torch.inference_mode():
        captions = caption_images(model, images, args.num_beams, args.max_new_tokens)
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    return captions
