"""Input-pipeline benchmark: can one CPU core decode + augment as fast as training consumes images?

    python -m bench.input_pipeline [--images 512] [--source-size 256] [--out bench/results]

Rates are images per CPU-second (``time.process_time``: the CPU time this process used, summed
over its threads), so that other jobs sharing the machine do not distort them; wall-clock
throughput on an idle machine with N cores is about N times the per-core-second rate.

Measures, on this machine:
  1. decode + augment (inception crop, colour jitter, grayscale, normalise) images/s on ONE
     core, from real JPEG tar shards read through the same ``WebDatasetCaptions`` pipeline
     that training uses (tar read, grouping, JPEG decode, transform), at 84 px and 224 px
     output (the release's two stages) and 64 px (the tiny preset);
  2. the training step's cost (forward + backward + AdamW) per image for the tiny preset at
     64 px and B/16 at 224 px (each with its preset decoder), on the CPU;
and the ratio of the two: the share of CPU time a CPU-trained run spends on its data.

The JPEGs are built-in scenes saved at ``--source-size`` px (img2dataset commonly stores
256-512 px); decode cost depends on pixel count and JPEG settings, not on the picture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ov2_plugin.configuration import Ov2Config
from ov2_plugin.data.captions import CaptionCollator
from ov2_plugin.data.scene_shards import write_scene_shards
from ov2_plugin.data.transforms import train_transform
from ov2_plugin.data.webdataset_source import WebDatasetCaptions
from ov2_plugin.modeling_captioner import Ov2ForCaptioning
from ov2_plugin.pretrain import bf16_is_fast
from ov2_plugin.tokenization import build_caption_tokenizer


def decode_rate(shards: str, image_size: int, limit: int) -> float:
    """Images/s of the training data pipeline in this process, one thread."""
    data = WebDatasetCaptions(shards, train_transform(image_size), shuffle_buffer=100, max_bad_fraction=1.0)
    it = iter(data)
    next(it)  # open the first shard outside the timing
    start, n = time.process_time(), 0
    for _ in it:
        n += 1
        if n >= limit:
            break
    return n / (time.process_time() - start)


def train_rate(preset: str, image_size: int, batch: int, steps: int, bf16: bool) -> float:
    """Images/s consumed by forward + backward + AdamW step (data already in memory; the preset's decoder)."""
    torch.manual_seed(0)
    model = Ov2ForCaptioning(Ov2Config.from_preset(preset, image_size=image_size)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.2)
    collate = CaptionCollator(build_caption_tokenizer())
    caption = "two red circles and one blue square on the left. the word \"cat\" is written at the top."
    batch_data = collate([{"pixel_values": torch.randn(3, image_size, image_size), "caption": caption}] * batch)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch_data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.process_time()
    for _ in range(steps):
        step()
    return batch * steps / (time.process_time() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="images decoded per measurement")
    parser.add_argument("--source-size", type=int, default=256, help="stored JPEG size (px)")
    parser.add_argument("--b16-steps", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    bf16 = bf16_is_fast("cpu")  # as ov2 pretrain's recipes choose: emulated bf16 is slower than fp32
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": threads, "bf16": bf16, "cpu": platform.processor(),
                    "load_average_at_start": os.getloadavg()},
        "source_jpeg_px": args.source_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        per_shard = 128
        n_shards = max(2, -(-args.images // per_shard) + 1)
        write_scene_shards(tmp, n_shards, per_shard, image_size=args.source_size)
        shards = f"{tmp}/{{00000..{n_shards - 1:05d}}}.tar"
        torch.set_num_threads(1)  # one core, as one DataLoader worker has
        results["decode_augment_img_per_cpu_s"] = {
            str(size): round(decode_rate(shards, size, args.images), 1) for size in (64, 84, 224)
        }
        torch.set_num_threads(threads)
    results["train_img_per_cpu_s"] = {
        "tiny@64 (batch 64)": round(train_rate("tiny", 64, 64, 5, bf16), 1),
        "B/16@224 (batch 8)": round(train_rate("B/16", 224, 8, args.b16_steps, bf16), 2),
    }
    decode = results["decode_augment_img_per_cpu_s"]
    train = results["train_img_per_cpu_s"]
    results["data_share_of_cpu_time"] = {  # decode cost / (decode + train cost), per image
        "tiny@64": round((1 / decode["64"]) / (1 / decode["64"] + 1 / train["tiny@64 (batch 64)"]), 3),
        "B/16@224": round((1 / decode["224"]) / (1 / decode["224"] + 1 / train["B/16@224 (batch 8)"]), 4),
    }
    results["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_pipeline.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
