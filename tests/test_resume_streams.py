"""Resume at web scale: a SIGKILLed run on real-data defaults (webdataset shards or a JSONL file, inception
augmentation, 2 loader workers) resumes from the checkpoint's stream position to bitwise the weights
and the bad-sample counts of the uninterrupted run, without reading what came before that position.

Proof of "without reading": before resuming, the test deletes every shard (and breaks every JSONL
record) that the checkpoint's positions put behind each worker. Had the resumed run read one of them,
it would count an unreadable shard (or an unparsable record) and the counts would differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import torch
from launch import free_port, launch_env, start_python, torchrun
from safetensors.torch import load_file

from ov2_plugin.data.scene_shards import write_scene_json, write_scene_shards
from ov2_plugin.data.transforms import eval_transform
from ov2_plugin.trainer import newest_complete_checkpoint

pytest.importorskip("webdataset")
RUN = [
    "--image_size", "32", "--per_device_train_batch_size", "4", "--save_steps", "4", "--save_total_limit", "3",
    "--logging_steps", "1", "--learning_rate", "1e-3", "--use_cpu", "true", "--eval_samples", "0",
    "--dataloader_num_workers", "2", "--seed", "0", "--full_determinism", "true", "--augment", "inception",
    "--max_bad_fraction", "1.0", "--report_to", "none",
]


KILLER = """
import os, signal
from transformers import TrainerCallback
from ov2_plugin import trainer
from ov2_plugin.pretrain import main


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # called once the checkpoint folder is in place
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"  # torchrun --max-restarts
        if state.global_step == int(os.environ["KILL_AT_STEP"]) and args.process_index == int(os.environ["KILL_RANK"]) \
                and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)


original_init = trainer.Ov2Trainer.__init__


def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    self.add_callback(KillAfterSave())


