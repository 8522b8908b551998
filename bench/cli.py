"""``python -m bench``: the cost comparison of OpenVision 2 against OpenVision 1 and open_clip's CoCa,
both as ``ov2 compare`` trains them (``ov2_plugin.baselines``; CoCa without attentional pooler).

    python -m bench run [--shape cpu] [--variants ...] [--ablate] [--paper-flops]
    python -m bench flops [--shapes L/14 So400M/14]     counted FLOPs at the paper's sizes (meta device)
    python -m bench memory [--shapes L/14 So400M/14 cpu] [--out-dir DIR]   accounted activation bytes (bench/memory.py)
    python -m bench worker ...                          one measurement (used by ``run``)

``bench`` lives beside the package, not in it: run these from a checkout's root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from .variants import SHAPES, VARIANTS

HERE = Path(__file__).resolve().parent


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return f"cpu{os.cpu_count()}"


def paper_flops(shapes: list[str], variants: list[str]) -> dict:
    from .flops import count_variant_flops

    return {s: {v: count_variant_flops(v, s) for v in variants} for s in shapes}


def cmd_run(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench run")
    p.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps (the first counts FLOPs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads per worker (default: all cores)")
    p.add_argument("--matmul-seconds", type=float, default=3.0, help="how long to measure the matmul ceiling")
    p.add_argument("--matmul-size", type=int, default=2048, help="square matmul size of the ceiling (8192 on a GPU)")
    p.add_argument("--checkpointing", nargs="+", default=["none"], choices=["none", "encoder", "decoder", "all"],
                   help="activation checkpointing modes, each variant with each (none is always run)")
    p.add_argument("--budget-gib", type=float, default=None, help="memory budget for the largest batch")
    p.add_argument("--compile", action="store_true", help="torch.compile each variant's loss (GPU)")
    p.add_argument("--ablate", action="store_true", help="also time OV2 with each optimisation off")
    p.add_argument("--only-ablate", action="store_true", help="run only the optimisation ablation (its own JSON)")
    p.add_argument("--paper-flops", action="store_true", help="also count FLOPs at L/14 and So400M/14 (meta)")
    p.add_argument("--machine", default=None, help="name in the output files (default: cpu<N> or the GPU's name)")
    p.add_argument("--out-dir", type=Path, default=HERE)
    args = p.parse_args(argv)
    for v in args.variants:
        if v not in VARIANTS and not v.startswith("ov2-k"):
            raise ValueError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    from .report import chart, markdown, targets
    from .run import run_ablation, run_comparison

    extra = ["--compile"] if args.compile else []
    suffix = "" if args.shape == "cpu" else "-" + re.sub(r"[^A-Za-z0-9]+", "", args.shape)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"results-{args.machine or machine_name(args.device)}{suffix}"
    if args.only_ablate:
        ablation = run_ablation(args.shape, args.precision, args.steps, args.warmup, args.device, args.threads)
        Path(f"{stem}-ablation.json").write_text(json.dumps(ablation, indent=1))
        print(json.dumps(ablation, indent=1))
        return
    result = run_comparison(args.shape, args.variants, args.precision, args.steps, args.warmup, args.device,
                            args.budget_gib, args.threads, extra, args.matmul_seconds, Path(f"{stem}-partial.json"),
                            tuple(dict.fromkeys(["none", *args.checkpointing])), args.matmul_size)
    if args.ablate:
        result["ablation"] = run_ablation(args.shape, args.precision, args.steps, args.warmup, args.device, args.threads)
    elif Path(f"{stem}-ablation.json").exists():  # from a separate `--only-ablate` run
        result["ablation"] = json.loads(Path(f"{stem}-ablation.json").read_text())
    if args.paper_flops:
        result["paper_flops"] = paper_flops(["L/14", "So400M/14"], list(VARIANTS[:1]) + ["ov1-1cap", "ov1-2cap", "coca"])
    result["targets"] = targets(result)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    chart(result, stem.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {stem}.json, .md, .png")


def cmd_flops(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench flops")
    p.add_argument("--shapes", nargs="+", default=["L/14", "So400M/14"], choices=sorted(SHAPES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = p.parse_args(argv)
    for shape, f in paper_flops(args.shapes, args.variants).items():
        for v, n in f.items():
            print(f"{shape}\t{v}\t{n / 1e12:.4f} TFLOP per sample per step")


def cmd_memory(argv: list[str]) -> None:
    from .memory import main as memory_main

    memory_main(argv)


def main(argv: list[str]) -> int:
    commands = {"run": cmd_run, "flops": cmd_flops, "memory": cmd_memory}
    if argv and argv[0] == "worker":
        from .worker import main as worker_main

        worker_main(argv[1:])
        return 0
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    commands[argv[0]](argv[1:])
    return 0
