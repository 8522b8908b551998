"""Training on broken shards: skipped samples are counted per reason in report.json; mostly broken data stops."""

from __future__ import annotations

import json

import pytest
from torch.utils.data import DataLoader

from ov2_plugin.cli import main as ov2
from ov2_plugin.data.scene_shards import truncate_file, write_scene_shards
from ov2_plugin.data.transforms import eval_transform
from ov2_plugin.data.webdataset_source import WebDatasetCaptions
from ov2_plugin.pretrain import main

pytest.importorskip("webdataset")
FLAGS = ["--image_size", "32", "--use_cpu", "true", "--eval_samples", "0", "--logging_steps", "1",
         "--save_strategy", "no", "--seed", "0", "--report_to", "none"]


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
    assert bad["by_reason"] == {"corrupt_image": 3, "unreadable_file": 0, "missing_caption": 0, "truncated_tar": 1}
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
