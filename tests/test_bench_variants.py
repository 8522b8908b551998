"""Each benchmarked variant computes the loss it claims (no timings are asserted anywhere)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from bench.flops import count_flops, count_variant_flops
from bench.ov1_style import contrastive_loss
from bench.variants import SHAPES, build_variant, make_batch

TINY = SHAPES["tiny"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def batch():
    return make_batch(TINY, 4, seed=0)


def test_batch_has_padded_captions_with_labels_ignored_on_pads(batch):
    ids, labels = batch["input_ids"], batch["labels"]
    assert (ids[:, 0] == 1).all() and ((ids == 2).sum(1) == 1).all()
    assert torch.equal(labels == -100, ids == 0)
    assert (ids == 0).any()  # some captions are shorter than the context
    assert [t.shape[1] for t in batch["text_ids"]] == [TINY.text_length] * 2


def test_ov2_has_no_text_encoder_and_its_loss_is_the_caption_loss_alone(batch):
    torch.manual_seed(0)
    v = build_variant("ov2-k0.35", TINY)
    names = [n for n, _ in v.model.named_modules()]
    assert not any("text" in n for n in names) and not any("logit_scale" in n for n, _ in v.model.named_parameters())
    torch.manual_seed(1)
    loss = v.loss(batch)
    torch.manual_seed(1)  # same tokens dropped
    v.model.fused_head_loss = False
    out = v.model(batch["pixel_values"], batch["input_ids"], labels=batch["labels"])
    manual = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, manual)
    assert out.image_tokens.shape[1] == int(TINY.num_patches * 0.35)


def test_ov1_contrastive_part_changes_with_the_text_encoder_and_caption_part_does_not(batch):
    torch.manual_seed(0)
    model = build_variant("ov1-1cap", TINY).model
    before = model(batch["pixel_values"], batch["input_ids"], batch["labels"], batch["text_ids"][:1])
    with torch.no_grad():
        for p in model.text_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = model(batch["pixel_values"], batch["input_ids"], batch["labels"], batch["text_ids"][:1])
    assert not torch.allclose(before["contrastive_loss"], after["contrastive_loss"])
    torch.testing.assert_close(before["caption_loss"], after["caption_loss"])
    torch.testing.assert_close(after["loss"], after["caption_loss"] + after["contrastive_loss"])


def test_ov1_decoder_reads_every_visual_token_as_ov2_at_keep_one(batch):
    torch.manual_seed(0)
    ov1 = build_variant("ov1-1cap", TINY).model
    ov2 = build_variant("ov2-k1.0", TINY).model
    ov2.load_state_dict(ov1.captioner.state_dict())
    caption = ov1(batch["pixel_values"], batch["input_ids"], batch["labels"], batch["text_ids"][:1])["caption_loss"]
    torch.testing.assert_close(caption, ov2(batch["pixel_values"], batch["input_ids"], labels=batch["labels"]).loss)


def test_ov1_two_captions_average_two_contrastive_losses(batch):
    torch.manual_seed(0)
    model = build_variant("ov1-2cap", TINY).model
    out = model(batch["pixel_values"], batch["input_ids"], batch["labels"], batch["text_ids"])
    image = model.image_projection(model.captioner.vision_model(batch["pixel_values"]).pooler_output)
    each = [contrastive_loss(image, model.text_encoder(t), model.logit_scale) for t in batch["text_ids"]]
    torch.testing.assert_close(out["contrastive_loss"], (each[0] + each[1]) / 2)
    with pytest.raises(ValueError, match="2 caption"):
        model(batch["pixel_values"], batch["input_ids"], batch["labels"], batch["text_ids"][:1])


def test_coca_is_open_clip_coca_with_its_loss(batch):
    import open_clip
    from open_clip.loss import CoCaLoss

    torch.manual_seed(0)
    v = build_variant("coca", TINY)
    assert isinstance(v.model, open_clip.CoCa)
    loss = v.loss(batch)
    out = v.model(batch["pixel_values"], batch["input_ids"])
    clip, caption = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)(
        out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"])
    torch.testing.assert_close(loss, clip + caption)
    assert loss.item() < 3 * torch.log(torch.tensor(float(TINY.vocab_size))).item()  # initialised weights
    with torch.no_grad():
        for p in v.model.text.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert not torch.allclose(loss, v.loss(batch))


def test_counted_flops_order_the_variants_as_the_architecture_says(batch):
    flops = {}
    for name in ("ov2-k0.25", "ov2-k0.35", "ov2-k1.0", "ov1-1cap", "ov1-2cap"):
        torch.manual_seed(0)
        v = build_variant(name, TINY)
        flops[name], _ = count_flops(lambda v=v: v.loss(batch).backward())
    assert flops["ov2-k0.25"] < flops["ov2-k0.35"] < flops["ov2-k1.0"] < flops["ov1-1cap"] < flops["ov1-2cap"]


def test_paper_size_flops_are_counted_on_the_meta_device():
    ov2, ov1 = count_variant_flops("ov2-k0.35", "L/14"), count_variant_flops("ov1-1cap", "L/14")
    assert 0.7 < ov2 / ov1 < 0.9  # the architectural saving at L/14 224 px with one 77-token caption
    assert ov2 > 3 * 2 * 300e6 * 257  # at least forward + backward of a 300M-parameter ViT on 257 tokens


def test_worker_measures_memory_flops_and_largest_batch_and_the_report_compares_them(tmp_path):
    from bench.report import chart, markdown, targets
    from bench.run import worker

    rows = {}
    for name in ("ov2-k0.35", "ov1-1cap"):
        # a fresh process per variant, as the bench runs them: only there does RSS growth measure the model
        # state (in this process, memory freed by earlier tests is reused and the growth can read 0)
        r = worker(["--shape", "tiny", "--variant", name, "--batch", "8", "--steps", "1", "--count-flops",
                    "--threads", "1", "--budget-gib", "0.3"])
        assert r["flops_per_step"] > 0 and r["median_step_s"] > 0 and r["state_bytes"] > 0
        assert r["largest_batch"] >= 1 and r["fit_tries"][-1]["batch_size"] == r["largest_batch"]
        rows[name] = {**r, "samples_per_s": 8 / r["median_step_s"], "hardware_efficiency": 0.5}
    assert rows["ov2-k0.35"]["flops_per_step"] < rows["ov1-1cap"]["flops_per_step"]
    result = {"shape": "tiny", "precision": "bf16", "device": "cpu", "batch_size": 8, "budget_bytes": 2**28,
              "cpu_count": 2, "torch": torch.__version__, "started": "now", "loadavg_before": (1, 1, 1),
              "loadavg_after": (1, 1, 1), "matmul_flops_per_s": 1e9, "matmul_flops_per_s_after": 1e9, "variants": rows}
    checks = {t["target"]: t for t in targets(result)}
    ratio = rows["ov2-k0.35"]["median_step_s"] / rows["ov1-1cap"]["median_step_s"]
    assert checks["step time / OV1-style (1 caption) <= counted FLOP ratio"]["value"] == pytest.approx(ratio)
    text = markdown(result)
    assert "| ov2-k0.35 |" in text and "step / OV1" in text and "| target" in text
    chart(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_bench_command_writes_json_table_and_chart(tmp_path):
    cmd = [sys.executable, "-m", "bench", "run", "--shape", "tiny", "--variants", "ov2-k0.35", "--steps", "1",
           "--threads", "1", "--matmul-seconds", "0.2", "--machine", "test", "--out-dir", str(tmp_path),
           "--checkpointing", "encoder"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results-test-tiny.json").read_text())
    assert result["variants"]["ov2-k0.35"]["largest_batch"] >= 1 and result["matmul_flops_per_s"] > 0
    assert "| ov2-k0.35 |" in (tmp_path / "results-test-tiny.md").read_text()
    assert (tmp_path / "results-test-tiny.png").exists()
    plain, ckpt = result["variants"]["ov2-k0.35"], result["checkpointed"]["encoder"]["ov2-k0.35"]
    assert ckpt["checkpointing"] == "encoder" and ckpt["flops_per_step"] > plain["flops_per_step"]  # recomputation counted
    assert {(r["variant"], r["checkpointing"]) for r in result["accounted"]} == {("ov2-k0.35", "none"), ("ov2-k0.35", "encoder")}
    assert "| ov2-k0.35 | encoder |" in (tmp_path / "results-test-tiny.md").read_text()
