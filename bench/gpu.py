"""The comparison on one GPU, at the paper's sizes: ``python -m bench.gpu [--shapes L/14] [--compile]``.

bf16 autocast, SDPA (flash / memory-efficient kernels on CUDA), fused AdamW, and the CUDA
allocator's expandable segments (less fragmentation, so the largest batch is not cut short by it).
Peak memory is ``max_memory_allocated``; the largest batch is searched under ``--budget-gib``.
Each variant runs without activation checkpointing, with the ViT checkpointed and with every
block checkpointed (``--checkpointing``), one process each; the accounted bytes
(``bench/memory.py``) are written beside the measured ones. Hardware efficiency is reported
against an 8192^3 bf16 matmul measured in the run and against the vendor's dense bf16 peak
(``run.VENDOR_BF16_PEAK``). Default: L/14, four variants x three modes, 3 timed steps: planned
at about 4-5 minutes on one H100/H200 (12 workers at ~20 s each, from the earlier 6-worker run's
142 s); ``--shapes L/14 So400M/14`` about doubles it.
"""

from __future__ import annotations

import argparse
import os
import time

from .cli import cmd_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    p.add_argument("--shapes", nargs="+", default=["L/14"])
    p.add_argument("--variants", nargs="+", default=["ov2-k0.35", "ov1-1cap", "ov1-2cap", "coca"])
    p.add_argument("--checkpointing", nargs="+", default=["none", "encoder", "all"])
    p.add_argument("--compile", action="store_true", help="torch.compile each variant's loss (adds compile time)")
    p.add_argument("--budget-gib", type=float, default=40.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--ablate", action="store_true")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.gpu needs a CUDA GPU; on a CPU run `python -m bench run --shape cpu`.")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # inherited by the workers
    start = time.time()
    for shape in args.shapes:
        run_args = ["--shape", shape, "--device", "cuda", "--steps", str(args.steps), "--warmup", "2",
                    "--budget-gib", str(args.budget_gib), "--matmul-seconds", "2", "--matmul-size", "8192",
                    "--variants", *args.variants, "--checkpointing", *args.checkpointing]
        run_args += ["--compile"] if args.compile else []
        run_args += ["--ablate"] if args.ablate else []
        cmd_run(run_args)
        print(f"[bench.gpu] {shape} done after {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
