"""Batched JPEG decoding on the GPU (torchvision's ``decode_jpeg`` on a CUDA device, nvJPEG) against the CPU
paths of the training streams, for the same photos and the same inception crops.

    python -m bench.gpu_jpeg_decode --source-size 512 1024 --target-size 84 224 --batch 256 --out bench/results

Prepared for a machine with a GPU (none was lent while writing it; ``--device cpu`` runs the same code on
torchvision's CPU decoder, to check the script). Per (source, target): images/s of

- ``cpu_full``, ``cpu_reduced``: one CPU thread, ``decode_image`` + crop, and ``streaming.open_cropped``
  (the streams' two paths), per CPU-second;
- ``gpu_batched``: ``decode_jpeg(list of encoded tensors, device=...)`` for the whole batch, then each crop
  resized on the device (``resized_crop``, bilinear, antialias), wall time with the device synchronised;
  it uses the host's CPU only to launch, so its images/s is what one GPU decodes while it trains nothing else.

``mean_abs_diff_vs_cpu_full`` compares the crops in [0, 1]. The training streams do not use the GPU path:
their workers are CPU processes and the augmentation after the crop (colour jitter, grayscale) runs on
PIL images; a GPU path would decode and augment in the main process, a different pipeline to build and
validate (EXIF orientation, CMYK and grayscale JPEGs, which nvJPEG handles differently) once this bench
shows it is worth it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from ov2_plugin.data.streaming import open_cropped
from ov2_plugin.data.transforms import CropStep, train_transform
from ov2_plugin.image_decoding import decode_image

from .input_pipeline import photo_jpegs


def crops(jpegs: list[bytes], target_px: int, n: int) -> tuple[CropStep, list[dict]]:
    step = CropStep.split(train_transform(target_px))
    params = []
    for i in range(n):
        torch.default_generator.manual_seed(i)
        size = decode_image(jpegs[i % len(jpegs)]).size
        params.append(step.params(*size))
    return step, params


def cpu_rate(jpegs, step, params, reduced: bool) -> tuple[float, list[np.ndarray]]:
    out = []
    start = time.process_time()
    for i, p in enumerate(params):
        data = jpegs[i % len(jpegs)]
        if reduced:
            torch.default_generator.manual_seed(i)
            image = open_cropped(data, step)
        else:
            image = step.full(decode_image(data), p)
        out.append(np.asarray(image))
    return len(params) / (time.process_time() - start), out


def gpu_rate(jpegs, step, params, device: str) -> tuple[float, list[np.ndarray]]:
    encoded = [torch.frombuffer(bytearray(jpegs[i % len(jpegs)]), dtype=torch.uint8) for i in range(len(params))]
    h, w = step.op.size

    def run() -> list[torch.Tensor]:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        return [F.resized_crop(img, p["top"], p["left"], p["height"], p["width"], [h, w], antialias=True)
                if "top" in p else F.resize(img, [h, w], antialias=True) for img, p in zip(images, params)]

    run()  # warm-up: nvJPEG handles, kernels
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    out = run()
    sync()
    rate = len(params) / (time.perf_counter() - start)
    return rate, [o.permute(1, 2, 0).cpu().numpy() for o in out]


def mean_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(x.astype(float) - y.astype(float)).mean() / 255 for x, y in zip(a, b)]))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-size", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--target-size", type=int, nargs="+", default=[84, 224])
    parser.add_argument("--batch", type=int, default=256, help="images decoded in one GPU call")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU machine, or pass --device cpu to check the script")
    torch.set_num_threads(1)
    rows = []
    for source_px in args.source_size:
        jpegs = photo_jpegs(source_px)
        for target_px in args.target_size:
            step, params = crops(jpegs, target_px, args.batch)
            full_rate, full = cpu_rate(jpegs, step, params, reduced=False)
            reduced_rate, reduced = cpu_rate(jpegs, step, params, reduced=True)
            gpu, on_gpu = gpu_rate(jpegs, step, params, args.device)
            rows.append({"source_px": source_px, "target_px": target_px, "cpu_full_per_cpu_s": round(full_rate, 1),
                         "cpu_reduced_per_cpu_s": round(reduced_rate, 1), "gpu_batched_per_s": round(gpu, 1),
                         "mean_abs_diff_vs_cpu_full": {"cpu_reduced": round(mean_abs_diff(full, reduced), 5),
                                                       "gpu_batched": round(mean_abs_diff(full, on_gpu), 5)}})
            print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu (torchvision's decoder)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_jpeg_decode.json").write_text(json.dumps({"device": device, "batch": args.batch, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
