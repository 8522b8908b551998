"""Memory of streaming a big JSONL caption file: does the trainer's RSS stay flat?

    python -m bench.json_stream_memory [--records 1000000] [--out bench/results]

Writes a JSONL of ``--records`` LLaVA-style records (each names one of 16 small PNGs and carries
a ~60-character caption), then, each in its own process so the numbers do not mix:

  1. ``ours``: ``JsonCaptions`` over the file (byte-span index, one record parsed at a time), every
     record streamed through the source (read, parse, image decode, per-sample seed, position),
     RSS (``VmRSS``) sampled every 10 % of the records, peak (``VmHWM``) at the end;
  2. ``load_all``: what the source did before, ``json.loads`` of every line into one list (the
     records only, no images): the memory a plain loader holds in every loader worker.

The transform is a plain array-to-tensor copy: the benchmark measures the source, not augmentation.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mib(peak: bool = False) -> float:
    """This process's RSS now (``VmRSS``) or its peak (``VmHWM``), MiB (``ov2_plugin.devices``)."""
    from ov2_plugin.devices import peak_rss_bytes, rss_bytes

    return (peak_rss_bytes() if peak else rss_bytes()) / 2**20


def write_data(root: Path, records: int) -> Path:
    from PIL import Image

    for i in range(16):
        Image.new("RGB", (16, 16), (i * 15, 100, 200 - i * 10)).save(root / f"{i:02d}.png")
    path = root / "captions.jsonl"
    with path.open("w") as f:
        for i in range(records):
            caption = f"record {i}: a small picture of a coloured square on a plain background."
            f.write(json.dumps({"id": i, "image": f"{i % 16:02d}.png", "caption": caption}) + "\n")
    return path


def measure_ours(path: Path) -> dict:
    import numpy as np
    import torch

    from ov2_plugin.data.json_source import JsonCaptions

    before = rss_mib()
    start = time.time()
    ds = JsonCaptions(path, path.parent, lambda img: torch.from_numpy(np.asarray(img)), seed=0)
    index_s, after_index = time.time() - start, rss_mib()
    total = len(ds.records)
    samples, n, start = [], 0, time.time()
    for _ in ds:
        n += 1
        if n % max(1, total // 10) == 0:
            samples.append((n, round(rss_mib(), 1)))
    return {"rss_before_mib": round(before, 1), "rss_after_index_mib": round(after_index, 1), "index_s": round(index_s, 2),
            "rss_while_streaming_mib": samples, "peak_mib": round(rss_mib(peak=True), 1), "samples": n,
            "samples_per_s": round(n / (time.time() - start))}


def measure_load_all(path: Path) -> dict:
    import numpy  # noqa: F401  (the same imports as ``ours``, so the baselines match)
    import torch  # noqa: F401

    import ov2_plugin.data.json_source  # noqa: F401

    before = rss_mib()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"rss_before_mib": round(before, 1), "rss_after_load_mib": round(rss_mib(), 1), "records": len(records)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--measure", choices=["ours", "load_all"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process
        result = (measure_ours if args.measure == "ours" else measure_load_all)(Path(args.path))
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        path = write_data(Path(tmp), args.records)
        results = {"records": args.records, "file_mib": round(path.stat().st_size / 2**20, 1),
                   "machine": platform.machine(), "python": platform.python_version()}
        for mode in ("ours", "load_all"):
            cmd = [sys.executable, "-m", "bench.json_stream_memory", "--measure", mode, "--path", str(path)]
            results[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    ours, peer = results["ours"], results["load_all"]
    results["held_by_source_mib"] = round(ours["peak_mib"] - ours["rss_before_mib"], 1)
    results["held_by_load_all_mib"] = round(peer["rss_after_load_mib"] - peer["rss_before_mib"], 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "json_stream_memory.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
