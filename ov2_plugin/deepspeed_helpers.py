"""What ZeRO-3 needs from code that loads, saves or inspects whole weights (pretraining and LLaVA).

ZeRO-3 keeps one shard of every weight per rank and partitions weights as ``from_pretrained``
loads them. Three places of ours touch whole weights: loading before the Trainer starts, saving
or hashing after training, and one rank reloading the final model alone.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from transformers import TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled, set_hf_deepspeed_config, unset_hf_deepspeed_config


def start_deepspeed() -> None:
    """Start DeepSpeed's process group before any weights load.

    Why: under ZeRO-3 ``from_pretrained`` partitions the weights as it loads them, sized by
    DeepSpeed's own process group. On GPUs ``TrainingArguments`` starts that group; with
    ``--use_cpu`` it starts only torch.distributed, and ZeRO-3 then plans for one process and
    stops ("train_batch_size is not equal to micro_batch_per_gpu * ... * world_size").
    """
    import deepspeed

    # joins torch.distributed's group when one is up, else starts it from the launcher's variables
    deepspeed.init_distributed(dist_backend=None if torch.cuda.is_available() else "gloo")


def whole_weights(model: torch.nn.Module):
    """Every weight whole on every rank inside the block (ZeRO-3 holds a shard per rank); else a no-op.

    All ranks must enter it. It costs one full copy of the model per rank, what ZeRO-2 holds
    throughout; changes made inside (merging LoRA) are not written back to the shards.
    """
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


@contextmanager
def loading_in_one_process(args: TrainingArguments):
    """``from_pretrained`` whole, in one process, while a ZeRO-3 run is configured.

    Why: under ZeRO-3 ``from_pretrained`` partitions the weights as it loads them, a collective
    step the other ranks never join: rank 0 alone would wait for them until the connection drops.
    """
    if not args.deepspeed:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(args.hf_deepspeed_config)
