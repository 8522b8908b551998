"""``ov2 llava-train`` on data as it comes: text-only records, broken and missing images, malformed
records. Text-only records train without an image (stage 2) or are skipped (stage 1); everything
broken is skipped and counted exactly in report.json; mixed batches run through HF LLaVA."""

import json
import shutil

import pytest
import torch

from ov2_plugin.data.bad_samples import BadSampleLimitExceeded
from ov2_plugin.data.instructions import caption_records, instruction_records
from ov2_plugin.llava import build_llava
from ov2_plugin.llava.data import ConversationCollator, LlavaConversations, dummy_image_inputs, select_records
from ov2_plugin.llava.train import main as train_main

COMMON = ["--use_cpu", "true", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--seed", "0",
          "--num_train_epochs", "1", "--learning_rate", "1e-3", "--dataloader_num_workers", "0"]
TOLERANT = ["--max_bad_fraction", "0.5"]  # the fault tests below hold 7 broken samples of 23


def text_only(n):
    return {"id": f"text-{n}", "conversations": [{"from": "human", "value": "what colour is the circle?"},
                                                {"from": "gpt", "value": "red"},
                                                {"from": "human", "value": "and the square?"},
                                                {"from": "gpt", "value": "blue"}]}


def one_turn(image, question, answer, rid):
    record = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    return record if image is None else {**record, "image": image}


