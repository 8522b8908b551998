"""WebDataset shards written from the built-in scenes: exact sharding, order, caption field, bad samples."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from ov2_plugin.data.bad_samples import BadSampleLimitExceeded, collect_bad_samples
from ov2_plugin.data.scene_shards import alt_caption, truncate_file, write_scene_shards
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.data.transforms import eval_transform
from ov2_plugin.data.webdataset_source import WebDatasetCaptions

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_scene_shards(root, num_shards=8, samples_per_shard=6, image_size=16)
    return root


def dataset(root, **kw) -> WebDatasetCaptions:
    kw.setdefault("shuffle_buffer", 4)
    return WebDatasetCaptions(f"{root}/{{00000..00007}}.tar", eval_transform(16), **kw)


def keys_of(ds, num_workers: int) -> list[str]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return [s["key"].rsplit("/", 1)[1] for s in loader]


def test_every_sample_is_seen_exactly_once_across_2_ranks_x_2_workers(shards):
    seen = []
    for rank in range(2):
        ranks_keys = keys_of(dataset(shards, rank=rank, world_size=2, seed=3), num_workers=2)
        assert ranks_keys, f"rank {rank} got no samples"
        seen += ranks_keys
    assert sorted(seen) == [f"{i:09d}" for i in range(48)]


def test_order_is_fixed_by_seed_epoch_and_world_size(shards):
    first = keys_of(dataset(shards, rank=1, world_size=2, seed=3), num_workers=2)
    assert keys_of(dataset(shards, rank=1, world_size=2, seed=3), num_workers=2) == first
    assert keys_of(dataset(shards, rank=1, world_size=2, seed=4), num_workers=2) != first
    later = dataset(shards, rank=1, world_size=2, seed=3)
    later.set_epoch(1)
    assert keys_of(later, num_workers=2) != first


def test_caption_field_picks_txt_or_a_json_key(shards):
    by_txt = {s["key"].rsplit("/", 1)[1]: s["caption"] for s in dataset(shards, shuffle=False)}
    by_json = {s["key"].rsplit("/", 1)[1]: s["caption"] for s in dataset(shards, shuffle=False, caption_field="json:alt_caption")}
    assert by_txt["000000007"] == make_scene(0, 7).caption
    assert by_json["000000007"] == alt_caption(7)
    with pytest.raises(ValueError, match="json:KEY"):
        dataset(shards, caption_field="alt_caption")


def test_missing_json_key_counts_as_missing_caption(shards, tmp_path):
    samples = list(dataset(shards, caption_field="json:no_such_key", report_dir=str(tmp_path), max_bad_fraction=1.0))
    assert samples == []
    assert collect_bad_samples(tmp_path)["by_reason"]["missing_caption"] == 48


def test_corrupt_images_and_a_truncated_tar_are_skipped_and_counted(tmp_path):
    paths = write_scene_shards(tmp_path / "s", num_shards=4, samples_per_shard=10, image_size=16, corrupt_every=10)
    truncate_file(paths[3], 0.5)  # a download cut at half: its first samples survive
    ds = WebDatasetCaptions(f"{tmp_path}/s/{{00000..00003}}.tar", eval_transform(16), report_dir=str(tmp_path / "r"))
    good = list(DataLoader(ds, batch_size=None, num_workers=2))
    report = collect_bad_samples(tmp_path / "r")
    assert report["by_reason"]["truncated_tar"] == 1
    assert report["by_reason"]["corrupt_image"] == 3  # one in each intact shard; the cut one lost its 10th
    assert report["good_samples"] == len(good) and 27 < len(good) < 36
    assert all(torch.isfinite(s["pixel_values"]).all() for s in good)


def test_mostly_broken_shards_stop_with_a_clear_message(tmp_path):
    write_scene_shards(tmp_path, num_shards=2, samples_per_shard=40, image_size=16, corrupt_every=2)
    ds = WebDatasetCaptions(f"{tmp_path}/{{00000..00001}}.tar", eval_transform(16), max_bad_fraction=0.3)
    with pytest.raises(BadSampleLimitExceeded, match="max_bad_fraction 0.3"):
        list(ds)


def test_bad_sample_files_are_json(tmp_path):
    paths = write_scene_shards(tmp_path, num_shards=1, samples_per_shard=5, image_size=16, corrupt_every=5)
    list(WebDatasetCaptions(str(paths[0]), eval_transform(16), report_dir=str(tmp_path / "r"), max_bad_fraction=1.0))
    (f,) = (tmp_path / "r" / "bad_samples").glob("*.json")
    assert json.loads(f.read_text())["counts"] == {"corrupt_image": 1}


def test_inception_augmentation_of_a_sample_is_the_same_on_any_number_of_ranks_and_workers(shards):
    from ov2_plugin.data.transforms import train_transform

    def augmented(world_size: int, num_workers: int) -> dict[str, torch.Tensor]:
        out = {}
        for rank in range(world_size):
            ds = WebDatasetCaptions(f"{shards}/{{00000..00007}}.tar", train_transform(16, min_area=0.2),
                                    rank=rank, world_size=world_size, seed=3, shuffle_buffer=4)
            # 0 workers: the stream itself (a DataLoader draws its workers' base seed from the global generator)
            samples = DataLoader(ds, batch_size=None, num_workers=num_workers) if num_workers else ds
            out |= {s["key"]: s["pixel_values"] for s in samples}
        return out

    torch.manual_seed(123)
    state = torch.get_rng_state()
    alone = augmented(1, 0)  # in this process
    assert torch.equal(state, torch.get_rng_state())  # the process's own generator is not used
    spread = augmented(2, 2)
    assert alone.keys() == spread.keys() and len(alone) == 48
    assert all(torch.equal(alone[k], spread[k]) for k in alone)
    first = next(iter(alone.values()))
    assert any(not torch.equal(first, v) for v in alone.values())  # yet samples are augmented differently
