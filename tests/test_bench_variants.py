"""Each benchmarked variant computes the loss it claims, and the baselines are the models
``ov2 compare`` trains (no timings are asserted anywhere)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from bench.flops import count_variant_flops
from bench.variants import BASELINES, SHAPES, baseline_config_kwargs, build_variant, make_batch
from ov2_plugin.baselines import OpenVisionModel
from ov2_plugin.experiments.cost import count_flops

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


def compare_model(shape, objective: str):
    """The model ``ov2 compare`` trains for ``objective`` (its ``model_arguments`` -> ``ov2 pretrain``'s
    ``build_model``), from a recipe at the bench shape's sizes; on the meta device (no weights needed)."""
    from ov2_plugin.experiments.objectives import model_arguments
    from ov2_plugin.pretrain import build_model

    fields = {**shape.vision, **{f"decoder_{k}": v for k, v in {**shape.decoder, "vocab_size": shape.vocab_size}.items()}}
    image_size = fields.pop("image_size")
    recipe = {"model": {"preset": "tiny", "keep_ratio": 0.35, "image_size": image_size,
                        "config_overrides": ",".join(f"{k}={v}" for k, v in fields.items())}}
    with torch.device("meta"):
        return build_model(model_arguments(recipe, objective))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_the_baselines_are_the_models_ov2_compare_trains_with_its_config(name):
    """One baseline each: the bench's OV1-style and CoCa rows are ``ov2_plugin.baselines`` models with the config
    ``ov2 compare`` builds; the bench sets only its text side (captions through the text encoder, context)."""
    from ov2_plugin.baselines.coca import CocaModel, open_clip_coca_config  # imports open_clip

    objective, captions = BASELINES[name]
    with torch.device("meta"):
        bench = build_variant(name, TINY).model
    theirs = compare_model(TINY, objective)
    assert type(bench) is type(theirs) and type(bench) in (OpenVisionModel, CocaModel)
    expected = {**theirs.config.to_dict(), **baseline_config_kwargs(TINY, name)}
    assert bench.config.to_dict() == expected
    assert bench.config.objective == objective
    assert bench.state_dict().keys() == theirs.state_dict().keys()
    if objective == "openvision":
        assert bench.config.num_captions == captions and bench.config.text_length == TINY.text_length
        assert bench.config.keep_ratio == 1.0  # the decoder reads every visual token
    else:  # open_clip's CoCa as `ov2 compare` trains it: no attentional pooler, text side at the ViT's width
        assert open_clip_coca_config(bench.config)["vision_cfg"]["attentional_pool"] is False
        assert getattr(bench.coca.visual, "attn_pool", None) is None
        assert bench.coca.text.width == TINY.vision["hidden_size"] and bench.config.text_length == TINY.caption_length


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_a_baseline_rows_loss_is_its_models_loss_on_the_bench_batch(batch, name):
    objective, captions = BASELINES[name]
    torch.manual_seed(0)
    v = build_variant(name, TINY)
    loss = v.loss(batch)
    text_ids = batch["text_ids"][:captions] if captions else None
    out = v.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                  text_ids=text_ids)
    torch.testing.assert_close(loss, out.loss)
    torch.testing.assert_close(out.loss, out.caption_loss + out.contrastive_loss)
    assert loss.item() < 3 * torch.log(torch.tensor(float(TINY.vocab_size))).item()  # initialised weights
    tower = v.model.coca.text if objective == "coca" else v.model.text_encoder
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert not torch.allclose(loss, v.loss(batch))


def test_ov1_decoder_reads_every_visual_token_as_ov2_at_keep_one(batch):
    torch.manual_seed(0)
    ov1 = build_variant("ov1-1cap", TINY).model
    ov2 = build_variant("ov2-k1.0", TINY).model
    ov2.load_state_dict(ov1.captioner.state_dict())
    caption = ov1(batch["pixel_values"], batch["input_ids"], labels=batch["labels"], text_ids=batch["text_ids"][:1]).caption_loss
    torch.testing.assert_close(caption, ov2(batch["pixel_values"], batch["input_ids"], labels=batch["labels"]).loss)


def test_ov1_two_captions_average_the_one_caption_contrastive_losses(batch):
    torch.manual_seed(0)
    two = build_variant("ov1-2cap", TINY).model
    one = build_variant("ov1-1cap", TINY).model
    one.load_state_dict(two.state_dict())
    args = (batch["pixel_values"], batch["input_ids"])
    both = two(*args, labels=batch["labels"], text_ids=batch["text_ids"]).contrastive_loss
    each = [one(*args, labels=batch["labels"], text_ids=[t]).contrastive_loss for t in batch["text_ids"]]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)
    with pytest.raises(ValueError, match="2 caption"):
        two(*args, labels=batch["labels"], text_ids=batch["text_ids"][:1])


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
