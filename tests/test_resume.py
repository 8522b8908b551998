"""Nothing lost: SIGKILL + resume gives the uninterrupted weights; saves are atomic; NaN stops the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launch import launch_env
from safetensors.torch import load_file

from ov2_plugin.data.captions import CaptionCollator, SceneCaptions
from ov2_plugin.data.transforms import eval_transform
from ov2_plugin.pretrain import PretrainArguments
from ov2_plugin.tokenization import build_caption_tokenizer
from ov2_plugin.trainer import STAGING, NonFiniteLossError, Ov2Trainer, newest_complete_checkpoint

RUN = [
    "--image_size", "32", "--max_steps", "8", "--per_device_train_batch_size", "4", "--train_samples", "64",
    "--save_steps", "2", "--save_total_limit", "2", "--logging_steps", "1", "--learning_rate", "1e-3",
    "--use_cpu", "true", "--eval_samples", "0", "--dataloader_num_workers", "0",
    "--seed", "0", "--full_determinism", "true",
]


def pretrain(out: Path, *extra: str) -> subprocess.Popen:
    env = launch_env()
    cmd = [sys.executable, "-m", "ov2_plugin.pretrain", "--output_dir", str(out), *RUN, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


def test_sigkill_between_checkpoints_then_resume_gives_the_uninterrupted_weights(tmp_path):
    straight = pretrain(tmp_path / "straight")
    killed = pretrain(tmp_path / "killed")
    deadline = time.time() + 240
    while newest_complete_checkpoint(tmp_path / "killed") is None:
        assert killed.poll() is None, "the run ended before its first checkpoint: " + killed.stdout.read()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it was killed"
    last = newest_complete_checkpoint(tmp_path / "killed")
    assert int(last.rsplit("-", 1)[1]) < 8
    finish(pretrain(tmp_path / "killed", "--resume_from_checkpoint", "latest"))
    finish(straight)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == [], f"resumed weights differ from the uninterrupted run in {differing[:5]}"


def tiny_trainer(tmp_path: Path, tiny_model, trainer_cls=Ov2Trainer, **kw) -> Ov2Trainer:
    kw = {"max_steps": 4, "save_steps": 2, **kw}
    args = PretrainArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0, **kw)
    data = SceneCaptions(16, 32, eval_transform(32))
    return trainer_cls(model=tiny_model, args=args, train_dataset=data,
                       data_collator=CaptionCollator(build_caption_tokenizer()))


class CrashOnSecondSave(Ov2Trainer):
    """Dies after writing the model but before the optimizer state of its second checkpoint."""

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed during save")
        return super()._save_optimizer_and_scheduler(output_dir)


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_as_the_newest_complete_one(tmp_path, tiny_model):
    trainer = tiny_trainer(tmp_path, tiny_model, CrashOnSecondSave)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not (tmp_path / "checkpoint-4").exists()
    assert (tmp_path / STAGING / "checkpoint-4" / "model.safetensors").exists()  # the half-written save
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    resumed = tiny_trainer(tmp_path, tiny_model)
    resumed.train(resume_from_checkpoint=newest_complete_checkpoint(tmp_path))
    assert resumed.state.global_step == 4
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / STAGING).exists()


def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model):
    from transformers import TrainerCallback

    class PoisonBeforeStep3(TrainerCallback):
        """Fault injection: an overflow in the weights once checkpoint-2 is saved, as a too-high learning rate causes."""

        def on_step_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    model.decoder.norm.weight.fill_(float("inf"))

    trainer = tiny_trainer(tmp_path, tiny_model, save_steps=1)
    trainer.add_callback(PoisonBeforeStep3())
    with pytest.raises(NonFiniteLossError, match=r"non-finite.*step 3.*Last good checkpoint: .*checkpoint-2"):
        trainer.train()
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    kept = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())


def test_unmasked_tuning_feeds_every_visual_token_in_the_final_steps_only(tmp_path, tiny_model):
    from ov2_plugin.pretrain import UnmaskedTuning

    seen = []
    tiny_model.decoder.image_projection.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    trainer = tiny_trainer(tmp_path, tiny_model, max_steps=4, save_steps=10)
    trainer.add_callback(UnmaskedTuning(tiny_model, 0.5))
    trainer.train()
    n = (32 // tiny_model.config.vision_config.patch_size) ** 2
    assert seen == [int(n * 0.35)] * 2 + [n] * 2  # steps 1-2 dropped, 3-4 unmasked
    assert tiny_model.config.keep_ratio == 0.35  # the saved config keeps the recipe's ratio
    with pytest.raises(ValueError, match="unmasked_tuning"):
        UnmaskedTuning(tiny_model, 1.0)
