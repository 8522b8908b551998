"""Every training-step optimisation the benchmark uses leaves the loss and gradients unchanged
(within float tolerance). Speed is measured by ``python -m bench``, never asserted here."""

import torch
from torch.nn import functional as F

from bench.variants import SHAPES, build_variant, make_batch
from bench.worker import make_optimizer
from ov2_plugin.modeling_captioner import chunked_head_cross_entropy

TINY = SHAPES["tiny"]


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunked_head_loss_equals_full_logits_cross_entropy_over_several_chunks():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, 4:] = -100  # padding gets no logits at all
    loss = chunked_head_cross_entropy(hidden, weight, labels, chunk_rows=4)
    loss.backward()
    g_hidden, g_weight = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = hidden @ weight.t()
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g_hidden, hidden.grad)
    torch.testing.assert_close(g_weight, weight.grad)
    assert g_hidden[0, 4:].abs().sum() == 0  # padded positions: no gradient


def _step_grads(variant, batch, fused: bool, autocast: bool):
    target = variant.model.captioner if hasattr(variant.model, "captioner") else variant.model
    target.fused_head_loss = fused
    variant.model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # same dropped tokens
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = variant.loss(batch)
    loss.backward()
    return loss.detach(), grads(variant.model)


def test_fused_head_loss_matches_plain_path_for_ov2_and_the_ov1_baseline():
    batch = make_batch(TINY, 4)
    for name in ("ov2-k0.35", "ov1-2cap"):
        torch.manual_seed(0)
        v = build_variant(name, TINY)
        for autocast, tol in ((False, 1e-5), (True, 2e-2)):
            loss_f, g_f = _step_grads(v, batch, True, autocast)
            loss_p, g_p = _step_grads(v, batch, False, autocast)
            torch.testing.assert_close(loss_f, loss_p, rtol=tol, atol=tol)
            assert g_f.keys() == g_p.keys()
            for key in g_f:
                scale = g_p[key].abs().max().clamp(min=1e-6)
                assert (g_f[key] - g_p[key]).abs().max() / scale < tol * 5, (name, autocast, key)


def test_bf16_autocast_keeps_loss_and_gradient_direction():
    batch = make_batch(TINY, 4)
    torch.manual_seed(0)
    v = build_variant("ov2-k0.35", TINY)
    loss32, g32 = _step_grads(v, batch, True, False)
    loss16, g16 = _step_grads(v, batch, True, True)
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=1e-2)
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[k].flatten() for k in g32])
    assert F.cosine_similarity(flat32, flat16, dim=0) > 0.99


def test_fused_adamw_updates_as_the_foreach_one():
    batch = make_batch(TINY, 4)
    torch.manual_seed(0)
    a = build_variant("ov2-k1.0", TINY)
    torch.manual_seed(0)
    b = build_variant("ov2-k1.0", TINY)
    opts = [make_optimizer(list(m.model.parameters()), kind) for m, kind in ((a, "fused"), (b, "foreach"))]
    for _ in range(3):
        for v, opt in zip((a, b), opts):
            v.loss(batch).backward()
            opt.step()
            opt.zero_grad()
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        if name.endswith("qkv.bias"):
            # The key bias has no gradient in exact arithmetic (softmax ignores a shift shared by
            # every key), so Adam turns the two kernels' different rounding noise into full steps.
            d = pa.shape[0] // 3
            pa, pb = torch.cat([pa[:d], pa[2 * d:]]), torch.cat([pb[:d], pb[2 * d:]])
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_forward_still_returns_logits_when_asked():
    torch.manual_seed(0)
    model = build_variant("ov2-k1.0", TINY).model
    batch = make_batch(TINY, 2)
    out = model(batch["pixel_values"], batch["input_ids"], labels=batch["labels"])
    assert out.logits is None and out.loss is not None  # training + labels: no full logits
    out = model(batch["pixel_values"], batch["input_ids"], labels=batch["labels"], return_logits=True)
    assert out.logits.shape == (2, TINY.caption_length, TINY.vocab_size)
    model.eval()
    assert model(batch["pixel_values"], batch["input_ids"], labels=batch["labels"]).logits is not None