trainer.Ov2Trainer.__init__ = init
main()
"""


# torchrun's default (static) rendezvous keeps one store across restarts and the ranks add no
# per-attempt prefix, so a restarted rank can read the gloo address its peer published in the
# previous attempt: "Connection refused", or a connection that never completes (3 in 6 runs here).
# The c10d rendezvous with a store of its own per round (pytorch/pytorch#135712) had none in 5 logged
# runs, and this test passed 13 times in 13; with the store shared with the launcher, 2 in 5 still
# read stale addresses.
RESTARTABLE_RENDEZVOUS = ("--rdzv-backend", "c10d", "--rdzv-endpoint")
FRESH_STORE_PER_RESTART = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def pretrain(out: Path, *extra: str, nproc: int = 1, kill_at: int | None = None, kill_rank: int = 0,
             launcher_flags: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
    """``ov2 pretrain`` on ``nproc`` processes; ``kill_at``: SIGKILL rank ``kill_rank`` right after checkpoint
    ``kill_at`` is complete, in the first attempt only (a fixed point: polling for the folder from outside
    races with a fast run)."""
    env = launch_env(KILL_AT_STEP=str(kill_at), KILL_RANK=str(kill_rank), **(env or {}))
    entry = ["-m", "ov2_plugin.pretrain"]
    if kill_at is not None:
        script = out.parent / "killed_after_save.py"
        script.write_text(KILLER)
        entry = [str(script)]
    launcher = torchrun(nproc, *launcher_flags) if nproc > 1 else []
    args = [*launcher, *entry, "--output_dir", str(out), *RUN, *extra]
    return start_python(args, env, stdout=subprocess.PIPE)


# A guard against a hung run, not a timing check: a CI run on a loaded 2-core CPU without bf16
# instructions once took over 400 s for two 2-process runs side by side.
RUN_TIMEOUT_S = 1200


def _communicate(proc: subprocess.Popen) -> str:
    """The run's output; a run past the guard is killed with its workers (no orphans eat the next tests' CPU)."""
    try:
        return proc.communicate(timeout=RUN_TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        # torchrun starts each rank in a session of its own, so the launcher's group is not the whole
        # tree; a rank left alive keeps the output pipe open and the wait below would never end
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out = proc.communicate()[0]
        raise AssertionError(f"the run passed its {RUN_TIMEOUT_S} s guard and was killed: " + out[-3000:]) from None


def finish(proc: subprocess.Popen) -> str:
    out = _communicate(proc)
    assert proc.returncode == 0, out[-3000:]
    return out


def killed_at(proc: subprocess.Popen, run_dir: Path, step: int) -> str:
    """Wait for the killed run; its newest complete checkpoint is ``step`` and it did not finish."""
    out = _communicate(proc)
    assert proc.returncode != 0, "the run was not killed: " + out[-2000:]
    assert not (run_dir / "model.safetensors").exists(), "the run finished before it was killed"
    assert newest_complete_checkpoint(run_dir) == str(run_dir / f"checkpoint-{step}"), out[-2000:]
    return newest_complete_checkpoint(run_dir)


def saved_positions(checkpoint: str, rank: int = 0) -> dict:
    state = json.loads((Path(checkpoint) / f"stream_state_rank{rank}.json").read_text())
    assert state["num_workers"] == 2 and state["workers"], state
    return state


def one_epoch_of_batches(ds) -> int:
    """The number of batches of 4 one pass gives on 2 workers: the run ends exactly at the end of the data,
    so every worker reaches its end and writes its final counts."""
    from torch.utils.data import DataLoader

    return len(list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=len)))


def assert_same_run(straight: Path, resumed: Path, some_bad: bool = True) -> None:
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == [], f"resumed weights differ from the uninterrupted run in {differing[:5]}"
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (straight, resumed))
    assert rb["bad_samples"] == ra["bad_samples"]
    assert (ra["bad_samples"]["bad_samples"] > 0) == some_bad  # the data had broken samples to count


def test_webdataset_inception_2_workers_sigkill_resume_is_bitwise_and_skips_whole_shards(tmp_path):
    from ov2_plugin.data.webdataset_source import WebDatasetCaptions

    write_scene_shards(tmp_path / "shards", num_shards=12, samples_per_shard=4, image_size=32, corrupt_every=7)
    pattern = f"{tmp_path}/shards/{{00000..00011}}.tar"
    steps = one_epoch_of_batches(WebDatasetCaptions(pattern, eval_transform(32), seed=0, shuffle_buffer=5))
    data = ["--data", "webdataset", "--train_shards", pattern, "--shuffle_buffer", "5", "--max_steps", str(steps)]
    straight = pretrain(tmp_path / "straight", *data)
    killed = pretrain(tmp_path / "killed", *data, kill_at=4)
    checkpoint = killed_at(killed, tmp_path / "killed", 4)
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


def test_reduced_jpeg_decoding_sigkill_resume_is_bitwise(tmp_path, monkeypatch):
    """256 px JPEGs trained at 32 px with inception crops: most decode at 1/4 of the stored size (counted below)."""
    from ov2_plugin.data.transforms import train_transform
    from ov2_plugin.data.webdataset_source import WebDatasetCaptions
    from ov2_plugin.image_decoding import JpegImage

    write_scene_shards(tmp_path / "shards", num_shards=12, samples_per_shard=4, image_size=256, corrupt_every=7)
    pattern = f"{tmp_path}/shards/{{00000..00011}}.tar"
    steps = one_epoch_of_batches(WebDatasetCaptions(pattern, eval_transform(32), seed=0, shuffle_buffer=5))
    scales = []
    original = JpegImage.dct_scale
    monkeypatch.setattr(JpegImage, "dct_scale", lambda self, *a: scales.append(original(self, *a)) or scales[-1])
    assert list(WebDatasetCaptions(pattern, train_transform(32), seed=0, shuffle_buffer=5))
    assert sum(s > 1 for s in scales) > len(scales) // 2, scales
    data = ["--data", "webdataset", "--train_shards", pattern, "--shuffle_buffer", "5", "--max_steps", str(steps)]
    straight = pretrain(tmp_path / "straight", *data)
    killed = pretrain(tmp_path / "killed", *data, kill_at=4)
    killed_at(killed, tmp_path / "killed", 4)
    finish(straight)
    finish(pretrain(tmp_path / "killed", *data, "--resume_from_checkpoint", "latest"))
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


def test_webdataset_on_2_ddp_processes_x_2_workers_sigkill_resume_is_bitwise(tmp_path):
    from ov2_plugin.data.webdataset_source import WebDatasetCaptions

    # 16 shards of 4: every rank x worker reads 4 shards, 4 batches; no broken samples, so both ranks
    # have the same number of batches and reach the end of the data together.
    write_scene_shards(tmp_path / "shards", num_shards=16, samples_per_shard=4, image_size=32)
    pattern = f"{tmp_path}/shards/{{00000..00015}}.tar"
    data = ["--data", "webdataset", "--train_shards", pattern, "--shuffle_buffer", "5", "--max_steps", "8"]
    straight = pretrain(tmp_path / "straight", *data, nproc=2)
    killed = pretrain(tmp_path / "killed", *data, nproc=2, kill_at=4)
    checkpoint = killed_at(killed, tmp_path / "killed", 4)
    finish(straight)
    deleted = []
    for rank in range(2):
        for worker, position in saved_positions(checkpoint, rank)["workers"].items():
            ds = WebDatasetCaptions(pattern, eval_transform(32), seed=0, rank=rank, world_size=2)
            ds.set_epoch(position["epoch"])
            for url in ds.my_units(int(worker), 2)[: position["unit"]]:
                Path(url).unlink()
                deleted.append(url)
    assert deleted
    finish(pretrain(tmp_path / "killed", *data, "--resume_from_checkpoint", "latest", nproc=2))
    assert_same_run(tmp_path / "straight", tmp_path / "killed", some_bad=False)
    assert json.loads((tmp_path / "straight" / "report.json").read_text())["bad_samples"]["good_samples"] == 64


def test_a_rank_killed_under_torchrun_max_restarts_recovers_by_itself_to_the_uninterrupted_weights(tmp_path):
    """No flag changed by hand: ``--resume_from_checkpoint latest`` is on from the start (a fresh run when
    there is no checkpoint), and torchrun's restart of the group finds the newest complete one.

    One rank is killed once. The launch is the one that restarts reliably (``RESTARTABLE_RENDEZVOUS``);
    restarts beyond the first are still allowed for a launcher failure, not the resume's, and with
    ``--ddp_timeout 120`` a rank stuck in gloo's set-up exits after 120 s (``setup_deadline.py``), so
    the launcher restarts the group once more instead of waiting forever."""
    write_scene_shards(tmp_path / "shards", num_shards=16, samples_per_shard=4, image_size=32)
    data = ["--data", "webdataset", "--train_shards", f"{tmp_path}/shards/{{00000..00015}}.tar", "--shuffle_buffer", "5",
            "--max_steps", "8", "--resume_from_checkpoint", "latest"]
    straight = pretrain(tmp_path / "straight", *data, "--ddp_timeout", "120", nproc=2)
    restarted = pretrain(tmp_path / "restarted", *data, "--ddp_timeout", "120", nproc=2, kill_at=4, kill_rank=1,
                         launcher_flags=("--max-restarts", "3", *RESTARTABLE_RENDEZVOUS, f"127.0.0.1:{free_port()}"),
                         env=FRESH_STORE_PER_RESTART)
    log = finish(restarted)
    finish(straight)
    assert "exitcode: -9" in log, log[-3000:]  # the SIGKILL really happened, and the group went on
    state = json.loads((tmp_path / "restarted" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert_same_run(tmp_path / "straight", tmp_path / "restarted", some_bad=False)


def test_jsonl_inception_2_workers_sigkill_resume_is_bitwise_and_reads_no_trained_record(tmp_path):
    from ov2_plugin.data.json_source import JsonCaptions

    write_scene_json(tmp_path, 44, image_size=32, conversations=False)
    records = json.loads((tmp_path / "captions.json").read_text())
    (tmp_path / "images" / "000005.jpg").write_bytes(b"not a jpeg")
    lines = [json.dumps(r) for r in records]
    lines[9], lines[30] = "{not json", json.dumps({"image": "images/000030.jpg", "caption": " "})
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    steps = one_epoch_of_batches(JsonCaptions(path, tmp_path, eval_transform(32), seed=0))
    data = ["--data", "json", "--json_path", str(path), "--image_root", str(tmp_path), "--max_steps", str(steps)]
    straight = pretrain(tmp_path / "straight", *data)
    killed = pretrain(tmp_path / "killed", *data, kill_at=4)
    checkpoint = killed_at(killed, tmp_path / "killed", 4)
    finish(straight)
    broken = 0
    for worker, position in saved_positions(checkpoint)["workers"].items():
        ds = JsonCaptions(path, tmp_path, eval_transform(32), seed=0)
        ds.set_epoch(position["epoch"])
        for i in ds.my_units(int(worker), 2)[: position["unit"]]:
            lines[int(i)] = "{this trained record must not be read again"
            broken += 1
    assert broken
    path.write_text("\n".join(lines) + "\n")
    finish(pretrain(tmp_path / "killed", *data, "--resume_from_checkpoint", "latest"))
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


def test_resuming_with_another_number_of_workers_is_refused_with_what_to_do(tmp_path):
    from ov2_plugin.data.stream_state import StreamTracker, read_stream_state

    tracker = StreamTracker(num_workers=2)
    tracker.update({"epoch": 0, "worker": 1, "block": 0, "unit": 3, "offset": 0, "in_block": 1, "counter": {}})
    tracker.save(tmp_path, rank=0, world_size=1)
    assert read_stream_state(tmp_path, 0, 1, 2)["next_worker"] == 0
    with pytest.raises(ValueError, match="1 process\\(es\\) x 2 loader worker.*this run has 2 x 2.*--dataloader_num_workers"):
        read_stream_state(tmp_path, 0, 2, 2)
    with pytest.raises(ValueError, match="this run has 1 x 4"):
        read_stream_state(tmp_path, 0, 1, 4)
