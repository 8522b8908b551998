"""Device choices shared by training, experiments and benchmarks: bf16 or not, the attention kernel,
and this process's memory.

Memory is read here and nowhere else: on a GPU the CUDA allocator's counters
(``memory_allocated`` / ``max_memory_allocated``), on a CPU the process's resident set from Linux's
``/proc/self`` (``statm``: now; ``status``'s ``VmHWM``: the peak, which writing ``5`` to
``clear_refs`` resets to the current RSS). ``bench/`` and ``experiments/cost.py`` call these.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def rss_bytes() -> int:
    """This process's resident set now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started or since ``reset_peak_rss``, in bytes
    (``VmHWM``; where there is no ``/proc``, ``getrusage``'s ``ru_maxrss``, which never resets)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Reset the peak resident set to the current one (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_bytes(device: torch.device) -> int:
    """Memory this process holds now: allocated GPU memory, or the RSS on a CPU."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak so far (or since ``reset_peak_memory``): allocated GPU memory after the
    queued work has finished, or the peak RSS on a CPU (bench/README.md sets it beside the bench)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def reset_peak_memory(device: torch.device) -> int:
    """Start a new peak at what is held now; returns that level (``memory_bytes``) in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    return memory_bytes(device)


def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 autocast speeds training up on this device: on a GPU, and on CPUs with bf16 matmul
    instructions (AVX512-BF16 or AMX).

    Why not oneDNN's own ``_is_mkldnn_bf16_supported``: it also says yes on AVX-512 CPUs without them,
    where bf16 is emulated; on one such 2-core machine the quickstart's step took 2.5 s in bf16
    against 1.1 s in fp32.
    """
    if device_type == "cuda":
        return True
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_bf16(value: bool | str, device_type: str) -> bool:
    """A recipe's or flag's bf16 setting: ``"auto"`` asks ``bf16_is_fast``; true/false as given."""
    if value == "auto":
        return bf16_is_fast(device_type)
    return value if isinstance(value, bool) else value.lower() == "true"


def attention_kernels(device: torch.device):
    """The math attention kernel on a CPU, the default choice elsewhere.

    Why: at a ViT's short sequences PyTorch's CPU flash kernel is slower, most of all in the
    backward pass (quickstart run on 2 cores: 5-10 % faster; bench/README.md).
    """
    return sdpa_kernel([SDPBackend.MATH]) if device.type == "cpu" else nullcontext()
