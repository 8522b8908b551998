"""The serving checks and benchmark for a machine with an NVIDIA GPU, in one command from the checkout's root:

    make serve-setup                        # there: the CUDA build `vllm` (with a working torchvision)
    .venv-serve/bin/python -m bench.serve_gpu [--quick]

1. ``pytest tests/serving``: vLLM and ``transformers serve`` answer as HF ``generate`` on ``llava`` and
   ``llava_next`` folders and, torchvision working there, on ``llava_onevision`` (not testable on the CPU build);
2. ``bench.serve --size gpu``: an L/14-336 tower (576 image tokens) + a 1.1 B Llama shape in bf16, vLLM with
   CUDA graphs and compilation (no ``--enforce-eager``) against HF ``generate`` and ``transformers serve``; results in
   ``bench/results/serve-gpu-<device>.{json,md}``.

Nothing is downloaded at run time (random weights), so the machine needs no hub access, only the venv.
``--quick`` runs fewer requests (a smoke run within a few minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def step(name: str, command: list[str], timeout: float) -> dict:
    print(f"[serve_gpu] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        code = subprocess.run(command, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.perf_counter() - start
    print(f"[serve_gpu] {name}: exit {code} after {seconds:.0f} s", flush=True)
    return {"step": name, "exit": code, "seconds": round(seconds)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 requests, concurrency 4, 32 tokens")
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("[serve_gpu] no CUDA device here: run bench.serve for the CPU numbers", file=sys.stderr)
        return 2
    print(f"[serve_gpu] {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    steps = []
    if not args.skip_tests:
        steps.append(step("tests", [sys.executable, "-m", "pytest", "-q", "tests/serving"], timeout=1200))
    load = ["--requests", "16", "--concurrency", "4", "--max-tokens", "32"] if args.quick else \
        ["--requests", "64", "--concurrency", "16", "--max-tokens", "64"]
    steps.append(step("bench", [sys.executable, "-m", "bench.serve", "--size", "gpu", "--device", "cuda",
                                "--dtype", "bfloat16", "--vllm-flags=--gpu-memory-utilization 0.5", *load],
                      timeout=1800))
    for s in steps:
        print(f"[serve_gpu] {s}")
    return 0 if all(s["exit"] == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
