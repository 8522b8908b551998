"""Device choices shared by training, experiments and benchmarks: bf16 or not, the attention kernel,
and this process's peak memory."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak so far: allocated GPU memory, or the peak RSS on a CPU (bench/README.md sets it beside the bench)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


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
