"""The whole comparison on one GPU, at the paper's sizes: ``python -m bench.gpu [--compile]``.

bf16 autocast, SDPA (flash / memory-efficient kernels on CUDA), fused AdamW, and the CUDA
allocator's expandable segments (less fragmentation, so the largest batch is not cut short by it).
Peak memory is ``max_memory_allocated``; the largest batch is searched under ``--budget-gib``.
Two shapes x six variants, one process each, a few steps at the timing batch plus one to three
steps at the largest batch: about 2.5 minutes per shape on one H200 (results in bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import time

from .cli import cmd_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    p.add_argument("--shapes", nargs="+", default=["L/14", "So400M/14"])
    p.add_argument("--compile", action="store_true", help="torch.compile each variant's loss (adds compile time)")
    p.add_argument("--budget-gib", type=float, default=40.0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--ablate", action="store_true")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.gpu needs a CUDA GPU; on a CPU run `python -m bench run --shape cpu`.")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # inherited by the workers
    start = time.time()
    for shape in args.shapes:
        run_args = ["--shape", shape, "--device", "cuda", "--steps", str(args.steps), "--warmup", "2",
                    "--budget-gib", str(args.budget_gib), "--matmul-seconds", "2"]
        run_args += ["--compile"] if args.compile else []
        run_args += ["--ablate"] if args.ablate else []
        cmd_run(run_args)
        print(f"[bench.gpu] {shape} done after {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
