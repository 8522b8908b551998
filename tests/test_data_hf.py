"""``--data hf``: Hugging Face datasets (parquet files, a saved folder, streaming) as a pretraining source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import launch_env, run_python, torchrun
from torch.utils.data import DataLoader

from ov2_plugin.data.bad_samples import collect_bad_samples
from ov2_plugin.data.scene_shards import jpeg_bytes
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.data.transforms import eval_transform

datasets = pytest.importorskip("datasets")
from ov2_plugin.data.hf_source import HfCaptions  # noqa: E402


def scene_rows(n: int, start: int = 0, broken: bool = False) -> dict:
    images = [{"bytes": jpeg_bytes(make_scene(0, i).render(32)), "path": None} for i in range(start, start + n)]
    captions = [make_scene(0, i).caption for i in range(start, start + n)]
    if broken:
        images[1] = {"bytes": b"<html>not an image</html>", "path": None}
        captions[2] = "  "
    return {"image": images, "text": captions, "id": list(range(start, start + n))}


def write_parquet(path: Path, n: int, start: int = 0, broken: bool = False) -> Path:
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"), "id": datasets.Value("int64")})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(scene_rows(n, start, broken), features=features).to_parquet(str(path))
    return path


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def captions_read(ds, num_workers: int = 2) -> list[str]:
    return [s["caption"] for s in DataLoader(ds, batch_size=None, num_workers=num_workers)]


def test_parquet_rows_are_read_exactly_once_across_2_ranks_x_2_workers_and_bad_ones_counted(tmp_path):
    path = write_parquet(tmp_path / "data" / "train.parquet", 20, broken=True)
    seen = []
    for rank in range(2):
        ds = HfCaptions(path, eval_transform(16), rank=rank, world_size=2, seed=1, report_dir=str(tmp_path / "r"),
                        max_bad_fraction=1.0)
        seen += captions_read(ds)
    expected = [c for i, c in enumerate(scene_rows(20)["text"]) if i not in (1, 2)]
    assert sorted(seen) == sorted(expected)
    report = collect_bad_samples(tmp_path / "r")
    assert report["by_reason"]["corrupt_image"] == 1 and report["by_reason"]["missing_caption"] == 1


def test_saved_dataset_folder_with_splits_and_named_columns(tmp_path):
    rows = scene_rows(6)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"picture": [r["bytes"] for r in rows["image"]],
                                                                    "alt": rows["text"]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    ds = HfCaptions(tmp_path / "saved", eval_transform(16), image_column="picture", caption_column="alt", shuffle=False)
    samples = list(ds)
    assert [s["caption"] for s in samples] == rows["text"] and samples[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="no column 'image'.*--image_column"):
        HfCaptions(tmp_path / "saved", eval_transform(16))
    with pytest.raises(ValueError, match="--hf_split"):
        HfCaptions(tmp_path / "saved", eval_transform(16), image_column="picture", split="validation")


def test_streaming_splits_by_file_exactly_once(tmp_path):
    for k in range(4):
        write_parquet(tmp_path / "data" / f"part-{k}.parquet", 5, start=5 * k)
    ds = HfCaptions(tmp_path / "data", eval_transform(16), streaming=True, seed=2)
    assert ds.dataset.n_shards == 4
    assert sorted(captions_read(ds)) == sorted(make_scene(0, i).caption for i in range(20))


def test_ddp_2_processes_train_on_parquet_and_read_each_row_once_per_epoch(tmp_path):
    rows = 32
    path = write_parquet(tmp_path / "data" / "train.parquet", rows)
    env = launch_env(HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    out = tmp_path / "run"
    args = [*torchrun(2), "-m", "ov2_plugin.pretrain", "--data", "hf", "--hf_path", str(path), "--output_dir", str(out),
            "--image_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "8",  # 2 epochs of 32 rows
            "--use_cpu", "true", "--eval_samples", "0", "--dataloader_num_workers", "0", "--save_strategy", "no",
            "--logging_steps", "1", "--seed", "0", "--report_to", "none"]
    proc = run_python(args, env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and len(report["loss_history"]) == 8
    per_stream = {f.stem: json.loads(f.read_text())["good"] for f in (out / "bad_samples").glob("*.json")}
    assert per_stream == {f"epoch{e}-rank{r}-worker0": rows // 2 for e in (0, 1) for r in (0, 1)}
    assert report["bad_samples"]["good_samples"] == 2 * rows and report["bad_samples"]["bad_samples"] == 0