def broken_files(folder, parts):
    """A corrupt PNG, a truncated PNG, a truncated JPEG (real scenes cut in half); relative names."""
    from PIL import Image

    good = (parts / "data" / "scenes" / "0_0.png").read_bytes()
    (folder / "broken").mkdir()
    (folder / "broken" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "broken" / "cut.png").write_bytes(good[: len(good) // 2])
    Image.open(parts / "data" / "scenes" / "0_1.png").convert("RGB").resize((64, 64)).save(folder / "jpg.jpg", quality=90)
    jpeg = (folder / "jpg.jpg").read_bytes()
    (folder / "broken" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return ["broken/garbage.png", "broken/cut.png", "broken/cut.jpg"]


def faulty_data(tmp_path, parts, good: list[dict]) -> tuple:
    """``good`` records with every fault spread between them (never two broken images in a row, so
    each is read once per epoch and replaced by a good neighbour)."""
    folder = tmp_path / "data"
    shutil.copytree(parts / "data" / "scenes", folder / "scenes")
    broken = broken_files(folder, parts)
    faults = [
        *(one_turn(name, "<image>\nwhat is it?", "circle", f"bad-{i}") for i, name in enumerate(broken)),
        one_turn("scenes/nope.png", "<image>\nwhat is it?", "circle", "missing"),
        one_turn("scenes/0_2.png", "<image>\n<image>\ncompare", "same", "two-images"),
        {"id": "turns", "image": "scenes/0_3.png", "conversations": [
            {"from": "human", "value": "<image>\nq"}, {"from": "human", "value": "again"}]},
        {"id": "no-token", "image": "scenes/0_4.png", "conversations": [
            {"from": "human", "value": "what is it?"}, {"from": "gpt", "value": "circle"}]},
        text_only(0), text_only(1), text_only(2),
    ]
    records = []
    for i, record in enumerate(good):
        records.append(record)
        if i % 2 == 1 and faults:
            records.append(faults.pop(0))
    records += faults
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path, len(records)


@pytest.fixture(scope="module")
def llava(parts):
    return build_llava(parts / "tower", parts / "lm")


def test_stage1_plain_skips_text_only_and_counts_every_fault(parts, tmp_path):
    good = list(caption_records(0, 12))
    path, total = faulty_data(tmp_path, parts, good)
    out = tmp_path / "stage1"
    metrics = train_main(["--vision_tower", f"ov2:{parts / 'tower'}", "--language_model", str(parts / "lm"),
                          "--data_path", str(path), "--version", "plain", "--tune_mm_mlp_adapter", "true",
                          "--output_dir", str(out), *COMMON, *TOLERANT])
    report = json.loads((out / "report.json").read_text())
    bad = report["bad_samples"]
    assert bad == metrics["bad_samples"]
    assert bad["records"] == total == 12 + 10
    assert bad["skipped_text_only"] == 3
    assert {k: v for k, v in bad["by_reason"].items() if v} == {"corrupt_image": 3, "unreadable_file": 1, "multiple_images": 1,
                                                             "image_token_mismatch": 1, "bad_turns": 1}
    # 12 captions + the 4 records whose image is broken, each replaced by its readable neighbour
    assert metrics["samples"] == 16 and bad["good_samples"] == 16 and bad["bad_samples"] == 7
    assert any("cut.jpg" in e for e in bad["examples"]["corrupt_image"])
    assert any("nope.png" in e for e in bad["examples"]["unreadable_file"])
    assert report["loss_history"] and (out / "model.safetensors").is_file()


def test_stage2_trains_text_only_records_and_counts_every_fault(parts, tmp_path):
    good = list(instruction_records(0, 3))
    path, total = faulty_data(tmp_path, parts, good)
    out = tmp_path / "stage2"
    metrics = train_main(["--vision_tower", f"ov2:{parts / 'tower'}", "--language_model", str(parts / "lm"),
                          "--data_path", str(path), "--version", "chat", "--lora_enable", "true", "--lora_r", "4",
                          "--lora_alpha", "8", "--output_dir", str(out), *COMMON, *TOLERANT])
    bad = json.loads((out / "report.json").read_text())["bad_samples"]
    assert bad["records"] == total == len(good) + 10 and bad["skipped_text_only"] == 0
    assert {k: v for k, v in bad["by_reason"].items() if v} == {"corrupt_image": 3, "unreadable_file": 1, "multiple_images": 1,
                                                             "image_token_mismatch": 1, "bad_turns": 1}
    assert metrics["samples"] == len(good) + 3 + 4 == bad["good_samples"]  # text-only records train
    assert (out / "adapter_model.safetensors").is_file()


def test_mostly_broken_data_stops_with_the_counts(parts, tmp_path):
    records = [one_turn("scenes/0_0.png", "<image>\nq", "a", "ok")] + [
        one_turn(None, "<image>\nq", "a", f"orphan-{i}") for i in range(3)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    with pytest.raises(BadSampleLimitExceeded, match=r"3 of 4 records in .*image_token_mismatch: 3"):
        train_main(["--vision_tower", f"ov2:{parts / 'tower'}", "--language_model", str(parts / "lm"),
                    "--data_path", str(path), "--image_folder", str(parts / "data"), "--output_dir", str(tmp_path / "o"),
                    *COMMON])
    records = [one_turn("scenes/0_0.png", "<image>\nq", "a", "ok")] * 3 + [
        one_turn(f"scenes/gone{i}.png", "<image>\nq", "a", f"gone{i}") for i in range(2)]
    records = [records[i] for i in (0, 3, 1, 4, 2)]  # 2 missing of 5 reads -> 2 / 7 broken after replacement
    (tmp_path / "d.json").write_text(json.dumps(records))
    out = tmp_path / "o2"
    with pytest.raises(BadSampleLimitExceeded, match="unreadable_file: 2.*nothing was saved"):
        train_main(["--vision_tower", f"ov2:{parts / 'tower'}", "--language_model", str(parts / "lm"),
                    "--data_path", str(tmp_path / "d.json"), "--image_folder", str(parts / "data"),
                    "--output_dir", str(out), "--max_bad_fraction", "0.2", *COMMON])
    report = json.loads((out / "report.json").read_text())
    assert report["status"].startswith("stopped") and report["bad_samples"]["by_reason"]["unreadable_file"] == 2
    assert not (out / "model.safetensors").exists()


def test_records_are_checked_by_structure():
    ok = one_turn("a.png", "<image>\nq", "a", "ok")
    records = [ok, text_only(0), one_turn(["a.png", "b.png"], "<image>\nq", "a", "list"),
               {"conversations": []}, "not a record", one_turn(None, "q <image>", "a", "orphan"),
               {"image": "a.png", "conversations": [{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "q"}]},
               one_turn(["a.png"], "<image>\nq", "a", "one-element list")]
    kept, skipped = select_records(records, "chat")
    assert [r.get("id") for r in kept] == ["ok", "text-0", "one-element list"]
    assert dict(skipped.counts) == {"multiple_images": 1, "bad_turns": 3, "image_token_mismatch": 1}
    kept, skipped = select_records(records, "plain")
    assert len(kept) == 2 and skipped.counts["text_only"] == 1 and skipped.bad == 5


def test_text_only_sample_has_no_image_and_mixed_batch_trains_hf_llava(parts, llava):
    model, proc = llava
    n = model.config.image_seq_length
    records = [one_turn("scenes/0_0.png", "<image>\nwhat colour are the circles?", "red", "img"), text_only(0),
               one_turn("scenes/0_1.png", "how many squares? <image>", "two", "img-late")]
    dataset = LlavaConversations(records, parts / "data", proc)
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    samples = [dataset[i] for i in range(3)]
    assert "pixel_values" not in samples[1] and image_id not in samples[1]["input_ids"]
    assert [s["input_ids"].count(image_id) for s in samples] == [n, 0, n]

    collate = ConversationCollator(proc.tokenizer.pad_token_id, image_id)
    batch = collate(samples)
    assert batch.pop("bad_samples") == [] and batch["pixel_values"].shape == (2, 3, 32, 32)
    model.train()
    out = model(**batch)
    out.loss.backward()
    projector = model.model.multi_modal_projector.linear_1.weight.grad
    assert torch.isfinite(out.loss) and projector is not None and projector.abs().sum() > 0
    alone = collate([samples[1]])
    assert "pixel_values" not in alone
    alone.pop("bad_samples")
    width = len(samples[1]["input_ids"])
    with torch.no_grad():  # the text-only row sees no image: the same logits as on its own
        mixed = model(**batch).logits[1, :width]
        torch.testing.assert_close(mixed, model(**alone).logits[0, :width], rtol=1e-4, atol=1e-5)


def test_dummy_image_keeps_the_tower_busy_and_the_loss_unchanged(parts, llava):
    model, proc = llava
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    dataset = LlavaConversations([text_only(0), text_only(1)], parts / "data", proc)
    samples = [dataset[0], dataset[1]]
    plain = ConversationCollator(proc.tokenizer.pad_token_id, image_id)(samples)
    dummy = ConversationCollator(proc.tokenizer.pad_token_id, image_id, dummy=dummy_image_inputs(dataset))(samples)
    for b in (plain, dummy):
        b.pop("bad_samples")
    assert "pixel_values" not in plain and dummy["pixel_values"].shape == (1, 3, 32, 32)
    model.train()
    model.zero_grad()
    loss = model(**plain).loss
    model.zero_grad()
    with_dummy = model(**dummy)
    with_dummy.loss.backward()
    torch.testing.assert_close(with_dummy.loss, loss, rtol=1e-5, atol=1e-6)
    grad = model.model.multi_modal_projector.linear_1.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0  # in the graph, but contributes nothing


def test_no_readable_image_in_reach_names_the_image_folder(parts, llava):
    model, proc = llava
    records = [one_turn(f"gone{i}.png", "<image>\nq", "a", str(i)) for i in range(3)]
    dataset = LlavaConversations(records, parts / "data", proc)
    with pytest.raises(BadSampleLimitExceeded, match="3 records in a row.*--image_folder"):
        dataset[1]
