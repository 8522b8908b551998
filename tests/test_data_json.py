"""LLaVA-style JSON/JSONL and image folder + captions file, written from the built-in scenes."""

from __future__ import annotations

import csv
import json

import pytest
from torch.utils.data import DataLoader

from ov2_plugin.data.bad_samples import collect_bad_samples
from ov2_plugin.data.folder_source import FolderCaptions
from ov2_plugin.data.json_source import JsonCaptions
from ov2_plugin.data.scene_shards import write_scene_json
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.data.transforms import eval_transform


def test_llava_conversations_give_the_model_turn_as_caption_exactly_once_across_ranks_and_workers(tmp_path):
    path = write_scene_json(tmp_path, 12, image_size=16, conversations=True)
    seen = []
    for rank in range(2):
        ds = JsonCaptions(path, tmp_path, eval_transform(16), rank=rank, world_size=2, seed=5)
        seen += [(s["key"], s["caption"]) for s in DataLoader(ds, batch_size=None, num_workers=2)]
    assert sorted(seen, key=lambda kc: int(kc[0].rsplit(":", 1)[1])) == [
        (f"captions.json:{i}", make_scene(0, i).caption) for i in range(12)]


def test_jsonl_with_caption_key_and_broken_records_are_counted(tmp_path):
    write_scene_json(tmp_path, 6, image_size=16)
    (tmp_path / "images" / "000002.jpg").write_bytes(b"<html>not an image</html>")
    lines = [{"image": f"images/{i:06d}.jpg", "short": f"caption {i}"} for i in range(6)]
    lines[3]["short"] = "   "
    lines.append({"image": "images/missing.jpg", "short": "gone"})
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ds = JsonCaptions(tmp_path / "c.jsonl", tmp_path, eval_transform(16), caption_key="short",
                      report_dir=str(tmp_path / "r"), max_bad_fraction=1.0, shuffle=False)
    assert [s["caption"] for s in ds] == ["caption 0", "caption 1", "caption 4", "caption 5"]
    by_reason = collect_bad_samples(tmp_path / "r")["by_reason"]
    assert {r: n for r, n in by_reason.items() if n} == {"corrupt_image": 1, "unreadable_file": 1, "missing_caption": 1}


def test_image_folder_with_csv_captions_counts_uncaptioned_images(tmp_path):
    write_scene_json(tmp_path, 5, image_size=16)
    with (tmp_path / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption"])
        for i in range(4):  # image 4 has no row
            writer.writerow([f"images/{i:06d}.jpg", make_scene(0, i).caption])
    ds = FolderCaptions(tmp_path, tmp_path / "captions.csv", eval_transform(16), shuffle=False,
                        report_dir=str(tmp_path / "r"), max_bad_fraction=1.0)
    samples = list(ds)
    assert [s["caption"] for s in samples] == [make_scene(0, i).caption for i in range(4)]
    assert samples[0]["pixel_values"].shape == (3, 16, 16)
    assert collect_bad_samples(tmp_path / "r")["by_reason"]["missing_caption"] == 1


def test_missing_files_fail_at_construction_with_the_flag_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--json_path"):
        JsonCaptions(tmp_path / "nope.json", tmp_path, eval_transform(16))
    with pytest.raises(NotADirectoryError, match="--image_folder"):
        FolderCaptions(tmp_path / "nope", None, eval_transform(16))


def test_record_file_reads_json_arrays_and_jsonl_one_record_at_a_time(tmp_path, monkeypatch):
    import ov2_plugin.data.json_records as json_records

    monkeypatch.setattr(json_records, "CHUNK", 7)  # records cut across many reads of the file
    records = [{"image": f"é/{i}.jpg", "caption": "a ] tricky, \"quoted\" {caption}", "n": [i, {"x": None}]}
               for i in range(5)] + [3.5, "text", []]
    (tmp_path / "a.json").write_text("\n [ " + " ,\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "]\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n")
    array, lines = json_records.RecordFile(tmp_path / "a.json"), json_records.RecordFile(tmp_path / "b.jsonl")
    assert not array.jsonl and lines.jsonl
    assert [array.get(i) for i in range(len(array))] == records
    assert [lines.get(i) for i in range(len(lines))] == [*records, None]  # the blank last line
    assert array.where(2).endswith("a.json#2") and lines.where(2).endswith("b.jsonl:3")
    (tmp_path / "c.json").write_text('[{"image": "x.jpg"}, {"image": oops}]')
    with pytest.raises(ValueError, match=r"c.json: the JSON array is malformed at byte 31.*JSONL"):
        json_records.RecordFile(tmp_path / "c.json")
