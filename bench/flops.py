"""Counted FLOPs of a training step, with torch's own counter (``FlopCounterMode``).

Counted, not estimated: every matmul, convolution and attention the step really runs (forward
and backward) is added up, so token dropping, the text encoder and CoCa's cross-attention all
show up as they are executed. Elementwise ops are not counted (by design of the counter): they
cost time but no matmul FLOPs, which is part of what the hardware-efficiency figure exposes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(step: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``step()`` once under the counter; returns (total FLOPs, what ``step`` returned)."""
    with FlopCounterMode(display=False) as counter:
        out = step()
    return counter.get_total_flops(), out


def count_variant_flops(variant_name: str, shape_name: str, batch_size: int = 1) -> int:
    """FLOPs of one forward + backward of a variant, on the meta device (no memory, no compute).

    Lets the true L/14 and So400M/14 sizes be counted on any machine. Values do not exist on
    meta tensors, so every caption position counts as valid (no padding skipped) and token
    dropping keeps its exact count.
    """
    from .variants import SHAPES, build_variant, make_batch

    shape = SHAPES[shape_name]
    with torch.device("meta"):
        variant = build_variant(variant_name, shape)
    batch = make_batch(shape, batch_size, device="meta")
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    batch["labels"] = batch["input_ids"]
    with FlopCounterMode(display=False) as counter:
        variant.loss(batch).backward()
    return counter.get_total_flops()
