"""The Trainer of ``ov2 pretrain``: the HF ``Trainer`` plus three guarantees a long run needs.

1. Atomic checkpoints. ``Trainer`` writes ``checkpoint-N`` file by file in place, so a run
   killed mid-save leaves a half folder that ``get_last_checkpoint`` happily picks. Here the
   whole checkpoint is written under ``.staging/`` and renamed into place once every rank
   has finished (a rename within one file system is atomic), so a ``checkpoint-N`` folder is
   always complete and ``newest_complete_checkpoint`` can trust it.
2. A non-finite loss stops the run before the optimizer applies it, on every rank at once,
   with a message naming the last good checkpoint (which is therefore never overwritten by
   NaN weights).
3. Streamed (iterable) datasets are split across ranks by the dataset itself (by shard, see
   ``data.sharding``); ``accelerate`` would otherwise wrap them so that every rank reads and
   decodes the whole stream and keeps one slice of it.
4. Streams resume where they stood: every checkpoint holds each rank's stream position
   (``data.stream_state``), and a resumed run continues from it instead of re-reading and
   dropping the batches already trained (the Trainer's ``skip_first_batches``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .data.stream_state import STATE_KEY, StreamTracker, read_stream_state, write_final_counts

STAGING = ".staging"
TRAINER_STATE = "trainer_state.json"  # written last by Trainer._save_checkpoint
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before the update."""


def newest_complete_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The highest-step ``checkpoint-N`` in ``run_dir`` holding a trainer state, or None.

    Only folders renamed into place by ``Ov2Trainer`` (or complete Trainer checkpoints) qualify;
    anything under ``.staging`` is an interrupted save and is ignored.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    steps = [
        (int(m.group(1)), p) for p in run_dir.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and p.is_dir() and (p / TRAINER_STATE).is_file()
    ]
    return str(max(steps)[1]) if steps else None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class EpochDataLoader(DataLoader):
    """A plain DataLoader whose ``set_epoch`` (called by the Trainer) reaches the dataset."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class Ov2Trainer(Trainer):
    """``Trainer`` with atomic checkpoints, a non-finite-loss stop and rank-split streaming data."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The captioner's forward takes **kwargs (HF convention) but returns its own per-batch
        # mean and ignores ``num_items_in_batch``. Seeing **kwargs, the Trainer would pass that
        # count and multiply the loss by the world size, so DDP/DeepSpeed runs would log (and
        # clip) a loss world_size times too large. Honour an explicit declaration if the model has one.
        self.model_accepts_loss_kwargs = bool(getattr(self.model, "accepts_loss_kwargs", False))
        resumable = hasattr(self.train_dataset, "load_stream_state")
        self._streams = StreamTracker(self.args.dataloader_num_workers) if resumable else None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``; a resumable stream continues from the checkpoint's saved position."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint and self._streams is not None:
            state = read_stream_state(resume_from_checkpoint, self.args.process_index, self.args.world_size,
                                      self.args.dataloader_num_workers)
            if state is not None:
                self.train_dataset.load_stream_state(state)
                self._streams.restore(state)
                self.args.ignore_data_skip = True  # ours replaces the Trainer's re-reading of the skipped batches
        result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self._streams is not None:  # the loader's workers have stopped: their count files are final
            write_final_counts(self._streams, self.train_dataset, self.args.process_index)
        return result

    def get_train_dataloader(self) -> DataLoader:
        if not isinstance(self.train_dataset, IterableDataset):
            return super().get_train_dataloader()
        workers = self.args.dataloader_num_workers
        return EpochDataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            # Its own generator: starting the workers draws their base seed from it, not from the global
            # generator, which a resumed run has just restored (token dropping must continue as if uninterrupted).
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        position = inputs.pop(STATE_KEY, None)
        if position is not None and self._streams is not None:
            self._streams.update(position)
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss.detach().float())).float().reshape(())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)  # every rank stops together, or the others would hang in the next all-reduce
        if bad.item() > 0:  # one host sync per step (the Trainer's NaN filter already syncs there too)
            last = newest_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"the training loss became non-finite ({loss.item()}) at step {self.state.global_step + 1}; "
                f"stopped before applying it. Last good checkpoint: {last or 'none yet'}. "
                "Lower --learning_rate, raise --warmup_steps, or use --bf16 instead of --fp16, then resume from it."
            )
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        final_root = Path(self._get_output_dir(trial=trial))
        staging_root = final_root / STAGING
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of a save that was killed
        _barrier()
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)  # everything lands in .staging/checkpoint-N
            if self._streams is not None:
                self._streams.save(staging_root / name, self.args.process_index, self.args.world_size)
        finally:
            self._staging_dir = None
        _barrier()  # every rank has written its part (DeepSpeed shards, rng_state_{rank}.pth)
        if self.args.should_save:
            target = final_root / name
            if target.exists():  # re-saving a step (e.g. after a resume): replace it whole
                shutil.rmtree(target)
            os.replace(staging_root / name, target)
            _fsync_dir(final_root)
            shutil.rmtree(staging_root, ignore_errors=True)
            self._rotate(final_root)
        _barrier()

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return str(staging) if staging is not None else super()._get_output_dir(trial=trial)

    def _rotate(self, run_dir: Path) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the parent's data)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
