"""Which transformer blocks recompute their activations in backward (activation checkpointing).

The blocks are transformers' ``GradientCheckpointingLayer``s: each has a ``gradient_checkpointing``
flag and runs its forward through ``torch.utils.checkpoint`` when the flag is on (training, grad
enabled). This module only decides which flags are on, as big_vision's ``remat`` choices:

- ``none``: nothing recomputed;
- ``encoder``: the ViT's blocks (what the OpenVision trainers rematerialise);
- ``decoder``: every other stack of blocks (the caption decoder; a baseline's text tower);
- ``all``: every block (what ``--gradient_checkpointing true`` means for any Hugging Face model).

``every=k`` checkpoints only blocks 0, k, 2k, ... of each stack, counted within the stack (transformers'
own ``every_n_layers`` counts over the whole model, so an encoder's depth would shift the decoder's
pattern). A stack is the encoder's when the module that owns it reads images
(``main_input_name == "pixel_values"``, as ``Ov2VisionModel``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

MODES = ("none", "encoder", "decoder", "all")


def block_stacks(model: nn.Module) -> dict[str, tuple[str, list[nn.Module]]]:
    """Every ``ModuleList`` of checkpointable blocks: qualified name -> (``encoder`` or ``decoder``, blocks)."""
    stacks = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
            isinstance(m, GradientCheckpointingLayer) for m in module
        ):
            owner = model.get_submodule(name.rpartition(".")[0])
            part = "encoder" if getattr(owner, "main_input_name", None) == "pixel_values" else "decoder"
            stacks[name] = (part, list(module))
    return stacks


def set_checkpointing(model: nn.Module, mode: str, every: int = 1,
                      checkpoint_fn: Callable | None = None) -> list[str]:
    """Switch checkpointing on for the blocks ``mode`` selects (every ``every``-th), off for the rest.

    ``checkpoint_fn`` defaults to non-reentrant ``torch.utils.checkpoint.checkpoint``. Returns the
    qualified names of the checkpointed blocks.
    """
    if mode not in MODES:
        raise ValueError(f"unknown checkpointing mode {mode!r}; choose one of {', '.join(MODES)}.")
    if every < 1:
        raise ValueError(f"checkpoint every {every}-th block: use 1 (every block) or more.")
    fn = checkpoint_fn or partial(checkpoint, use_reentrant=False)
    chosen = []
    for name, (part, blocks) in block_stacks(model).items():
        selected = mode == "all" or mode == part
        for i, block in enumerate(blocks):
            block._gradient_checkpointing_func = fn
            block.gradient_checkpointing = selected and i % every == 0
            if block.gradient_checkpointing:
                chosen.append(f"{name}.{i}")
    return chosen
