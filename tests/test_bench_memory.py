"""The activation accounting counts what a hand count says (no timings, no device needed)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench.memory import SavedBytes, account_variant, main
from bench.variants import SHAPES
from ov2_plugin.modeling_vision import sincos_2d_table


def count(model: nn.Module, x: torch.Tensor, autocast: bool = False) -> SavedBytes:
    counter = SavedBytes(model, {"0": "net", "1": "net", "2": "net"}, {"net": "net"}, exclude=list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        h = model[0](x)
        out = model[2](model[1](h))
        extra = h[:, :2].sin().sum() + h.cos().sum()  # h saved twice more, once through a view: still counted once
        model[2](h.exp() + 1)  # an unused output: its graph and saves are freed, nothing counted
    counter.finish()
    counter.close()
    assert out.requires_grad and extra.requires_grad
    return counter


def test_linear_gelu_linear_is_counted_as_by_hand():
    b, i, o = 4, 8, 16
    model = nn.Sequential(nn.Linear(i, o), nn.GELU(), nn.Linear(o, 3))
    x = torch.randn(b, i, requires_grad=True)
    fp32 = count(model, x).components
    # x (first layer's input), h (GELU's input, also sin's and cos's), GELU's output (second layer's input)
    assert fp32 == {"net": 4 * (b * i + b * o + b * o)}
    bf16 = count(model, x, autocast=True).components
    # autocast: bf16 copies of x, of both weights (saved, as the transposed view, for the input gradients)
    # and of the GELU output; h and the GELU run on bf16 h; sin/cos run in bf16 too
    assert bf16 == {"net": 2 * (b * i + b * o + b * o), "weight casts": 2 * (o * i + 3 * o)}


def test_a_checkpointed_vit_keeps_only_each_blocks_input():
    shape = SHAPES["tiny"]
    rows = {r["checkpointing"]: r for r in account_variant("ov2-k1.0", "tiny", precision="fp32", batch_sizes=(2, 4))}
    vis, b = shape.vision, 4
    tokens, width, layers = shape.num_patches + 1, vis["hidden_size"], vis["num_hidden_layers"]
    # each block's input [B, 1+N, D] fp32; the pooled output's saves are freed with it (a caption step never reads it)
    assert rows["encoder"]["components"]["vit"] == 4 * layers * b * tokens * width
    assert rows["none"]["components"]["vit"] > 3 * rows["encoder"]["components"]["vit"]
    assert rows["encoder"]["components"]["decoder"] == rows["none"]["components"]["decoder"]
    assert 0 < rows["encoder"]["recompute_peak_bytes"] < rows["none"]["components"]["vit"] / layers
    assert rows["all"]["activation_bytes"] < rows["encoder"]["activation_bytes"] < rows["none"]["activation_bytes"]
    assert rows["all"]["predicted_largest_batch"] > rows["none"]["predicted_largest_batch"]


def test_memory_command_writes_rows_for_every_variant_and_mode_and_leaves_no_fake_table(tmp_path):
    main(["--shapes", "tiny", "--out-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "memory-accounted.json").read_text())
    assert {(r["variant"], r["checkpointing"]) for r in rows} >= {("ov2-k0.35", "encoder"), ("ov1-2cap", "all"),
                                                                  ("coca", "none")}
    for r in rows:
        assert r["activation_bytes"] == sum(r["components"].values()) > 0
        assert {"shape", "variant", "checkpointing", "batch_size", "activation_bytes", "components"} <= r.keys()
    ov2 = next(r for r in rows if (r["variant"], r["checkpointing"]) == ("ov2-k0.35", "none"))
    ov1 = next(r for r in rows if (r["variant"], r["checkpointing"]) == ("ov1-2cap", "none"))
    assert ov2["components"].get("token dropping", 0) > 0 and "text tower" not in ov2["components"]
    assert ov1["components"]["text tower"] > 0
    assert "| ov2-k0.35 | encoder |" in (tmp_path / "memory-accounted.md").read_text()
    assert not any(type(t).__name__ == "FakeTensor" for t in [sincos_2d_table(2, 2, 8)])


def test_the_trainer_memory_run_builds_the_bench_shapes_model():
    """``bench.trainer_memory`` sets ``ov2 pretrain`` beside the bench worker: only valid if its flags
    build the same ViT and decoder as the bench's ``cpu`` shape."""
    from bench.trainer_memory import shape_flags
    from ov2_plugin.pretrain import build_model, parse_args

    model_args = parse_args([*shape_flags("cpu"), "--output_dir", "unused", "--use_cpu", "true"])[0]
    built = build_model(model_args).config
    bench = SHAPES["cpu"].ov2_config(0.35)
    assert built.vision_config.to_dict() == bench.vision_config.to_dict()
    assert built.decoder_config.to_dict() == bench.decoder_config.to_dict()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["ov2-k0.35", "ov1-2cap", "coca"])
def test_the_accounting_equals_what_the_cpu_allocator_holds_after_a_real_forward(variant, precision):
    """The meta-device count against real tensors: the bench worker reads the CPU allocator's total
    (profiler memory events) at the end of a real forward pass. Besides the saves, a checkpointed block
    holds the CPU generator state it restores for recomputation (about 5 KB, not counted)."""
    from bench.memory import account_variant, checkpointed_blocks
    from bench.worker import Trainer, allocated_during_step, parse

    batch = SHAPES["tiny"].batch_size
    accounted = {r["checkpointing"]: r for r in account_variant(variant, "tiny", ("none", "encoder", "all"), precision)}
    for mode, row in accounted.items():
        trainer = Trainer(parse(["--shape", "tiny", "--variant", variant, "--batch", str(batch), "--precision", precision,
                                 "--checkpointing", mode, "--out", "unused"]))
        blocks = len(checkpointed_blocks(trainer.variant.model))
        kept = allocated_during_step(trainer, batch)["kept_bytes"]
        assert abs(kept - row["activation_bytes"]) <= 0.01 * row["activation_bytes"] + 6 * 1024 * blocks, (mode, kept, row)
