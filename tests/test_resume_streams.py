"""Resume at web scale: a SIGKILLed run on real-data defaults (webdataset shards or a JSONL file, inception
augmentation, 2 loader workers) resumes from the checkpoint's stream position to bitwise the weights
and the bad-sample counts of the uninterrupted run, without reading what came before that position.

Proof of "without reading": before resuming, the test deletes every shard (and breaks every JSONL
record) that the checkpoint's positions put behind each worker. Had the resumed run read one of them,
it would count an unreadable shard (or an unparsable record) and the counts would differ.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ov2_plugin.checkpointing import newest_complete_checkpoint
from ov2_plugin.data.scene_shards import write_scene_shards
from ov2_plugin.data.transforms import eval_transform

pytest.importorskip("webdataset")
ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "--image_size", "32", "--per_device_train_batch_size", "4", "--save_steps", "4", "--save_total_limit", "3",
    "--logging_steps", "1", "--learning_rate", "1e-3", "--use_cpu", "true", "--eval_samples", "0",
    "--dataloader_num_workers", "2", "--seed", "0", "--full_determinism", "true", "--augment", "inception",
    "--max_bad_fraction", "1.0", "--report_to", "none",
]


def pretrain(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ov2_plugin.pretrain", "--output_dir", str(out), *RUN, *extra]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_after_first_checkpoint(proc: subprocess.Popen, run_dir: Path) -> str:
    deadline = time.time() + 300
    while newest_complete_checkpoint(run_dir) is None:
        assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stdout.read()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model.safetensors").exists(), "the run finished before it was killed"
    return newest_complete_checkpoint(run_dir)


def saved_positions(checkpoint: str) -> dict:
    state = json.loads((Path(checkpoint) / "stream_state_rank0.json").read_text())
    assert state["num_workers"] == 2 and state["workers"], state
    return state


def one_epoch_of_batches(ds) -> int:
    """The number of batches of 4 one pass gives on 2 workers: the run ends exactly at the end of the data,
    so every worker reaches its end and writes its final counts."""
    from torch.utils.data import DataLoader

    return len(list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=len)))


def assert_same_run(straight: Path, resumed: Path) -> None:
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == [], f"resumed weights differ from the uninterrupted run in {differing[:5]}"
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (straight, resumed))
    assert rb["bad_samples"] == ra["bad_samples"]
    assert ra["bad_samples"]["bad_samples"] > 0  # the data had broken samples to count


def test_webdataset_inception_2_workers_sigkill_resume_is_bitwise_and_skips_whole_shards(tmp_path):
    from ov2_plugin.data.webdataset_source import WebDatasetCaptions

    write_scene_shards(tmp_path / "shards", num_shards=12, samples_per_shard=4, image_size=32, corrupt_every=7)
    pattern = f"{tmp_path}/shards/{{00000..00011}}.tar"
    steps = one_epoch_of_batches(WebDatasetCaptions(pattern, eval_transform(32), seed=0, shuffle_buffer=5))
    data = ["--data", "webdataset", "--train_shards", pattern, "--shuffle_buffer", "5", "--max_steps", str(steps)]
    straight = pretrain(tmp_path / "straight", *data)
    killed = pretrain(tmp_path / "killed", *data)
    checkpoint = kill_after_first_checkpoint(killed, tmp_path / "killed")
    finish(straight)
    state = saved_positions(checkpoint)
    deleted = []
    for worker, position in state["workers"].items():
        ds = WebDatasetCaptions(pattern, eval_transform(32), seed=0)
        ds.set_epoch(position["epoch"])
        for url in ds.my_units(int(worker), 2)[: position["unit"]]:
            Path(url).unlink()
            deleted.append(url)
    assert deleted, f"no worker had passed a whole shard at {checkpoint}: {state}"
    finish(pretrain(tmp_path / "killed", *data, "--resume_from_checkpoint", "latest"))
    assert_same_run(tmp_path / "straight", tmp_path / "killed")
