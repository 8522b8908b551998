"""Resume cost against samples already trained: our saved stream position vs the Trainer's skipping.

    python -m bench.resume_cost [--trained 1000 10000 100000] [--out bench/results]

Writes img2dataset-layout tar shards of 1,000 samples (64 px JPEGs, inception augmentation to
64 px, shuffle blocks of 1,000, as ``ov2 pretrain --data webdataset`` reads them), then for each
number N of samples already trained measures the time until the stream yields sample N + 1:

- ``ours``: the stream starts from the position a checkpoint holds after N samples
  (``load_stream_state``): shards before it are never opened, the current shuffle block's tar
  members are re-read without decoding, then the next sample is decoded;
- ``trainer_skip``: what the Trainer does for a stream without a saved position
  (``skip_first_batches``): read, decode and augment the N samples, drop them, then the next one
  (collation of the dropped batches, which it also does, is not counted: a lower bound).

Times are CPU-seconds of this process (``time.process_time``, one thread), so other jobs on a
shared machine do not distort them; wall seconds are in the JSON too. The position after N samples
is computed (no broken samples, equal shards); at the smallest N the benchmark checks that both
ways yield the same next sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

PER_SHARD = 1000
BLOCK = 1000


def write_shards(root: Path, samples: int) -> str:
    import webdataset as wds

    from ov2_plugin.data.scene_shards import jpeg_bytes
    from ov2_plugin.data.scenes import make_scene

    scenes = [make_scene(0, i) for i in range(8)]
    images = [jpeg_bytes(s.render(64)) for s in scenes]
    shards = -(-samples // PER_SHARD)
    for k in range(shards):
        with wds.TarWriter(str(root / f"{k:05d}.tar")) as sink:
            for j in range(PER_SHARD):
                i = k * PER_SHARD + j
                sink.write({"__key__": f"{i:09d}", "jpg": images[i % 8], "txt": scenes[i % 8].caption})
    return f"{root}/{{00000..{shards - 1:05d}}}.tar"


def stream(pattern: str):
    from ov2_plugin.data.transforms import train_transform
    from ov2_plugin.data.webdataset_source import WebDatasetCaptions

    return WebDatasetCaptions(pattern, train_transform(64), shuffle_buffer=BLOCK, seed=0, max_bad_fraction=1.0)


def position_after(trained: int) -> dict:
    """The state a checkpoint holds after ``trained`` samples of one worker (no broken samples, equal shards)."""
    block = trained // BLOCK
    start = block * BLOCK
    worker = {"epoch": 0, "worker": 0, "block": block, "unit": start // PER_SHARD, "offset": start % PER_SHARD,
              "in_block": trained - start, "counter": {"good": trained, "counts": {}, "examples": {}, "seen_shards": []}}
    return {"format": 1, "world_size": 1, "rank": 0, "num_workers": 1, "epoch": 0, "next_worker": 0,
            "workers": {"0": worker}}


def timed(fn) -> tuple[dict, float, float]:
    wall, cpu = time.time(), time.process_time()
    out = fn()
    return out, time.process_time() - cpu, time.time() - wall


def ours(pattern: str, trained: int) -> dict:
    ds = stream(pattern)
    ds.load_stream_state(position_after(trained))
    return next(iter(ds))


def trainer_skip(pattern: str, trained: int) -> dict:
    it = iter(stream(pattern))
    for _ in range(trained):
        next(it)
    return next(it)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pattern = write_shards(Path(tmp), max(args.trained) + PER_SHARD)
        for n in sorted(args.trained):
            a, cpu_a, wall_a = timed(lambda n=n: ours(pattern, n))
            b, cpu_b, wall_b = timed(lambda n=n: trainer_skip(pattern, n))
            same = a["key"] == b["key"] and torch.equal(a["pixel_values"], b["pixel_values"])
            if n == min(args.trained):
                assert same, f"after {n} samples ours yields {a['key']}, the full pass {b['key']}"
            rows.append({"trained_samples": n, "ours_cpu_s": round(cpu_a, 3), "ours_wall_s": round(wall_a, 3),
                         "trainer_skip_cpu_s": round(cpu_b, 2), "trainer_skip_wall_s": round(wall_b, 2),
                         "ratio_cpu": round(cpu_b / cpu_a, 1), "same_next_sample": same})
            print(json.dumps(rows[-1]))
    results = {"rows": rows, "per_shard": PER_SHARD, "block": BLOCK, "image_px": 64, "machine": platform.machine()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resume_cost.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
