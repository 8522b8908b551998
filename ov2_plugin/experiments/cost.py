"""What a training step costs: counted FLOPs, and the peak memory of a run.

Equal cost here means equal counted training FLOPs: every matmul, convolution and attention of
one forward + backward pass, counted by PyTorch's ``FlopCounterMode`` on real batches of the
run's data and shapes (the optimiser update, a few FLOPs per weight, is left out). Why FLOPs and
not wall-clock: on a shared 2-core machine the clock moves by minutes between runs of the same
job, while a FLOP count is exact, machine-independent and the same on the CPU and the GPU recipe.
The measured wall-clock and peak memory are reported beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..devices import peak_memory_bytes, reset_peak_memory, rss_bytes


def count_flops(step: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``step()`` once under PyTorch's ``FlopCounterMode``; returns (total FLOPs, what ``step`` returned).

    Counted, not estimated: every matmul, convolution and attention the step really runs (forward,
    and backward where ``step`` calls it) is added up, so token dropping, a text encoder and CoCa's
    cross-attention show up as they are executed. Elementwise ops are not counted (by design of the
    counter): they cost time but no matmul FLOPs. ``bench/`` counts its variants with this too.
    """
    with FlopCounterMode(display=False) as counter:
        out = step()
    return counter.get_total_flops(), out


def step_flops(model: torch.nn.Module, batches: list[dict]) -> float:
    """Mean FLOPs of forward + backward over ``batches`` (dicts of tensors the model takes)."""
    model.train()
    total = sum(count_flops(lambda batch=batch: model(**batch).loss.backward())[0] for batch in batches)
    model.zero_grad(set_to_none=True)
    return total / len(batches)


def caption_step_flops(model: torch.nn.Module, batches: list[dict], unmasked_share: float) -> float:
    """OpenVision 2's mean step: dropping tokens for the first steps, every token in the last
    ``unmasked_share`` of them (``--unmasked_tuning``), weighted as the run does them."""
    keep = model.config.keep_ratio
    masked = step_flops(model, batches)
    if not unmasked_share:
        return masked
    model.config.keep_ratio = 1.0
    try:
        unmasked = step_flops(model, batches)
    finally:
        model.config.keep_ratio = keep
    return (1 - unmasked_share) * masked + unmasked_share * unmasked


class PeakMemory:
    """Peak memory while the block runs: CUDA's allocator peak on a GPU, else the process's
    resident set, sampled every 50 ms (``rise_mb`` = peak minus what the process held before)."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.peak_mb = self.rise_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            self._start = reset_peak_memory(self.device)
            return self
        self._start = self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            peak = peak_memory_bytes(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, rss_bytes())
        self.peak_mb, self.rise_mb = peak / 2**20, (peak - self._start) / 2**20

    @property
    def kind(self) -> str:
        return "cuda_allocated" if self.cuda else "cpu_rss"
