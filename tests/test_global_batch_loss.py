"""The global batch is the batch: 1 process x 8, 1 x 4 with 2 accumulation steps and 2 DDP ranks x 4
make the same update and log the same loss, for the caption objective and the contrastive ones.

Each run is ``ov2 pretrain`` (tiny preset, 32 px, keep ratio 1.0, the sequential sampler so that the
step's 8 samples are the same in every launch, SGD at learning rate 0.5, two steps). Before the losses
were taken over the global batch the runs ended 4.9e-3 (caption) and 4.2e-4 (clip) apart.
The two-rank contrastive losses are also checked against the formulas written out here.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from launch import launch_env, run_python, torchrun
from safetensors.torch import load_file
from torch.nn import functional as F

RUN = [
    "--image_size", "32", "--max_steps", "2", "--train_samples", "32", "--logging_steps", "1",
    "--use_cpu", "true", "--eval_samples", "0", "--dataloader_num_workers", "0", "--seed", "0",
    "--keep_ratio", "1.0", "--train_sampling_strategy", "sequential", "--save_strategy", "no",
    "--optim", "sgd", "--learning_rate", "0.5", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
    "--weight_decay", "0", "--max_grad_norm", "0", "--report_to", "none",
]


def pretrain(out: Path, objective: str, ranks: int, batch: int, accumulation: int) -> tuple[dict, list[float]]:
    args = ["-m", "ov2_plugin.pretrain", "--output_dir", str(out), *RUN, "--objective", objective,
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation)]
    if ranks > 1:
        args = torchrun(ranks, *args)
    done = run_python(args, launch_env(), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    weights = out / ("objective_model" if objective != "caption" else "") / "model.safetensors"
    return load_file(weights), [loss for _, loss in report["loss_history"]]


@pytest.mark.parametrize("objective", ["caption", "clip", "openvision"])
def test_ddp_and_accumulation_make_the_update_of_one_big_batch(tmp_path, objective):
    one, one_losses = pretrain(tmp_path / "1x8", objective, ranks=1, batch=8, accumulation=1)
    for name, ranks, batch, accumulation in (("1x4x2", 1, 4, 2), ("2x4", 2, 4, 1)):
        other, losses = pretrain(tmp_path / name, objective, ranks, batch, accumulation)
        assert other.keys() == one.keys()
        worst = max((other[k].float() - one[k].float()).abs().max().item() for k in one)
        assert worst <= 1e-5, f"{name}: weights differ from 1 x 8 by {worst:.2e}"
        assert losses == pytest.approx(one_losses, rel=1e-5), f"{name}: logged {losses}, 1 x 8 logged {one_losses}"
    assert len(one_losses) == 2 and one_losses[0] != one_losses[1]  # two real steps, the second after an update


def softmax_by_hand(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    logits = log_scale.exp() * image @ text.t()
    n = logits.shape[0]
    rows = -logits.log_softmax(1).diagonal().sum() / n
    cols = -logits.log_softmax(0).diagonal().sum() / n
    return (rows + cols) / 2


def sigmoid_by_hand(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    logits = log_scale.exp() * image @ text.t() + bias
    total = 0.0
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            total = total - F.logsigmoid(logits[i, j] if i == j else -logits[i, j])
    return total / logits.shape[0]


WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch.nn import functional as F
    from ov2_plugin.baselines.losses import contrastive_loss
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    rows = slice(rank * 4, rank * 4 + 4)
    out = {}
    for kind in ("softmax", "sigmoid"):
        i, t = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
        scale, bias = torch.tensor(2.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
        loss = contrastive_loss(kind, i, t, scale, bias if kind == "sigmoid" else None)
        loss.backward()
        values = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(values, loss.detach())
        out[kind] = {"mean_loss": float(sum(values) / world), "grad_image": i.grad, "grad_text": t.grad,
                     "grad_scale": scale.grad}
    torch.save(out, sys.argv[1] + f"/rank{rank}.pt")
    dist.destroy_process_group()
""")


def test_two_rank_contrastive_losses_equal_the_global_batch_loss_written_out(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = run_python(torchrun(2, str(script), str(tmp_path)), launch_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(8, 16, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(8, 16, generator=g), dim=-1).requires_grad_()
    scale, bias = torch.tensor(2.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    for kind in ("softmax", "sigmoid"):
        image.grad = text.grad = scale.grad = None
        loss = softmax_by_hand(image, text, scale) if kind == "softmax" else sigmoid_by_hand(image, text, scale, bias)
        loss.backward()
        assert ranks[0][kind]["mean_loss"] == pytest.approx(loss.item(), rel=1e-6)
        # each rank's loss reaches every rank's features through the gather; DDP then averages over the
        # 2 ranks, so a rank's feature gradient is 2x its share of the global loss's gradient
        for r in range(2):
            rows = slice(r * 4, r * 4 + 4)
            torch.testing.assert_close(ranks[r][kind]["grad_image"] / 2, image.grad[rows], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ranks[r][kind]["grad_text"] / 2, text.grad[rows], rtol=1e-5, atol=1e-6)
        # the temperature is replicated: DDP's average of the ranks' gradients is the global one
        torch.testing.assert_close((ranks[0][kind]["grad_scale"] + ranks[1][kind]["grad_scale"]) / 2, scale.grad)


@pytest.mark.parametrize("objective", ["clip", "openvision", "coca"])
def test_accumulated_micro_batches_with_step_features_give_the_whole_batch_gradient(objective):
    """In one process, without the Trainer: two micro-batches of 4 with ``StepFeatures`` and the step's
    token count give the loss and gradients of the batch of 8 (CoCa included, open_clip's CoCaLoss)."""
    from ov2_plugin import Ov2Config
    from ov2_plugin.baselines import build_objective_model
    from ov2_plugin.baselines.losses import StepFeatures

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32,
                 decoder_hidden_size=64, decoder_num_attention_heads=2, decoder_intermediate_size=128,
                 decoder_num_hidden_layers=1)
    torch.manual_seed(0)
    model = build_objective_model(objective, Ov2Config.from_preset("tiny", **small)).train()
    g = torch.Generator().manual_seed(1)
    lengths = [2, 9, 4, 12, 3, 7, 10, 5]  # captions of very different lengths: the case a per-batch mean gets wrong
    ids = torch.zeros(8, 13, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, : n + 1] = torch.cat([torch.tensor([101]), torch.randint(1000, 20000, (n - 1,), generator=g), torch.tensor([102])])
    mask = (ids != 0).long()
    batch = dict(pixel_values=torch.randn(8, 3, 32, 32, generator=g), input_ids=ids, attention_mask=mask,
                 labels=ids.masked_fill(mask == 0, -100))
    count = int((batch["labels"][:, 1:] != -100).sum())

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole = model(**batch, num_items_in_batch=count).loss
    expected = gradients(whole)
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    cached = [model.contrastive_features(h["pixel_values"], h["input_ids"]) for h in halves]
    step = StepFeatures([c[0] for c in cached], [c[1] for c in cached])
    model.zero_grad()
    total = 0.0
    for index, half in enumerate(halves):
        step.index = index
        loss = model(**half, num_items_in_batch=count, step_features=step).loss
        loss.backward()
        total += loss.item()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert total == pytest.approx(whole.item(), rel=1e-5)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
