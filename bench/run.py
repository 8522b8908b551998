"""The side-by-side comparison: every variant measured in its own process, one after another.

For each variant (one process, ``bench/worker.py``): counted FLOPs per step, median step time after
warm-up, throughput, activation peak memory (peak above post-setup), and the largest batch whose
state + activations fit the shape's memory budget. The machine's matmul
throughput is measured in the same run, so "FLOPs / step time" is reported as a fraction of it.
Writes ``results-<machine>.json``, ``.md`` (table with ratios) and ``.png`` (chart).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .variants import SHAPES

HERE = Path(__file__).resolve().parent


def worker(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``python -m bench worker ARGS`` in a fresh process and return its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench", "worker", *args, "--out", str(out)]
        proc = subprocess.run(cmd, cwd=HERE.parent, env={**os.environ, **(env or {})}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"worker {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def matmul_throughput(device: str, precision: str, size: int = 2048, seconds: float = 3.0) -> float:
    """Sustained FLOP/s of one square matmul in the benchmark's precision: the machine's ceiling here."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return 2 * size**3 * n / (time.perf_counter() - start)


def run_comparison(shape: str, variants: list[str], precision: str, steps: int, warmup: int, device: str,
                   budget_gib: float | None, threads: int, extra: list[str], matmul_seconds: float = 3.0,
                   partial: Path | None = None, modes: tuple[str, ...] = ("none",), matmul_size: int = 2048) -> dict:
    """All variants one after another, each with every checkpointing mode of ``modes``; ``partial`` gets
    the results so far after each one. Rows without checkpointing are ``variants``, the others
    ``checkpointed[mode]``; ``accounted`` holds ``bench/memory.py``'s count for the same shape and modes."""
    spec = SHAPES[shape]
    batch = spec.batch_size
    budget = int((budget_gib or spec.budget_gib) * 2**30)
    torch.set_num_threads(threads)  # the matmul ceiling is measured with the workers' thread count
    common = ["--shape", shape, "--precision", precision, "--device", device, "--threads", str(threads), *extra]
    result = {"shape": shape, "precision": precision, "device": device, "batch_size": batch, "budget_bytes": budget,
              "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": threads, "torch": torch.__version__,
              "loadavg_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    result["matmul_size"] = matmul_size
    result["matmul_flops_per_s"] = matmul_throughput(device, precision, size=matmul_size, seconds=matmul_seconds)
    rows, checkpointed = {}, {m: {} for m in modes if m != "none"}
    for name in variants:
        for mode in modes:
            print(f"[bench] {name} (checkpointing {mode}): timing at batch {batch}", flush=True)
            timed = worker([*common, "--variant", name, "--batch", str(batch), "--steps", str(steps),
                            "--warmup", str(warmup), "--count-flops", "--budget-gib", str(budget / 2**30),
                            "--checkpointing", mode])
            print(f"[bench] {name} ({mode}): {timed['median_step_s']:.3f} s/step, largest batch "
                  f"{timed['largest_batch']}", flush=True)
            (rows if mode == "none" else checkpointed[mode])[name] = {**timed, "samples_per_s": batch / timed["median_step_s"]}
            if partial:
                partial.write_text(json.dumps({**result, "variants": rows, "checkpointed": checkpointed}, indent=1))
    result["variants"], result["checkpointed"] = rows, checkpointed
    from .memory import account

    result["accounted"] = account([shape], variants, tuple(dict.fromkeys(("none", *modes))), precision)
    result["matmul_flops_per_s_after"] = matmul_throughput(device, precision, size=matmul_size, seconds=matmul_seconds)
    result["loadavg_after"] = os.getloadavg()
    # The ceiling is the faster of the two measurements: a cold first one (clock ramp-up, first
    # page faults) would otherwise flatter every variant's efficiency.
    ceiling = max(result["matmul_flops_per_s"], result["matmul_flops_per_s_after"])
    peak = vendor_peak(result.get("gpu", "")) if precision == "bf16" else None
    result["vendor_peak_flops_per_s"] = peak
    for row in [*rows.values(), *(r for m in checkpointed.values() for r in m.values())]:
        row["hardware_efficiency"] = row["flops_per_step"] / row["median_step_s"] / ceiling
        row["mfu_vendor_peak"] = row["flops_per_step"] / row["median_step_s"] / peak if peak else None
    return result


# Dense (no 2:4 sparsity) bf16 Tensor Core peaks from NVIDIA's H100 and H200 datasheets, whose headline
# figures are with sparsity (1979 TFLOPS for the SXM parts): halved here. Matched on the device name.
VENDOR_BF16_PEAK = (("H200 NVL", 835e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12))


def vendor_peak(gpu_name: str) -> float | None:
    """The vendor's dense bf16 peak for ``torch.cuda.get_device_name()``; None for other devices."""
    return next((flops for key, flops in VENDOR_BF16_PEAK if key.lower() in gpu_name.lower()), None)


# glibc malloc settings that keep freed memory mapped (fewer page faults per step), tried as an option
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**34),
               "MALLOC_TOP_PAD_": str(256 * 2**20)}


def run_ablation(shape: str, precision: str, steps: int, warmup: int, device: str, threads: int) -> list[dict]:
    """OV2 keep 0.35 with each optimisation switched off (or the allocator option on), one at a time."""
    spec = SHAPES[shape]
    common = ["--shape", shape, "--device", device, "--variant", "ov2-k0.35", "--batch", str(spec.batch_size),
              "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads)]
    cases = [
        ("all on", ["--precision", precision], None),
        ("plain head + cross_entropy (full logits)", ["--precision", precision, "--no-fused-loss"], None),
        ("foreach AdamW instead of fused", ["--precision", precision, "--optimizer", "foreach"], None),
        ("fp32 instead of bf16 autocast", ["--precision", "fp32"], None),
        ("SDPA math kernel instead of the flash kernel", ["--precision", precision, "--attention", "math"], None),
    ]
    if device == "cpu":
        cases.append(("glibc malloc keeps freed memory (MALLOC_*_THRESHOLD_)", ["--precision", precision], MALLOC_KEEP))
    out = []
    for label, args, env in cases:
        print(f"[bench] ablation: {label}", flush=True)
        r = worker([*common, *args], env)
        out.append({"case": label, "median_step_s": r["median_step_s"], "activation_peak_bytes": r["activation_peak_bytes"],
                    "first_loss": r["losses"][0]})
    return out
