"""Input-pipeline benchmark: full against reduced-scale JPEG decoding, through the training pipeline, and
how many CPU cores one GPU needs.

    python -m bench.input_pipeline --source-size 512 1024 --target-size 84 224 --images 256 --out bench/results

For every (source size, target size) pair, real photos (scikit-image's bundled colour photos, resized
so their longer side is the source size, JPEG quality 90) go through the same path training takes:
img2dataset-layout tar shards -> ``WebDatasetCaptions`` (tar read, grouping, JPEG decode) -> inception
crop, colour jitter, random grayscale -> normalised tensor, once with ``reduced_decoding=False`` (the
full decode) and once with it on (``image_decoding.JpegImage``: the crop decoded at the coarsest DCT
scale that keeps the output's pixels). Both runs use the same seeds, so every sample gets the same
crop and jitter and the outputs can be compared sample by sample.

Rates are images per CPU-second of this process (``time.process_time``), one thread, as one
DataLoader worker runs: other jobs on a shared machine slow the wall clock but barely the CPU time
this process is charged. ``mean_abs_diff_vs_full`` is the mean absolute difference of the outputs
in [0, 1] pixel units (the normalisation undone), over all samples. Each rate is the best of
``--repeats`` passes, full and reduced interleaved. ``decode_crop_only_per_cpu_s``
times the decode and the crop alone (no tar reading, colour jitter or tensor conversion), the part
reduced decoding changes.

``DIR/input_pipeline.json``: ``{"machine": ..., "rows": [{source_px, target_px, decode,
images_per_cpu_s, mean_abs_diff_vs_full}, ...], "cores_per_gpu": [...]}``. ``cores_per_gpu`` estimates
how many such cores one H200 needs at each target size for L/14 and So400M/14: the GPU's images/s is
the bf16 FLOP rate it reached in ``bench.gpu`` (``bench/results-nvidia-h200-*.json``: counted FLOPs per
step / measured step time, OV2 keep 0.35) divided by the counted FLOPs per sample at that size
(``bench.flops``, 128-token captions). An estimate: at 84 px the GPU was not timed, and its shorter
sequences will likely reach a lower FLOP rate, so the estimate errs towards more cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ov2_plugin.data.streaming import open_cropped
from ov2_plugin.data.transforms import IMAGENET_STD, CropStep, train_transform
from ov2_plugin.data.webdataset_source import WebDatasetCaptions
from ov2_plugin.image_decoding import decode_image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")  # skimage.data, bundled
BENCH = Path(__file__).resolve().parent
GPU_RESULTS = {"L/14": BENCH / "results-nvidia-h200-L14.json", "So400M/14": BENCH / "results-nvidia-h200-So400M14.json"}


def photo_jpegs(source_px: int) -> list[bytes]:
    """The photos with their longer side resized to ``source_px`` (bicubic), saved as JPEG quality 90 (4:2:0)."""
    from skimage import data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = source_px / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_shards(folder: Path, jpegs: list[bytes], images: int, per_shard: int = 64) -> str:
    """``images`` samples (the photos in turn) in img2dataset-layout tars; returns the brace pattern."""
    import webdataset as wds

    shards = -(-images // per_shard)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for i in range(s * per_shard, min(images, (s + 1) * per_shard)):
                sink.write({"__key__": f"{i:09d}", "jpg": jpegs[i % len(jpegs)], "txt": "a photo."})
    return f"{folder}/{{00000..{shards - 1:05d}}}.tar"


def run_pipeline(pattern: str, target_px: int, reduced: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """(images per CPU-second, key -> normalised tensor) of one pass over the shards, one thread."""
    data = WebDatasetCaptions(pattern, train_transform(target_px), seed=0, shuffle_buffer=16, max_bad_fraction=1.0,
                              reduced_decoding=reduced)
    outputs = {}
    start = time.process_time()
    for sample in data:
        outputs[sample["key"]] = sample["pixel_values"]
    return len(outputs) / (time.process_time() - start), outputs


def decode_crop_rate(jpegs: list[bytes], target_px: int, reduced: bool, images: int) -> float:
    """Images per CPU-second of the decode and the crop alone (no tar, no colour jitter, no tensor), as the
    issue's first measurement: ``decode_image`` + the crop step, or ``streaming.open_cropped``."""
    step = CropStep.split(train_transform(target_px))
    start = time.process_time()
    for i in range(images):
        torch.default_generator.manual_seed(i)
        data = jpegs[i % len(jpegs)]
        if reduced:
            open_cropped(data, step)
        else:
            image = decode_image(data)
            step.full(image, step.params(*image.size))
    return images / (time.process_time() - start)


