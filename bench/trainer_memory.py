"""Peak memory of real ``ov2 pretrain`` runs beside the bench worker's, at the bench's ``cpu`` shape.

    python -m bench.trainer_memory [--batches 4 32] [--steps 2] [--out bench/results/trainer_memory.json]

For OpenVision 2 (``--objective caption``, keep 0.35) and the OpenVision-1 objective
(``--objective openvision``: text tower + contrastive + captioning on all tokens, one caption),
each without checkpointing and with the ViT checkpointed (``--checkpointing encoder``), at two
batch sizes: one ``ov2 pretrain`` process (the Trainer, its data loader, the scenes, the tokenizer)
and one ``python -m bench worker`` process (the bench's synthetic batch) per point. Each reports
its peak: the Trainer run its ``peak_memory_bytes`` (peak RSS of the process on a CPU, the
``max_memory_allocated`` on a GPU), the worker its activation peak above the post-setup level.
Their absolute figures differ by what only one of them holds (imports, data, tokenizer), so the
comparable figure is the growth per sample between the two batches, and its OV2 / OV1 ratio.

One difference stays and is printed: the Trainer's captions are the scenes' real ones, padded to
the longest in the batch, the bench's are 128 tokens. The script counts the Trainer's caption
lengths with the same tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .run import worker
from .variants import SHAPES

HERE = Path(__file__).resolve().parent

# The objective of ``ov2 pretrain`` and the bench variant it is set beside.
OBJECTIVES = {"caption": "ov2-k0.35", "openvision": "ov1-1cap"}


def shape_flags(shape: str) -> list[str]:
    """``ov2 pretrain`` flags that build the bench shape's ViT and decoder (the vocabulary is the caption
    tokenizer's 30522 entries, as the ``cpu`` shape's)."""
    spec = SHAPES[shape]
    fields = {**spec.vision, **{f"decoder_{k}": v for k, v in spec.decoder.items()}}
    image_size = fields.pop("image_size")
    overrides = ",".join(f"{k}={v}" for k, v in fields.items())
    return ["--preset", "tiny", "--config_overrides", overrides, "--image_size", str(image_size)]


def trainer_peak(objective: str, mode: str, batch: int, steps: int, shape: str, threads: int, bf16: bool) -> dict:
    """One ``ov2 pretrain`` run of ``steps`` steps; its report's peak memory and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ov2_plugin.cli", "pretrain", *shape_flags(shape), "--objective", objective,
               "--checkpointing", mode, "--per_device_train_batch_size", str(batch), "--max_steps", str(steps),
               "--eval_samples", "0", "--train_samples", str(batch * steps), "--dataloader_num_workers", "0",
               "--save_strategy", "no", "--logging_steps", "1", "--bf16", str(bf16).lower(), "--output_dir", tmp]
        if not torch.cuda.is_available():
            cmd += ["--use_cpu", "true"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if proc.returncode != 0:
            raise RuntimeError(f"ov2 pretrain failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        report = json.loads((Path(tmp) / "report.json").read_text())
    return {"peak_memory_bytes": report["peak_memory_bytes"], "checkpointing": report["checkpointing"],
            "wall_s": time.perf_counter() - start}


def caption_tokens(num_samples: int) -> dict[str, int]:
    """Shortest and longest of the Trainer's captions in tokens with ``[bos]``/``[eos]`` (its batches pad
    to their longest; the Trainer shuffles, so which batch holds which is not known here)."""
    from ov2_plugin.data.captions import SceneCaptions
    from ov2_plugin.tokenization import build_caption_tokenizer

    scenes = SceneCaptions(num_samples, 32, lambda image: None, seed=0)  # pixels are not needed here
    lengths = [len(ids) for ids in build_caption_tokenizer()([scenes[i]["caption"] for i in range(num_samples)]).input_ids]
    return {"min": min(lengths), "max": max(lengths)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.trainer_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    p.add_argument("--batches", type=int, nargs=2, default=[4, 32])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--modes", nargs="+", default=["none", "encoder"], choices=["none", "encoder", "decoder", "all"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=HERE / "results" / "trainer_memory.json")
    args = p.parse_args(argv)
    small, large = sorted(args.batches)
    precision = "bf16" if args.bf16 else "fp32"
    rows = []
    for objective, variant in OBJECTIVES.items():
        for mode in args.modes:
            row = {"objective": objective, "variant": variant, "checkpointing": mode}
            for b in (small, large):
                print(f"[trainer_memory] {objective} / {mode}: ov2 pretrain at batch {b}", flush=True)
                row[f"trainer_b{b}"] = trainer_peak(objective, mode, b, args.steps, args.shape, args.threads, args.bf16)
            print(f"[trainer_memory] {variant} / {mode}: bench worker at batch {large}", flush=True)
            bench = worker(["--shape", args.shape, "--variant", variant, "--batch", str(large), "--steps", "1",
                            "--warmup", "1", "--threads", str(args.threads), "--precision", precision,
                            "--checkpointing", mode])
            trainer_growth = row[f"trainer_b{large}"]["peak_memory_bytes"] - row[f"trainer_b{small}"]["peak_memory_bytes"]
            row["trainer_bytes_per_sample"] = trainer_growth / (large - small)
            row["bench_activation_peak_bytes"] = {str(bench["small_batch_size"]): bench["activation_peak_bytes_small"],
                                                  str(large): bench["activation_peak_bytes"]}
            row["bench_bytes_per_sample"] = ((bench["activation_peak_bytes"] - bench["activation_peak_bytes_small"])
                                             / (large - bench["small_batch_size"]))
            rows.append(row)
    result = {"shape": args.shape, "batches": [small, large], "steps": args.steps, "precision": precision,
              "threads": args.threads, "loadavg": os.getloadavg(), "rows": rows,
              "trainer_caption_tokens": caption_tokens(large * args.steps),
              "bench_caption_tokens": SHAPES[args.shape].caption_length}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"wrote {args.out}")


def markdown(result: dict) -> str:
    small, large = result["batches"]
    mib = 2**20
    lines = [f"| objective (bench variant) | ckpt | Trainer peak RSS, batch {small} (MiB) | batch {large} | "
             f"Trainer MiB / sample | bench MiB / sample |", "|---|---|---|---|---|---|"]
    by_key = {(r["objective"], r["checkpointing"]): r for r in result["rows"]}
    for r in result["rows"]:
        lines.append(f"| {r['objective']} ({r['variant']}) | {r['checkpointing']} | "
                     f"{r[f'trainer_b{small}']['peak_memory_bytes'] / mib:.0f} | "
                     f"{r[f'trainer_b{large}']['peak_memory_bytes'] / mib:.0f} | "
                     f"{r['trainer_bytes_per_sample'] / mib:.1f} | {r['bench_bytes_per_sample'] / mib:.1f} |")
    lines.append("")
    for mode in dict.fromkeys(r["checkpointing"] for r in result["rows"]):
        ov2, ov1 = by_key.get(("caption", mode)), by_key.get(("openvision", mode))
        if ov2 and ov1:
            lines.append(f"OV2 / OV1 per sample ({mode}): Trainer "
                         f"{ov2['trainer_bytes_per_sample'] / ov1['trainer_bytes_per_sample']:.2f}, bench "
                         f"{ov2['bench_bytes_per_sample'] / ov1['bench_bytes_per_sample']:.2f}")
    lines.append(f"\ncaption tokens: Trainer {result['trainer_caption_tokens']}, bench {result['bench_caption_tokens']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
