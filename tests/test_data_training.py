"""Training on broken shards and caption files: skipped samples are counted per reason in report.json; mostly broken data stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from ov2_plugin.cli import main as ov2
from ov2_plugin.data.bad_samples import BadSampleLimitExceeded
from ov2_plugin.data.json_source import JsonCaptions
from ov2_plugin.data.scene_shards import truncate_file, write_scene_json, write_scene_shards
from ov2_plugin.data.transforms import eval_transform
from ov2_plugin.data.webdataset_source import WebDatasetCaptions
from ov2_plugin.pretrain import main

pytest.importorskip("webdataset")
FLAGS = ["--image_size", "32", "--use_cpu", "true", "--eval_samples", "0", "--logging_steps", "1",
         "--save_strategy", "no", "--seed", "0", "--report_to", "none"]


def nonzero(by_reason: dict) -> dict:
    return {r: n for r, n in by_reason.items() if n}


def broken_jsonl(root) -> tuple[str, dict]:
    """24 good scene records plus one of each fault a caption file and its images can have."""
    write_scene_json(root, 28, image_size=32, conversations=False)
    records = json.loads((root / "captions.json").read_text())
    (root / "images" / "000024.jpg").write_bytes(b"<html>404 not found</html>")  # corrupt
    truncate_file(root / "images" / "000025.jpg", 0.4)  # truncated download
    (root / "images" / "000026.jpg").unlink()  # missing
    lines = [json.dumps(r) for r in records[:27]]
    lines += [
        '{"image": "images/000027.jpg", "caption": "a line cut off',  # does not parse
        json.dumps(["images/000027.jpg", "a list, not a record"]),
        json.dumps({"caption": "a record without an image"}),
        json.dumps({"image": "images/000000.jpg", "caption": ""}),
        json.dumps({"image": "images/000001.jpg", "caption": " \t\n "}),
        "",  # blank lines are not records
    ]
    path = root / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    expected = {"corrupt_image": 2, "unreadable_file": 1, "unparsable_record": 1, "not_a_record": 1,
                "missing_image": 1, "missing_caption": 2}
    return str(path), expected


def test_a_jsonl_with_every_kind_of_fault_trains_to_the_end_with_each_reason_counted(tmp_path):
    path, expected = broken_jsonl(tmp_path / "data")
    out = tmp_path / "run"
    main(["--data", "json", "--json_path", path, "--image_root", str(tmp_path / "data"), "--output_dir", str(out),
          "--max_steps", "6", "--per_device_train_batch_size", "4", "--dataloader_num_workers", "2",
          "--max_bad_fraction", "0.5", *FLAGS])
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and len(report["loss_history"]) == 6
    bad = report["bad_samples"]
    assert nonzero(bad["by_reason"]) == expected
    assert bad["good_samples"] == 24
    examples = bad["examples"]
    assert examples["unparsable_record"] == [f"{path}:28"] and examples["missing_image"] == [f"{path}:30"]
    assert examples["unreadable_file"] == [f"{path}:27 (images/000026.jpg)"]


def test_mostly_broken_jsonl_names_the_file_and_the_counts(tmp_path):
    path, _ = broken_jsonl(tmp_path)
    lines = Path(path).read_text().splitlines()
    Path(path).write_text("\n".join(lines[:4] + ["{not json"] * 60) + "\n")
    ds = JsonCaptions(path, tmp_path, eval_transform(32), max_bad_fraction=0.2)
    with pytest.raises(BadSampleLimitExceeded, match=rf"from {path} were broken \(unparsable_record: \d+;.*{path}:\d+"):
        list(ds)


def test_shards_with_10_percent_corrupt_images_and_a_truncated_tar_train_to_the_end_with_counts(tmp_path):
    paths = write_scene_shards(tmp_path / "shards", num_shards=4, samples_per_shard=10, image_size=32, corrupt_every=10)
    truncate_file(paths[2], 0.5)
    pattern = f"{tmp_path}/shards/{{00000..00003}}.tar"
    # One pass over the data, as the training run will batch it (2 workers, batch 4).
    one_pass = WebDatasetCaptions(pattern, eval_transform(32), max_bad_fraction=1.0)
    batches = list(DataLoader(one_pass, batch_size=4, num_workers=2, collate_fn=len))
    out = tmp_path / "run"
    main(["--data", "webdataset", "--train_shards", pattern, "--output_dir", str(out), "--augment", "inception",
          "--max_steps", str(len(batches)), "--per_device_train_batch_size", "4",
          "--dataloader_num_workers", "2", *FLAGS])
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and len(report["loss_history"]) == len(batches)
    bad = report["bad_samples"]
    assert nonzero(bad["by_reason"]) == {"corrupt_image": 3, "truncated_tar": 1}
    assert bad["good_samples"] == sum(batches)
    assert (out / "model.safetensors").is_file()


def test_mostly_broken_data_stops_the_run_with_a_clear_message(tmp_path, capsys):
    write_scene_shards(tmp_path / "shards", num_shards=2, samples_per_shard=40, image_size=32, corrupt_every=2)
    code = ov2(["pretrain", "--data", "webdataset", "--train_shards", f"{tmp_path}/shards/{{00000..00001}}.tar",
                "--output_dir", str(tmp_path / "run"), "--max_steps", "20", "--per_device_train_batch_size", "4",
                "--max_bad_fraction", "0.2", "--dataloader_num_workers", "1", *FLAGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "ov2 pretrain: error:" in err and "above --max_bad_fraction 0.2" in err and "corrupt_image" in err
