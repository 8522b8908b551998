"""Vision-tower cost inside HF LLaVA: OpenVision 2 vs a CLIPVisionModel of the same shape.

    python bench/llava_tower.py --preset S/16 --image_size 224 --batch 8

Both towers are built inside ``LlavaForConditionalGeneration`` (same tiny language model, same
projector) and timed through ``get_image_features`` (tower + feature selection + projector),
the call LLaVA makes per image batch, under ``no_grad`` as with a frozen tower. The CLIP
config copies width, depth, heads, MLP, patch, resolution and exact GELU, so the ratio shows the
cost of our implementation, not of a different architecture. Time: the median of interleaved
repeats in one process. Memory: each tower runs in its own child process and reports its
peak-RSS rise over the forward passes (CPU; Linux, peak reset after building) or ``max_memory_allocated`` (CUDA). Prints and
writes JSON with the ratios (OV2 / CLIP; below 1 means OV2 is cheaper).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch


def build(kind: str, preset: str, image_size: int, device: str):
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    import ov2_plugin  # noqa: F401  (registers the OV2 config types)
    from ov2_plugin import Ov2VisionConfig
    from ov2_plugin.llava.tiny import tiny_llama_config

    ov2 = Ov2VisionConfig.from_preset(preset, image_size=image_size)
    if kind == "ov2":
        vision = ov2
    else:
        vision = CLIPVisionConfig(
            hidden_size=ov2.hidden_size,
            intermediate_size=ov2.intermediate_size,
            num_hidden_layers=ov2.num_hidden_layers,
            num_attention_heads=ov2.num_attention_heads,
            patch_size=ov2.patch_size,
            image_size=image_size,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
        )
    tokens = (image_size // ov2.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=tiny_llama_config(64).to_dict(),
        image_token_index=5,
        image_seq_length=tokens,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.config._attn_implementation = "sdpa"
    return model.to(device).eval()


def image_features(model, pixels):
    return model.model.get_image_features(
        pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default"
    )


def peak_memory(kind: str, args) -> float:
    """MiB the forward passes add on top of the built model (run in this child process)."""
    from ov2_plugin.devices import peak_memory_bytes, reset_peak_memory

    device = torch.device(args.device)
    model = build(kind, args.preset, args.image_size, args.device)
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    with torch.no_grad():
        base = reset_peak_memory(device)  # building does not count
        for _ in range(3):
            image_features(model, pixels)
        return (peak_memory_bytes(device) - base) / 2**20


def timings(args) -> dict[str, float]:
    models = {k: build(k, args.preset, args.image_size, args.device) for k in ("ov2", "clip")}
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    times = {k: [] for k in models}
    with torch.no_grad():
        for k in models:  # warm-up
            image_features(models[k], pixels)
        for _ in range(args.repeats):
            for k, model in models.items():  # interleaved, so load changes hit both alike
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                image_features(model, pixels)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="S/16")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="Write the JSON result here too.")
    p.add_argument("--memory_of", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps({"peak_mib": peak_memory(args.memory_of, args)}))
        return
    ms = timings(args)
    mem = {}
    for kind in ("ov2", "clip"):
        child = [sys.executable, __file__, *sys.argv[1:], "--memory_of", kind]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        mem[kind] = json.loads(out)["peak_mib"]
    result = {
        "setting": {k: getattr(args, k) for k in ("preset", "image_size", "batch", "repeats", "device", "threads")},
        "machine": platform.processor() or platform.machine(),
        "forward_ms": ms,
        "forward_peak_mib": mem,
        "time_ratio_ov2_over_clip": ms["ov2"] / ms["clip"],
        "memory_ratio_ov2_over_clip": mem["ov2"] / mem["clip"] if mem["clip"] else None,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
