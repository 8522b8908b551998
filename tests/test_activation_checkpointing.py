"""Activation checkpointing: which blocks recompute, and a checkpointed step equals a plain one."""

from __future__ import annotations

import json

import pytest
import torch

from bench.variants import SHAPES, build_variant, checkpoint_coca, make_batch
from ov2_plugin import Ov2Config, Ov2ForCaptioning
from ov2_plugin.activation_checkpointing import set_checkpointing

TINY = SHAPES["tiny"]


def flags(model: torch.nn.Module) -> dict[str, bool]:
    return {n: m.gradient_checkpointing for n, m in model.named_modules() if hasattr(m, "gradient_checkpointing")}


def test_hf_enable_checkpoints_every_block_or_the_chosen_scope_counting_within_each_stack():
    model = Ov2ForCaptioning(Ov2Config.from_preset("tiny", image_size=32, num_hidden_layers=3,
                                                   decoder_num_hidden_layers=3)).train()
    model.activation_checkpointing_enable()  # what the Trainer's --gradient_checkpointing true calls
    assert all(flags(model).values()) and len(flags(model)) == 6
    model.checkpointing_scope = "encoder"
    model.activation_checkpointing_enable(every_n_layers=2)
    on = sorted(n for n, v in flags(model).items() if v)
    assert on == ["vision_model.layers.0", "vision_model.layers.2"]
    model.checkpointing_scope = "decoder"
    model.activation_checkpointing_enable(every_n_layers=2)  # counted in the decoder's own stack: 0 and 2
    assert sorted(n for n, v in flags(model).items() if v) == ["decoder.layers.0", "decoder.layers.2"]
    model.activation_checkpointing_disable()
    assert not any(flags(model).values()) and not model.is_activation_checkpointing


def test_ov1_text_tower_is_decoder_side_and_a_bad_mode_is_named():
    model = build_variant("ov1-1cap", TINY).model
    names = set(set_checkpointing(model, "decoder"))
    assert names and all(n.startswith(("captioner.decoder.", "text_encoder.")) for n in names)
    assert any(n.startswith("text_encoder.") for n in names)
    assert all(n.startswith("captioner.vision_model.") for n in set_checkpointing(model, "encoder"))
    with pytest.raises(ValueError, match="unknown checkpointing mode 'vit'"):
        set_checkpointing(model, "vit")


def step(variant, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    variant.model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # same tokens dropped in both runs
    loss = variant.loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in variant.model.named_parameters() if p.grad is not None}


def count_recomputed_calls(model: torch.nn.Module) -> dict[str, int]:
    """Calls of each block's first linear layer: 2 per step in a recomputed block (its __call__ hooks run again)."""
    calls: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.endswith(("mlp.fc1", "mlp.c_fc")):
            module.register_forward_pre_hook(lambda m, a, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    return calls


@pytest.mark.parametrize("name", ["ov2-k0.35", "ov1-1cap", "ov1-2cap", "coca"])
def test_checkpointed_steps_give_the_plain_steps_loss_and_gradients(name):
    batch = make_batch(TINY, 4, seed=0)
    torch.manual_seed(0)
    variant = build_variant(name, TINY)
    calls = count_recomputed_calls(variant.model)
    plain_loss, plain_grads = step(variant, batch)
    assert set(calls.values()) == {1}
    settings = [("encoder", 1), ("decoder", 1), ("all", 1)] + ([("all", 2)] if name != "coca" else [])
    for mode, every in settings:
        if name == "coca":
            checkpoint_coca(variant.model, mode, every)
        else:
            set_checkpointing(variant.model, mode, every)
        calls.clear()
        loss, grads = step(variant, batch)
        recomputed = {n for n, c in calls.items() if c == 2}
        assert recomputed, (mode, every)  # something really was recomputed
        assert any(("visual" in n or "vision" in n) for n in recomputed) == (mode in ("encoder", "all"))
        torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
        assert grads.keys() == plain_grads.keys()
        for n in grads:
            torch.testing.assert_close(grads[n], plain_grads[n], rtol=1e-5, atol=1e-6, msg=f"{mode}/{every}: {n}")


def test_bench_rejects_every_k_for_open_clip_coca():
    with pytest.raises(ValueError, match="every block"):
        build_variant("coca", TINY, checkpointing="encoder", every=2)


RUN = ["--image_size", "32", "--max_steps", "3", "--per_device_train_batch_size", "4", "--train_samples", "32",
       "--save_steps", "100", "--logging_steps", "1", "--learning_rate", "1e-3", "--use_cpu", "true",
       "--eval_samples", "0", "--dataloader_num_workers", "0", "--seed", "0", "--full_determinism", "true",
       "--config_overrides", "num_hidden_layers=2,decoder_num_hidden_layers=2"]


def test_pretrain_with_gradient_checkpointing_trains_as_without(tmp_path):
    from safetensors.torch import load_file

    from ov2_plugin.pretrain import main

    runs = {}
    for label, extra in [("plain", []), ("hf", ["--gradient_checkpointing", "true"]),
                         ("encoder", ["--checkpointing", "encoder", "--checkpoint_every", "2"])]:
        out = tmp_path / label
        main(["--output_dir", str(out), *RUN, *extra])
        runs[label] = (json.loads((out / "report.json").read_text()), load_file(out / "model.safetensors"))
    assert runs["plain"][0]["checkpointing"] == {"mode": "none", "blocks": 0}
    assert runs["hf"][0]["checkpointing"] == {"mode": "all", "blocks": 4}
    assert runs["encoder"][0]["checkpointing"] == {"mode": "encoder", "blocks": 1}
    plain_report, plain_weights = runs["plain"]
    for label in ("hf", "encoder"):
        report, weights = runs[label]
        losses = [loss for _, loss in report["loss_history"]]
        assert len(losses) == 3
        torch.testing.assert_close(losses, [loss for _, loss in plain_report["loss_history"]], rtol=1e-5, atol=1e-6)
        for k in plain_weights:  # equal weights after 3 AdamW steps: equal gradients at every step
            torch.testing.assert_close(weights[k], plain_weights[k], rtol=1e-5, atol=1e-6, msg=f"{label}: {k}")