def mean_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return float(np.mean([((a[k] - b[k]) * std).abs().mean().item() for k in a]))


def pipeline_rows(source_sizes: list[int], target_sizes: list[int], images: int, repeats: int = 3) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source_px in source_sizes:
            folder = Path(tmp) / str(source_px)
            folder.mkdir()
            jpegs = photo_jpegs(source_px)
            pattern = write_shards(folder, jpegs, images)
            for target_px in target_sizes:
                run_pipeline(pattern, target_px, False)  # warm-up: file cache, imports, allocator
                rates: dict[str, list[float]] = {"full": [], "reduced": []}
                only: dict[str, list[float]] = {"full": [], "reduced": []}
                outputs = {}
                for _ in range(repeats):  # interleaved, so a burst of load on the machine hits both alike
                    for decode in ("full", "reduced"):
                        rate, outputs[decode] = run_pipeline(pattern, target_px, decode == "reduced")
                        rates[decode].append(rate)
                        only[decode].append(decode_crop_rate(jpegs, target_px, decode == "reduced", images))
                for decode in ("full", "reduced"):  # the best of the repeats: the least disturbed
                    rows.append({"source_px": source_px, "target_px": target_px, "decode": decode,
                                 "images_per_cpu_s": round(max(rates[decode]), 1),
                                 "mean_abs_diff_vs_full": round(mean_abs_diff(outputs["full"], outputs[decode]), 5),
                                 "decode_crop_only_per_cpu_s": round(max(only[decode]), 1),
                                 "repeats_images_per_cpu_s": [round(r, 1) for r in rates[decode]]})
                print(json.dumps(rows[-2:]), flush=True)
    return rows


def gpu_images_per_s(shape_name: str, image_px: int) -> dict | None:
    """Estimated training images/s of one H200 at ``image_px``: its measured bf16 FLOP rate for OV2 (keep 0.35)
    over the counted FLOPs per sample at that size. None when the bench has no H200 result for the shape."""
    from bench import variants
    from bench.flops import count_variant_flops

    path = GPU_RESULTS[shape_name]
    if not path.is_file():
        return None
    measured = json.loads(path.read_text())["variants"]["ov2-k0.35"]
    flop_rate = measured["flops_per_step"] / measured["median_step_s"]
    shape = variants.SHAPES[shape_name]
    variants.SHAPES["_at_size"] = replace(shape, vision={**shape.vision, "image_size": image_px})
    try:
        per_sample = count_variant_flops("ov2-k0.35", "_at_size", batch_size=1)
    finally:
        del variants.SHAPES["_at_size"]
    return {"measured_tflop_per_s": round(flop_rate / 1e12, 1), "measured_at": path.name,
            "gflop_per_sample": round(per_sample / 1e9, 1), "images_per_s": round(flop_rate / per_sample)}


def cores_per_gpu(rows: list[dict], target_sizes: list[int]) -> list[dict]:
    out = []
    for shape_name in GPU_RESULTS:
        for target_px in target_sizes:
            gpu = gpu_images_per_s(shape_name, target_px)
            if gpu is None:
                continue
            for row in (r for r in rows if r["target_px"] == target_px):
                out.append({"shape": shape_name, "target_px": target_px, "source_px": row["source_px"],
                            "decode": row["decode"], "gpu_images_per_s_estimate": gpu["images_per_s"],
                            "cores": round(gpu["images_per_s"] / row["images_per_cpu_s"], 1), "gpu": gpu})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-size", type=int, nargs="+", default=[512, 1024], help="stored JPEG size, longer side (px)")
    parser.add_argument("--target-size", type=int, nargs="+", default=[84, 224], help="training resolution (px)")
    parser.add_argument("--images", type=int, default=256, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per row; the best is kept")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    results: dict = {"machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                 "pillow": Image.__version__, "load_average_at_start": os.getloadavg()},
                     "photos": list(PHOTOS), "timing": "time.process_time, one thread"}
    torch.set_num_threads(1)  # one core, as one DataLoader worker has
    try:
        results["rows"] = pipeline_rows(args.source_size, args.target_size, args.images, args.repeats)
    finally:
        torch.set_num_threads(threads)
    results["load_average_at_end"] = os.getloadavg()
    results["cores_per_gpu"] = cores_per_gpu(results["rows"], args.target_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_pipeline.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "cores_per_gpu"}, indent=2))
    return results


if __name__ == "__main__":
    main()
