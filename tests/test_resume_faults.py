"""Faults around checkpoints: a full disk while saving, a stale staging folder, a damaged checkpoint.

A save that fails to write stops the run with one line (which checkpoint, the error, the last
complete checkpoint, how to resume) and removes the partial one; ``--resume_from_checkpoint latest``
passes over a damaged newest checkpoint (its manifest says so) and still ends with the weights of
the uninterrupted run; a damaged checkpoint named by path is refused.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from launch import launch_env, run_python, torchrun
from safetensors.torch import load_file

from ov2_plugin.checkpoint_manifest import MANIFEST, verify_checkpoint
from ov2_plugin.data.captions import CaptionCollator, SceneCaptions
from ov2_plugin.data.transforms import eval_transform
from ov2_plugin.pretrain import PretrainArguments, resolve_resume
from ov2_plugin.tokenization import build_caption_tokenizer
from ov2_plugin.trainer import (
    STAGING,
    CheckpointWriteError,
    DamagedCheckpointError,
    Ov2Trainer,
    is_write_failure,
    newest_complete_checkpoint,
    newest_intact_checkpoint,
)


def tiny_trainer(tmp_path: Path, model, trainer_cls=Ov2Trainer, **kw) -> Ov2Trainer:
    kw = {"max_steps": 4, "save_steps": 2, **kw}
    args = PretrainArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, logging_steps=1, use_cpu=True,
                             dataloader_num_workers=0, seed=0, save_total_limit=None, **kw)
    return trainer_cls(model=model, args=args, train_dataset=SceneCaptions(16, 32, eval_transform(32)),
                       data_collator=CaptionCollator(build_caption_tokenizer()))


class DiskFullAtStep4(Ov2Trainer):
    """The file system refuses the optimizer state of checkpoint-4 (the model file is already written)."""

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "optimizer.pt"))
        return super()._save_optimizer_and_scheduler(output_dir)


def test_a_save_raising_enospc_stops_with_one_line_removes_the_partial_and_keeps_the_previous(tmp_path, tiny_model):
    trainer = tiny_trainer(tmp_path, tiny_model, DiskFullAtStep4)
    with pytest.raises(CheckpointWriteError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "\n" not in message
    assert f"could not write checkpoint-4 in {tmp_path}: No space left on device (ENOSPC" in message
    assert f"Last complete checkpoint: {tmp_path / 'checkpoint-2'}." in message
    assert "--resume_from_checkpoint latest" in message
    assert not (tmp_path / STAGING).exists() and not (tmp_path / "checkpoint-4").exists()  # the partial is gone
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert verify_checkpoint(tmp_path / "checkpoint-2") is None  # and the previous one is whole
    listed = json.loads((tmp_path / "checkpoint-2" / MANIFEST).read_text())["files"]
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(listed)


def test_the_writers_own_errors_on_a_full_disk_count_as_write_failures_and_a_bug_does_not():
    from safetensors import SafetensorError

    # what PyTorch's zip writer and safetensors 0.8 raised on a full 64 KiB tmpfs
    assert is_write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert is_write_failure(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_write_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"))
    assert not is_write_failure(SafetensorError("Error while deserializing header: invalid header length"))


def test_a_stale_staging_folder_of_a_killed_run_is_removed_at_the_next_start(tmp_path, tiny_model):
    (tmp_path / STAGING / "checkpoint-6").mkdir(parents=True)
    (tmp_path / STAGING / "checkpoint-6" / "model.safetensors").write_bytes(b"half")
    tiny_trainer(tmp_path, tiny_model, max_steps=1, save_steps=10).train()  # no save in this run
    assert not (tmp_path / STAGING).exists()


@pytest.fixture
def two_checkpoints(tmp_path, tiny_model) -> Path:
    tiny_trainer(tmp_path, tiny_model).train()
    assert verify_checkpoint(tmp_path / "checkpoint-2") is None and verify_checkpoint(tmp_path / "checkpoint-4") is None
    return tmp_path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "written-before-manifests"])
def test_verify_finds_a_truncated_weights_file_with_or_without_a_manifest(two_checkpoints, with_manifest):
    folder = two_checkpoints / "checkpoint-4"
    if not with_manifest:
        (folder / MANIFEST).unlink()
        assert verify_checkpoint(folder) is None
    truncate(folder / "model.safetensors")
    assert verify_checkpoint(folder).startswith("model.safetensors: ")


def test_verify_finds_a_missing_file_a_changed_tail_and_a_cut_optimizer_state(two_checkpoints):
    a, b = two_checkpoints / "checkpoint-2", two_checkpoints / "checkpoint-4"
    (a / "scheduler.pt").unlink()
    assert verify_checkpoint(a) == "scheduler.pt: missing"
    data = bytearray((b / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, same header: only the manifest's hash of the last MiB sees it
    (b / "model.safetensors").write_bytes(bytes(data))
    assert verify_checkpoint(b) == "model.safetensors: its first or last MiB differs from what was written"
    (b / MANIFEST).unlink()
    truncate(b / "optimizer.pt", 0.9)  # a torch zip file without its central directory
    assert verify_checkpoint(b).startswith("optimizer.pt: BadZipFile")


def test_latest_passes_over_a_damaged_newest_and_a_named_damaged_one_is_refused(two_checkpoints, caplog):
    truncate(two_checkpoints / "checkpoint-4" / "model.safetensors")
    assert newest_intact_checkpoint(two_checkpoints)[0] == str(two_checkpoints / "checkpoint-2")
    with pytest.raises(DamagedCheckpointError) as caught:
        resolve_resume(str(two_checkpoints / "checkpoint-4"), two_checkpoints)
    assert "\n" not in str(caught.value) and "is damaged (model.safetensors: " in str(caught.value)
    assert "--resume_from_checkpoint latest" in str(caught.value)
    assert resolve_resume("latest", two_checkpoints) == str(two_checkpoints / "checkpoint-2")
    assert (two_checkpoints / "checkpoint-4.damaged").is_dir() and not (two_checkpoints / "checkpoint-4").exists()
    assert "checkpoint-4 is damaged (model.safetensors: " in caplog.text


# End to end, as a user runs it: ``python -m ov2_plugin.pretrain`` with a fault injected.
RUN = [
    "--image_size", "32", "--max_steps", "8", "--per_device_train_batch_size", "4", "--train_samples", "64",
    "--save_steps", "2", "--save_total_limit", "2", "--logging_steps", "1", "--learning_rate", "1e-3",
    "--use_cpu", "true", "--eval_samples", "0", "--dataloader_num_workers", "0",
    "--seed", "0", "--full_determinism", "true",
]

FAULTS = """
import errno, os, runpy, signal
from transformers import TrainerCallback
from ov2_plugin import trainer

