"""``ov2 convert SRC DST``: official OpenVision (2) releases -> our format, the reverse export
(``--reverse``), and warm starts from Hugging Face CLIP / SigLIP vision folders.

What SRC is decides what happens, read from its files (never from its name):
``open_clip_config.json`` -> release conversion; ``config.json`` of a CLIP/SigLIP model -> warm
start; with ``--reverse``, one of our checkpoints -> release (open_clip) layout.
"""

from __future__ import annotations

import argparse
import json

from ..loading import resolve_model_path
from .release import OPEN_CLIP_CONFIG, RESIZE_MODES, convert_release, export_release
from .warm_start import SUPPORTED, warm_start_to_folder


def convert(src: str, dst: str, reverse: bool = False, use_safetensors: bool = False, resize_mode: str | None = None,
            **warm_overrides) -> str:
    """Run the conversion SRC's files call for and return the report's summary."""
    folder = resolve_model_path(src)
    if resize_mode and (reverse or not (folder / OPEN_CLIP_CONFIG).is_file()):
        raise ValueError("--resize_mode applies to release conversions only (a folder with open_clip_config.json).")
    if warm_overrides and (reverse or (folder / OPEN_CLIP_CONFIG).is_file()):
        raise ValueError("--image_size applies to warm starts only; a release keeps its own image size (our encoder runs at any multiple of the patch size).")
    if not folder.is_dir():
        raise FileNotFoundError(f"{src!r} is not a folder; pass a release folder, one of our checkpoints, or hf-hub:org/name.")
    if reverse:
        return export_release(src, dst, use_safetensors=use_safetensors).summary()
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return convert_release(src, dst, resize_mode=resize_mode).summary()
    config_file = folder / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    if model_type in SUPPORTED:
        return warm_start_to_folder(src, dst, **warm_overrides).summary()
    raise ValueError(
        f"Do not know how to convert {src!r} (model_type {model_type!r}): expected an OpenVision release folder "
        f"({OPEN_CLIP_CONFIG} + weights), a Hugging Face CLIP/SigLIP folder ({', '.join(SUPPORTED)}), or one of our "
        "checkpoints with --reverse."
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="ov2 convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="release folder, HF CLIP/SigLIP folder, our checkpoint (--reverse), or hf-hub:org/name")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--reverse", action="store_true", help="export one of our checkpoints to the release's open_clip layout")
    parser.add_argument("--safetensors", action="store_true", help="with --reverse: write open_clip_model.safetensors instead of the .bin")
    parser.add_argument("--image_size", type=int, default=None, help="warm start: image size of the new encoder")
    parser.add_argument("--resize_mode", choices=RESIZE_MODES, default=None, help=(
        "release: preprocessing of the saved image processor; default the release's preprocess_cfg (squash), "
        "'shortest' resizes the shorter side and centre-crops as the authors' caption demo does"))
    args = parser.parse_args(argv)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    summary = convert(args.src, args.dst, reverse=args.reverse, use_safetensors=args.safetensors,
                      resize_mode=args.resize_mode, **overrides)
    print(summary)
    return summary
