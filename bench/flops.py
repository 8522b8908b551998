"""Counted FLOPs of a variant's training step at any size, on the meta device.

The counter is the package's (``ov2_plugin.experiments.cost.count_flops``, which ``ov2 compare``
uses too): every matmul, convolution and attention the step really runs, forward and backward.
"""

from __future__ import annotations

import torch

from ov2_plugin.experiments.cost import count_flops


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
    flops, _ = count_flops(lambda: variant.loss(batch).backward())
    return flops