KILL_AT, FULL_AT = int(os.environ.get("KILL_AT_STEP", -1)), int(os.environ.get("FULL_DISK_AT_STEP", -1))
FULL_RANK = int(os.environ.get("FULL_DISK_RANK", 0))


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # the checkpoint folder is in place
        if state.global_step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


original_init, original_save = trainer.Ov2Trainer.__init__, trainer.Ov2Trainer._save_rng_state


def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    self.add_callback(KillAfterSave())


def save(self, output_dir):  # every rank writes its own rng_state file, after the model and optimizer
    if self.state.global_step == FULL_AT and self.args.process_index == FULL_RANK:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "rng_state.pth"))
    return original_save(self, output_dir)


trainer.Ov2Trainer.__init__, trainer.Ov2Trainer._save_rng_state = init, save
runpy.run_module("ov2_plugin.pretrain", run_name="__main__", alter_sys=True)
"""


def pretrain(out: Path, *extra: str, nproc: int = 1, **faults: int) -> subprocess.CompletedProcess:
    """``ov2 pretrain`` on ``nproc`` processes with the faults named in ``faults`` (see ``FAULTS``)."""
    script = out.parent / "faults.py"
    script.write_text(FAULTS)
    env = launch_env(**{k.upper(): str(v) for k, v in faults.items()})
    launcher = torchrun(nproc) if nproc > 1 else []
    return run_python([*launcher, str(script), "--output_dir", str(out), *RUN, *extra], env, timeout=600)


@pytest.mark.parametrize("nproc", [1, 2], ids=["1-process", "2-ddp-processes-rank1-fails"])
def test_a_full_disk_in_a_real_run_stops_every_rank_with_one_line_and_no_traceback(tmp_path, nproc):
    run = pretrain(tmp_path / "run", nproc=nproc, full_disk_at_step=4, full_disk_rank=nproc - 1)
    assert run.returncode == 1, run.stderr[-3000:]
    ranks = run.stderr.split("torch/distributed/elastic")[0]  # torchrun's own report of the failed group follows
    assert "Traceback" not in ranks, run.stderr[-3000:]
    ours = [line for line in run.stderr.splitlines() if line.startswith("ov2 pretrain: error:")]
    assert len(ours) == 1 and "could not write checkpoint-4" in ours[0], run.stderr[-3000:]
    assert "No space left on device (ENOSPC" in ours[0] and "Last complete checkpoint: " in ours[0]
    if nproc > 1:
        assert f"rank {nproc - 1}: No space left" in ours[0]  # rank 0 reports the error of the rank that had it
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "run" / STAGING).exists()


def test_latest_passes_over_a_truncated_newest_checkpoint_and_ends_with_the_uninterrupted_weights(tmp_path):
    straight = pretrain(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = pretrain(tmp_path / "killed", kill_at_step=6)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert newest_complete_checkpoint(tmp_path / "killed") == str(tmp_path / "killed" / "checkpoint-6")
    truncate(tmp_path / "killed" / "checkpoint-6" / "model.safetensors")  # a copy cut short
    resumed = pretrain(tmp_path / "killed", "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in resumed.stderr.splitlines() if "is damaged" in line]
    assert len(said) == 1 and "checkpoint-6 is damaged (model.safetensors: " in said[0], resumed.stderr[-3000:]
    assert said[0].endswith(f"resuming from {tmp_path / 'killed' / 'checkpoint-4'} instead")
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and differing == [], f"resumed weights differ in {differing[:5]}"
